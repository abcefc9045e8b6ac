"""Ownership checks: is this member still in the group's current generation?

A member that stalled past its session timeout (a GC pause, a frozen VM) may wake up believing it owns
partitions that another member consumes now. The broker knows: it refuses an offset commit from a member
of an old generation. A stage that must not act as a stale owner (the fenced command engine, after it took
an epoch) asks through :meth:`KafkaSource.confirm_ownership`; the poll thread, which alone touches the
consumer, answers by re-committing the partitions' committed offsets (a no-op for the group's progress):

* accepted -> ``True``: at that moment this member was in the current generation;
* refused because the group moved on (:class:`~rxcqrs.exceptions.GroupMovedOnError`) -> ``False``;
* anything else (broker unreachable, timeout) -> ``None``: unknown, ask again later.

A partition the group never committed is committed at its beginning offset when the consumer starts from
the beginning (``auto_offset_reset="earliest"``, the same start); with ``"latest"`` it is left out, and a
check with nothing to commit answers ``True`` (there is no earlier progress for a stale member to clobber).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Sequence

from rxcqrs.exceptions import GroupMovedOnError
from rxcqrs.kafka.client import ConsumerClient
from rxcqrs.messages import TopicPartition
from rxcqrs.partitions import Confirmed

__all__ = ["OwnershipChecks"]

log = logging.getLogger(__name__)

#: a client call made by the poll thread (the source's watched call: ``call(what, fn, *args)``)
Call = Callable[..., Any]


class OwnershipChecks:
    """Requests from any thread, answered by the poll thread (:meth:`serve`)."""

    def __init__(self, name: str, earliest: bool, timeout: float = 10.0) -> None:
        self.name = name
        self.earliest = earliest
        self.timeout = timeout
        self._lock = threading.Lock()
        self._asked: list[tuple[list[TopicPartition], Confirmed]] = []

    def ask(self, tps: Sequence[TopicPartition], then: Confirmed) -> None:
        with self._lock:
            self._asked.append((list(tps), then))

    @property
    def waiting(self) -> bool:
        return bool(self._asked)

    def serve(self, client: ConsumerClient, call: Call) -> None:
        """The poll thread: answer every waiting request with one commit."""
        with self._lock:
            asked, self._asked = self._asked, []
        if not asked:
            return
        tps = sorted({tp for group, _ in asked for tp in group})
        answer = self._check(client, call, tps)
        for _, then in asked:
            try:
                then(answer)
            except Exception:
                log.exception("%s: an ownership listener failed", self.name)

    def _check(self, client: ConsumerClient, call: Call, tps: list[TopicPartition]) -> bool | None:
        try:
            committed: dict[TopicPartition, int | None] = call("committed", client.committed, tps, self.timeout)
            offsets = {tp: o for tp, o in committed.items() if o is not None}
            fresh = [tp for tp in tps if committed.get(tp) is None]
            if fresh and self.earliest:
                offsets.update(call("beginning_offsets", client.beginning_offsets, fresh, self.timeout))
            if not offsets:
                return True
            call("commit", client.commit, offsets, self.timeout)
            return True
        except GroupMovedOnError as exc:
            log.warning("%s: not a member of the group's current generation any more (%s)", self.name, exc)
            return False
        except Exception as exc:
            log.info("%s: could not confirm ownership of %s now: %r", self.name, tps, exc)
            return None
