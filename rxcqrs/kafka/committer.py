"""The Committer: everything about commits of one source, in one place.

It owns the :class:`~rxcqrs.commit.CommitGate` (acks from any thread -> per-partition watermarks), the
commit timing (every ``commit_every`` done records, every ``commit_interval`` seconds, at the end of a poll
batch), the failure policies (``stop``; ``rewind``: seek back to the last commit and back off) and the
rebalance handling (it is the client's :class:`~rxcqrs.kafka.client.RebalanceHandler`).

Who calls what is the threading model of :mod:`rxcqrs.kafka`: the poll thread calls ``ticket``,
``maybe_commit``, ``check_failures``, ``finish_rewinds`` and ``held``; tickets settle from any thread; the
rebalance callbacks (``revoked``, ``assigned``, ``lost``) come from the client's thread and touch only the
gate and the lock-protected commit record.

Rewinds end: attempts are counted per partition and reset only by progress (a commit past the offset that
first failed), so failures that move between offsets still reach the backoff's maximum and stop the source.
A permanent error (:func:`~rxcqrs.exceptions.is_permanent`) stops it at once, whatever the policy.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from rxcqrs import tracing
from rxcqrs.acks import GateTicket, Ticket, TracedGateTicket
from rxcqrs.commit import CommitGate, Failure
from rxcqrs.exceptions import CommitError, FlowError, GroupMovedOnError, RetriesExhaustedError, is_permanent
from rxcqrs.kafka.client import ConsumerClient
from rxcqrs.kafka.settings import SourceSettings
from rxcqrs.messages import TopicPartition
from rxcqrs.metrics import Metrics
from rxcqrs.partitions import StartPositions

__all__ = ["Committer"]

log = logging.getLogger(__name__)


class Committer:
    def __init__(self, settings: SourceSettings, metrics: Metrics, name: str,
                 wake: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.name = name
        self.gate = CommitGate(on_change=wake, on_stale=lambda: metrics.incr("stale_settles"))
        # resume emitting once a quarter of a full window has settled; commit after commit_every records
        window = settings.max_in_flight
        self.gate.wake_when(in_flight=window - max(1, window // 4), done=settings.commit_every)
        self._lock = threading.Lock()
        self._committed: dict[TopicPartition, int] = {}  # last commit per partition, kept after a revoke
        self._records_committed = 0
        self._last_commit = time.monotonic()
        # rewinds (poll thread only)
        self._halted: dict[TopicPartition, float] = {}  # waiting for in-flight to settle, then seek + back off
        self._resume_at: dict[TopicPartition, float] = {}
        self._attempts: dict[TopicPartition, int] = {}
        self._first_failed: dict[TopicPartition, int] = {}
        #: set by the source when it stops without draining: a revoke then does not wait for in-flight
        self.stopping_now = False
        self._revoke_listeners: list[Callable[[list[TopicPartition]], None]] = []
        self._assign_listeners: list[Callable[[list[TopicPartition]], None]] = []
        self._start_positions: list[StartPositions] = []

    def on_revoke(self, listener: Callable[[list[TopicPartition]], None]) -> None:
        """Call ``listener(partitions)`` when partitions are revoked or lost (from the client's thread: it
        must be quick and thread-safe), e.g. to drop cached state that another member may change now."""
        self._revoke_listeners.append(listener)

    def on_assign(self, listener: Callable[[list[TopicPartition]], None]) -> None:
        """Call ``listener(partitions)`` when partitions are assigned, before any of their records is emitted
        (from the client's thread, like :meth:`on_revoke`)."""
        self._assign_listeners.append(listener)

    def start_at(self, positions: StartPositions) -> None:
        """Start newly assigned partitions where ``positions(partitions)`` says (from the client's thread,
        before any of their records is fetched; with several, each partition starts at the lowest offset).
        A failing ``positions`` leaves its partitions at the committed offsets (logged, ``start_failures``)."""
        self._start_positions.append(positions)

    def _tell(self, listeners: list[Callable[[list[TopicPartition]], None]], tps: list[TopicPartition],
              what: str) -> None:
        for listener in listeners:
            try:
                listener(tps)
            except Exception:
                log.exception("%s: %s listener failed", self.name, what)

    # -- the poll thread ----------------------------------------------------------------------------------
    def ticket(self, tp: TopicPartition, epoch: int, offset: int, count: Callable[[str, int], None]) -> Ticket:
        """The ticket of a record the gate accepted (``gate.emit``); it settles the record from any thread."""
        if tracing.ACTIVE:
            return TracedGateTicket(self.gate, tp, epoch, offset, count)
        return GateTicket(self.gate, tp, epoch, offset, count)

    def maybe_commit(self, client: ConsumerClient, *, batch_done: bool = False, force: bool = False,
                     strict: bool = False) -> None:
        """Commit the gate's watermarks when due (count, time, ``batch_done``) or when ``force``d. A failed
        commit is retried at the next turn, or raised as :class:`CommitError` when ``strict``."""
        now = time.monotonic()
        due = (force or batch_done or self.gate.done_since_commit() >= self.settings.commit_every
               or now - self._last_commit >= self.settings.commit_interval)
        if not due:
            return
        offsets = self.gate.to_commit()
        if not offsets:
            return
        self._last_commit = now
        try:
            client.commit(offsets, timeout=10.0)
        except Exception as exc:
            self.metrics.incr("commit_failures")
            if strict and isinstance(exc, GroupMovedOnError):
                raise
            if strict:
                raise CommitError(f"commit of {_show(offsets)} failed: {exc!r}") from exc
            log.warning("%s: commit of %s failed (will retry): %r", self.name, _show(offsets), exc)
            return
        self._committed_now(offsets)

    def _committed_now(self, offsets: dict[TopicPartition, int]) -> None:
        self.gate.mark_committed(offsets)
        if tracing.ACTIVE:
            tracing.committed(offsets)
        with self._lock:
            for tp, offset in offsets.items():
                before = self._committed.get(tp)
                if before is not None and offset > before:
                    self._records_committed += offset - before
                self._committed[tp] = offset
        self.metrics.incr("commits")
        for tp, offset in offsets.items():  # progress past a failure resets its rewind attempts
            failed = self._first_failed.get(tp)
            if failed is not None and offset > failed:
                self._first_failed.pop(tp, None)
                self._attempts.pop(tp, None)

    def check_failures(self) -> BaseException | None:
        """Apply the failure policy to nacked records: schedule rewinds, or return the error to stop with."""
        if not self.gate.failed:
            return None
        for failure in self.gate.failures():
            if failure.tp in self._halted:
                continue
            if is_permanent(failure.error) or self.settings.failure_policy == "stop":
                return _failed(failure)
            attempts = self._attempts.get(failure.tp, 0)
            delay = self.settings.backoff.delay(attempts)
            if delay is None:
                exhausted = RetriesExhaustedError(
                    f"{failure.tp.topic}/{failure.tp.partition}@{failure.offset} kept failing after {attempts} "
                    f"rewinds without progress: {failure.error!r}; nothing at or after it was committed")
                exhausted.__cause__ = failure.error
                return exhausted
            self._attempts[failure.tp] = attempts + 1
            self._first_failed.setdefault(failure.tp, failure.offset)
            self._halted[failure.tp] = delay
            self.metrics.incr("rewinds")
            log.warning("%s: rewinding %s to before offset %d in %.2fs (attempt %d): %r", self.name, failure.tp,
                        failure.offset, delay, attempts + 1, failure.error)
        return None

    def finish_rewinds(self, client: ConsumerClient) -> None:
        """Once a halted partition has nothing in flight: commit what is done, seek to it, back off."""
        for tp, delay in list(self._halted.items()):
            if self.gate.in_flight([tp]) > 0:
                continue
            del self._halted[tp]
            position = self.gate.rewind(tp)
            self.maybe_commit(client, force=True)
            if position is not None and tp in client.assignment():
                client.seek(tp, position)
            self._resume_at[tp] = time.monotonic() + delay

    def halted(self, tp: TopicPartition) -> bool:
        """A failure on ``tp`` waits for its rewind: its buffered records must not be emitted."""
        return tp in self._halted

    def held(self) -> set[TopicPartition]:
        """Partitions not to fetch now: rewinding, or backing off after a rewind."""
        now = time.monotonic()
        for tp, at in list(self._resume_at.items()):
            if at <= now:
                del self._resume_at[tp]
        return set(self._halted) | set(self._resume_at)

    def next_resume(self) -> float | None:
        return min(self._resume_at.values()) if self._resume_at else None

    # -- rebalance callbacks (the client's thread) --------------------------------------------------------
    def revoked(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        # give in-flight records of these partitions a moment to settle, so their commits count (not when the
        # source is stopping without a drain: then they are left to be redelivered)
        settled = self.stopping_now or self.gate.wait_settled(tps, self.settings.revoke_settle_timeout)
        offsets = self.gate.revoke(tps)
        self._tell(self._revoke_listeners, tps, "a revoke")
        if tracing.ACTIVE:  # records past the commit on revoke are delivered again
            tracing.revoked(tps, offsets)
        self.metrics.incr("revoked", len(tps))
        log.info("%s: revoked %s (settled: %s), committing %s", self.name, sorted(tps), settled, _show(offsets))
        return offsets

    def revoke_committed(self, offsets: dict[TopicPartition, int], error: BaseException | None) -> None:
        if error is None:
            self._committed_now(offsets)
        else:  # the group moved on: those records will be redelivered
            self.metrics.incr("commit_failures")
            log.warning("%s: commit on revoke failed: %r", self.name, error)

    def assigned(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        starts = self._starts(tps)
        with self._lock:
            self._committed.update(starts)  # records before a start are not this source's to count
        for tp in tps:
            self.gate.assign(tp, start=starts.get(tp))  # a start is committed like progress
        self._tell(self._assign_listeners, tps, "an assign")
        self.metrics.incr("assigned", len(tps))
        log.info("%s: assigned %s%s", self.name, sorted(tps), f", starting at {_show(starts)}" if starts else "")
        return starts

    def _starts(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        starts: dict[TopicPartition, int] = {}
        for positions in self._start_positions if tps else ():
            try:
                found = positions(tps)
            except Exception:
                self.metrics.incr("start_failures")
                log.exception("%s: the start positions of %s are unknown: they start at the committed offsets",
                              self.name, sorted(tps))
                continue
            for tp, offset in found.items():
                if tp in tps:
                    start = max(0, offset)
                    starts[tp] = min(start, starts.get(tp, start))
        return starts

    def lost(self, tps: list[TopicPartition]) -> None:
        self.gate.revoke(tps)
        if tracing.ACTIVE:
            tracing.revoked(tps)
        self._tell(self._revoke_listeners, tps, "a revoke")
        self.metrics.incr("lost", len(tps))
        log.warning("%s: lost %s (the member was dropped from the group)", self.name, sorted(tps))

    # -- figures ------------------------------------------------------------------------------------------
    def records_committed(self) -> int:
        """Records whose offsets were committed by this source (not a sum of offsets)."""
        with self._lock:
            return self._records_committed

    def started_at(self, tp: TopicPartition, position: int) -> None:
        """Where this source began on ``tp`` (the first offset it saw), so commits count records."""
        with self._lock:
            self._committed.setdefault(tp, position)


def _show(offsets: dict[TopicPartition, int]) -> str:
    return "{" + ", ".join(f"{tp.topic}/{tp.partition}: {o}" for tp, o in sorted(offsets.items())) + "}"


def _failed(failure: Failure) -> FlowError:
    error = FlowError(f"record {failure.tp.topic}/{failure.tp.partition}@{failure.offset} failed: "
                      f"{failure.error}; nothing at or after it was committed")
    error.__cause__ = failure.error
    return error
