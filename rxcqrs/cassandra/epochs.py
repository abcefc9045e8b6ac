"""The epochs of a command engine's partition assignments (fenced writes, see :mod:`rxcqrs.cassandra.fence`).

A fenced writer needs an epoch for every assignment it holds before it writes for it. For each assignment its
source tells of (and for a partition whose records came without one), :class:`AssignmentEpochs` takes an epoch
from the topic's fence on a fencer thread of its own (blocking round trips, never on a driver, poll or
rebalance thread), then asks the source to confirm that this member is still in the group's current generation
(a member that took an epoch after waking up from a stall must never write with it), and only then hands the
partition's parked batches back (``ready``). A revoke or a new assignment replaces the record: an epoch that
comes for a replaced request is dropped. A failure (no epoch within ``timeout``, the ownership not confirmed)
fails the parked batches (``failed``) and marks the assignment, so that its next batch asks again.

Locking: the methods named ``*_locked`` run under the engine's lock (given to the constructor), so that the
engine reads an assignment's epoch and its cached entities in one step; the others take the lock themselves.
"""

from __future__ import annotations

import logging
import queue as queues
import threading
from dataclasses import dataclass, field
from typing import Callable, Generic, Protocol, Sequence, TypeVar

from rxcqrs.clock import Clock
from rxcqrs.exceptions import StageError
from rxcqrs.messages import TopicPartition
from rxcqrs.partitions import Assignments

__all__ = ["AssignmentEpochs", "EpochSource"]

log = logging.getLogger(__name__)

B = TypeVar("B")


class EpochSource(Protocol):
    """What the engine needs of a fence: a new epoch, higher than every one handed out before (blocking)."""

    def take(self, deadline: float | None = None) -> int: ...


@dataclass(eq=False)
class _Assignment(Generic[B]):
    """One partition's fencing: the epoch of its current assignment once taken and confirmed."""

    request: int
    epoch: int | None = None
    failed: bool = False
    parked: list[B] = field(default_factory=list)


class AssignmentEpochs(Generic[B]):
    """``fence_of(topic)``: the topic's fence; ``later(attempt, step)``: ``step`` after the backoff's delay for
    retry ``attempt`` (False: the backoff gave up); ``ready(batches)`` and ``failed(batch, error)`` are called
    without the lock."""

    def __init__(self, name: str, lock: threading.Lock, fence_of: Callable[[str], EpochSource], *, timeout: float,
                 clock: Clock, later: Callable[[int, Callable[[], None]], bool],
                 ready: Callable[[list[B]], None], failed: Callable[[B, StageError], None]) -> None:
        self.name = name
        self.timeout = timeout
        self._lock = lock
        self._fence_of = fence_of
        self._clock = clock
        self._later = later
        self._ready = ready
        self._failed = failed
        self._assignments: dict[TopicPartition, _Assignment[B]] = {}
        self._requests = 0
        self._asked: queues.SimpleQueue[tuple[list[TopicPartition], int] | None] = queues.SimpleQueue()
        self._fencer: threading.Thread | None = None
        self._stopped = False
        self._abandoned = False
        #: under the lock: fence requests queued or being served (the engine is not quiet meanwhile)
        self.busy = 0
        #: the source that confirms ownerships (None: epochs are used once taken)
        self.source: Assignments | None = None

    # -- under the engine's lock --------------------------------------------------------------------------
    def forget_locked(self, tps: Sequence[TopicPartition], *, renew: bool) -> tuple[list[B], int | None]:
        """Drop the records of ``tps``; their parked batches (returned) belong to the old assignment. ``renew``:
        a fresh record for each, awaiting its epoch (the request returned, to :meth:`ask` for)."""
        parked: list[B] = []
        for tp in tps:
            old = self._assignments.pop(tp, None)
            if old is not None:
                parked.extend(old.parked)
        return parked, self._new_request(tps) if renew else None

    def epoch_or_park_locked(self, tp: TopicPartition, batch: B) -> tuple[int | None, int | None]:
        """The epoch of ``tp``'s assignment, or None with ``batch`` parked until it comes; and a request to
        :meth:`ask` for when nothing told of the assignment or its epoch failed (else None)."""
        a = self._assignments.get(tp)
        request = None
        if a is None or a.failed:
            request = self._new_request([tp])
            a = self._assignments[tp]
        if a.epoch is None:
            a.parked.append(batch)
        return a.epoch, request

    def epoch_locked(self, tp: TopicPartition) -> int | None:
        """The epoch of ``tp``'s current assignment (None: none yet, or no assignment)."""
        a = self._assignments.get(tp)
        return None if a is None else a.epoch

    def abandon_locked(self) -> list[B]:
        """Stop confirming; every parked batch, taken out (the engine fails them)."""
        self._abandoned = True
        parked = [b for a in self._assignments.values() for b in a.parked]
        for a in self._assignments.values():
            a.parked = []
        return parked

    def _new_request(self, tps: Sequence[TopicPartition]) -> int:
        self._requests += 1
        for tp in tps:
            self._assignments[tp] = _Assignment(self._requests)
        return self._requests

    # -- any thread ---------------------------------------------------------------------------------------
    def ask(self, tps: list[TopicPartition], request: int) -> None:
        """Take an epoch for ``request`` (on the fencer thread)."""
        with self._lock:
            self.busy += 1
            if self._fencer is None and not self._stopped:
                self._fencer = threading.Thread(target=self._loop, name=f"rxcqrs-{self.name}-fence", daemon=True)
                self._fencer.start()
        self._asked.put((tps, request))

    def close(self) -> None:
        self._stopped = True
        self._asked.put(None)

    # -- the fencer thread --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            item = self._asked.get()
            if item is None or self._stopped:
                return
            try:
                self._take(*item)
            finally:
                with self._lock:
                    self.busy -= 1

    def _take(self, tps: list[TopicPartition], request: int) -> None:
        if not self._current(tps, request):
            return  # revoked or assigned again meanwhile
        for topic in sorted({tp.topic for tp in tps}):
            mine = [tp for tp in tps if tp.topic == topic]
            try:
                epoch = self._fence_of(topic).take(deadline=self._clock.now() + self.timeout)
            except Exception as exc:
                self._fence_failed(mine, request, exc)
                continue
            self._confirm(mine, request, epoch, 0, self._clock.now() + self.timeout)

    def _confirm(self, tps: list[TopicPartition], request: int, epoch: int, attempt: int, deadline: float) -> None:
        """Use ``epoch`` once the group coordinator confirms this member still owns ``tps``."""
        source = self.source
        if source is None:
            self._fenced(tps, request, epoch)
            return

        def answered(confirmed: bool | None) -> None:
            if confirmed:
                self._fenced(tps, request, epoch)
                return
            if not self._current(tps, request) or self._abandoned:
                return
            if self._clock.now() >= deadline or not self._later(
                    attempt, lambda: self._confirm(tps, request, epoch, attempt + 1, deadline)):
                self._fence_failed(tps, request, StageError(
                    f"{self.name}: this member's ownership of {sorted(tps)} was not confirmed by the group "
                    f"within {self.timeout:g}s (it may have been fenced out)"))

        source.confirm_ownership(tps, answered)

    def _current(self, tps: list[TopicPartition], request: int) -> bool:
        with self._lock:
            return any((a := self._assignments.get(tp)) is not None and a.request == request for tp in tps)

    def _fenced(self, tps: list[TopicPartition], request: int, epoch: int) -> None:
        ready = self._take_parked(tps, request, epoch=epoch)
        log.info("%s: epoch %d for %s", self.name, epoch, sorted(tps))
        self._ready(ready)

    def _fence_failed(self, tps: list[TopicPartition], request: int, error: BaseException) -> None:
        failed = self._take_parked(tps, request, epoch=None)
        log.warning("%s: no epoch for %s: %r", self.name, sorted(tps), error)
        for batch in failed:
            self._failed(batch, error if isinstance(error, StageError) else StageError(f"{self.name}: {error!r}"))

    def _take_parked(self, tps: list[TopicPartition], request: int, *, epoch: int | None) -> list[B]:
        """The parked batches of ``tps``' assignments that are still ``request``'s, which now have ``epoch``
        (None: their epoch failed)."""
        parked: list[B] = []
        with self._lock:
            for tp in tps:
                a = self._assignments.get(tp)
                if a is not None and a.request == request:
                    if epoch is None:
                        a.failed = True
                    else:
                        a.epoch = epoch
                    parked.extend(a.parked)
                    a.parked = []
        return parked
