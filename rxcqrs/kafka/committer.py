"""The Committer: everything about commits of one source, in one place, behind one face.

It owns the :class:`~rxcqrs.commit.CommitGate` (acks from any thread -> per-partition watermarks) and never
hands it out: the source admits records, reads in-flight counts and watermarks through it. It also owns the
commit timing (every ``commit_every`` done records, every ``commit_interval`` seconds, at the end of a poll
batch), the failure policies (:mod:`rxcqrs.kafka.rewinds`) and the rebalance handling (it is the client's
:class:`~rxcqrs.kafka.client.RebalanceHandler`).

Who calls what is the threading model of :mod:`rxcqrs.kafka`: the poll thread calls ``admit``, ``ticket``,
``maybe_commit``, ``check_failures``, ``finish_rewinds`` and ``held``; tickets settle from any thread; the
rebalance callbacks (``revoked``, ``assigned``, ``lost``) come from the client's thread and touch only the
gate and the lock-protected commit record.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable

from rxcqrs import tracing
from rxcqrs.acks import GateTicket, Ticket, TracedGateTicket
from rxcqrs.clock import SYSTEM, Clock
from rxcqrs.commit import CommitGate
from rxcqrs.exceptions import CommitError, GroupMovedOnError
from rxcqrs.kafka.client import ConsumerClient
from rxcqrs.kafka.rewinds import Rewinds
from rxcqrs.kafka.settings import SourceSettings
from rxcqrs.messages import TopicPartition
from rxcqrs.metrics import Metrics
from rxcqrs.partitions import StartPositions

__all__ = ["Committer"]

log = logging.getLogger(__name__)


class Committer:
    def __init__(self, settings: SourceSettings, metrics: Metrics, name: str,
                 wake: Callable[[], None] = lambda: None, clock: Clock = SYSTEM) -> None:
        self.settings = settings
        self.metrics = metrics
        self.name = name
        self._clock = clock
        self._gate = gate = CommitGate(on_change=wake, on_stale=lambda: metrics.incr("stale_settles"))
        # resume emitting once a quarter of a full window has settled; commit after commit_every records
        window = settings.max_in_flight
        gate.wake_when(in_flight=window - max(1, window // 4), done=settings.commit_every)
        self._lock = threading.Lock()
        self._committed: dict[TopicPartition, int] = {}  # last commit per partition, kept after a revoke
        self._records_committed = 0
        #: notified after every commit (under its own lock, never the committer's): what :meth:`wait_committed`
        #: waits on
        self.progress = threading.Condition()
        self._last_commit = clock.now()
        self._rewinds = Rewinds(settings, metrics, name, gate, clock)
        self.check_failures = self._rewinds.check_failures
        self.halted = self._rewinds.halted
        self.held = self._rewinds.held
        self.next_resume = self._rewinds.next_resume
        self._stopping_now = False  # a revoke then does not wait for in-flight records
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
        """The ticket of a record :meth:`admit` accepted; it settles the record from any thread."""
        if tracing.ACTIVE:
            return TracedGateTicket(self._gate, tp, epoch, offset, count)
        return GateTicket(self._gate, tp, epoch, offset, count)

    def maybe_commit(self, client: ConsumerClient, *, batch_done: bool = False, force: bool = False,
                     strict: bool = False) -> None:
        """Commit the gate's watermarks when due (count, time, ``batch_done``) or when ``force``d. A failed
        commit is retried at the next turn, or raised as :class:`CommitError` when ``strict``."""
        now = self._clock.now()
        due = (force or batch_done or self._gate.done_since_commit() >= self.settings.commit_every
               or now - self._last_commit >= self.settings.commit_interval)
        if not due:
            return
        offsets = self._gate.to_commit()
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
        self._gate.mark_committed(offsets)
        if tracing.ACTIVE:
            tracing.committed(offsets)
        with self._lock:
            for tp, offset in offsets.items():
                before = self._committed.get(tp)
                if before is not None and offset > before:
                    self._records_committed += offset - before
                self._committed[tp] = offset
        with self.progress:
            self.progress.notify_all()
        self.metrics.incr("commits")
        self._rewinds.progressed(offsets)

    def finish_rewinds(self, client: ConsumerClient) -> None:
        """Rewind the failed partitions that have nothing in flight any more (see :mod:`rxcqrs.kafka.rewinds`)."""
        self._rewinds.finish(client, lambda: self.maybe_commit(client, force=True))

    def stop_now(self) -> None:
        """The source no longer waits for in-flight records (a stop without a drain, or a drain past its
        deadline): a revoke then does not wait for them either."""
        self._stopping_now = True

    # -- the gate, as the poll thread sees it -------------------------------------------------------------
    def admit(self, tp: TopicPartition, offset: int, epoch: int, *, last: int | None = None,
              records: int = 1) -> int | None:
        """Put a record (or a run up to ``last``) fetched under ``epoch`` in flight; the epoch of its ticket,
        or None: the partition was revoked or rewound since, drop the record."""
        return self._gate.emit(tp, offset, epoch, last=last, records=records)

    def epoch(self, tp: TopicPartition) -> int | None:
        """The current assignment epoch of ``tp`` (None: not assigned)."""
        return self._gate.epoch(tp)

    def track(self, tp: TopicPartition) -> int:
        """Start tracking ``tp`` whose records came without an assignment callback (manual assignment)."""
        return self._gate.assign(tp)

    def assigned_partitions(self) -> set[TopicPartition]:
        return self._gate.assigned()

    def in_flight(self, tps: Iterable[TopicPartition] | None = None) -> int:
        """Records emitted and not settled (of ``tps``, or of every partition)."""
        return self._gate.in_flight(tps)

    @property
    def failed(self) -> bool:
        """Some record was nacked and its failure is not handled yet."""
        return bool(self._gate.failed)

    @property
    def changes(self) -> int:
        """A counter that moves at every settle that matters (the poll thread compares it before sleeping)."""
        return self._gate.changes

    @property
    def acked(self) -> int:
        return self._gate.acked

    @property
    def nacked(self) -> int:
        return self._gate.nacked

    def commit_due(self) -> bool:
        """Some watermark is ahead of its last commit."""
        return bool(self._gate.to_commit())

    def watermarks(self) -> dict[TopicPartition, int | None]:
        """Per partition, the first offset not done (None: nothing known yet)."""
        return self._gate.watermarks()

    # -- rebalance callbacks (the client's thread) --------------------------------------------------------
    def revoked(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        # give in-flight records of these partitions a moment to settle, so their commits count (not when the
        # source is stopping without a drain: then they are left to be redelivered)
        settled = self._stopping_now or self._gate.wait_settled(tps, self.settings.revoke_settle_timeout)
        offsets = self._gate.revoke(tps)
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
        """Track ``tps`` under new epochs: tell the assign listeners, then ask the start positions (so what
        a provider reads is not forgotten by its own listener); the starts, for the client to apply."""
        self._tell(self._assign_listeners, tps, "an assign")
        starts = self._starts(tps)
        with self._lock:  # records before a start are not this source's to count, nor twice those it counted
            for tp, start in starts.items():
                self._committed[tp] = max(start, self._committed.get(tp, start))
        for tp in tps:
            self._gate.assign(tp, start=starts.get(tp))  # a start is committed like progress
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
        self._gate.revoke(tps)
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

    def wait_committed(self, records: int, timeout: float) -> bool:
        """Block until this source has committed at least ``records`` records (True) or ``timeout`` seconds
        passed (False); woken by each commit, so it finds the commit that reached ``records`` at once."""
        with self.progress:
            return self.progress.wait_for(lambda: self.records_committed() >= records, timeout)

    def started_at(self, tp: TopicPartition, position: int) -> None:
        """Where this source began on ``tp`` (the first offset it saw), so commits count records."""
        with self._lock:
            self._committed.setdefault(tp, position)


def _show(offsets: dict[TopicPartition, int]) -> str:
    return "{" + ", ".join(f"{tp.topic}/{tp.partition}: {o}" for tp, o in sorted(offsets.items())) + "}"

