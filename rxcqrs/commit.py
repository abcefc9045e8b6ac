"""The commit gate: which offsets may be committed, given acks that arrive in any order from any thread.

Per partition the gate keeps the offsets that were emitted and not yet committed, in emission order. An
offset is *done* when its ticket was acked (a broadcast acks only once every branch acked). The
*watermark* is one past the longest done prefix: committing it can never skip a record that is not done.
A nacked offset stays in place and holds the watermark back until the partition is rewound or revoked.
A *run* (a batch: consecutive records of one partition emitted with one ticket) is tracked as one entry
under its first offset: it is done, or failed, as a whole, and the watermark passes it only when done.

Assignments have epochs: a settle for an epoch that was revoked or rewound is ignored, so a late ack from
a database callback can never move the watermark of a newer assignment.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from rxcqrs.exceptions import OffsetOrderError
from rxcqrs.messages import TopicPartition

__all__ = ["CommitGate", "Failure"]

_PENDING, _DONE, _FAILED = 0, 1, 2


@dataclass(frozen=True)
class Failure:
    """The first nacked offset of a partition, with its error."""

    tp: TopicPartition
    offset: int
    error: BaseException
    epoch: int


@dataclass
class _Track:
    epoch: int
    offsets: deque[int] = field(default_factory=deque)
    states: dict[int, int] = field(default_factory=dict)
    runs: dict[int, tuple[int, int]] = field(default_factory=dict)  # first offset -> (last offset, records)
    last_emitted: int | None = None
    watermark: int | None = None  # next offset to commit: every emitted offset below it is done
    committed: int | None = None
    failure: Failure | None = None
    pending: int = 0  # emitted, not settled

    def in_flight(self) -> int:
        return self.pending


class CommitGate:
    """Thread-safe; settles come from any thread, everything else is called by the poll thread."""

    def __init__(self, on_change: Callable[[], None] = lambda: None,
                 on_stale: Callable[[], None] = lambda: None) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._tracks: dict[TopicPartition, _Track] = {}
        self._epochs = 0
        self._in_flight = 0
        self._done_since_commit = 0
        self._waiters = 0
        #: how many partitions hold a nacked offset (read without the lock as a cheap "anything failed?")
        self.failed = 0
        #: settles that mattered to the poll thread so far (it compares before it sleeps); acks and nacks
        self.changes = 0
        self.acked = 0
        self.nacked = 0
        self.stale = 0  # settles ignored: a second settle, or one for a revoked or rewound assignment
        self._on_change = on_change  # wakes the poll thread
        self._on_stale = on_stale  # told of each ignored settle (a metric)
        # when to wake it: a failure, nothing in flight, and (set by the owner) these two crossings
        self._wake_in_flight = -1  # in flight falls to this (the window has room again)
        self._wake_done = 0  # this many done since the last commit (a commit is due)

    # -- assignment ---------------------------------------------------------------------------------------
    def wake_when(self, in_flight: int = -1, done: int = 0) -> None:
        """Wake the poll thread (``on_change``) only when a settle makes a difference to it: a failure,
        nothing left in flight, in flight falling to ``in_flight``, or ``done`` records done since the last
        commit. Per-settle wake-ups would cost the poll thread a context switch per record."""
        self._wake_in_flight = in_flight
        self._wake_done = done

    def assign(self, tp: TopicPartition, committed: int | None = None, start: int | None = None) -> int:
        """Start tracking ``tp`` under a new epoch (a new assignment or a rewind); with ``start`` (where the
        consumer was told to begin, not a committed offset) that offset is the first watermark to commit."""
        with self._lock:
            epoch = self._new_track(tp, committed)
            if start is not None:
                self._tracks[tp].watermark = start
            return epoch

    def _new_track(self, tp: TopicPartition, committed: int | None) -> int:
        old = self._tracks.get(tp)
        if old is not None:
            self._in_flight -= old.in_flight()
            self.failed -= old.failure is not None
        self._epochs += 1
        self._tracks[tp] = _Track(self._epochs, committed=committed, watermark=committed)
        return self._epochs

    def revoke(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Stop tracking ``tps``; return the done watermarks that still need a commit."""
        to_commit: dict[TopicPartition, int] = {}
        with self._lock:
            for tp in tps:
                track = self._tracks.pop(tp, None)
                if track is None:
                    continue
                self._in_flight -= track.in_flight()
                self.failed -= track.failure is not None
                if track.watermark is not None and track.watermark != track.committed:
                    to_commit[tp] = track.watermark
            self._changed.notify_all()
        return to_commit

    def rewind(self, tp: TopicPartition) -> int | None:
        """Forget everything after the watermark of ``tp`` under a new epoch; return where to seek."""
        with self._lock:
            track = self._tracks.get(tp)
            if track is None:
                return None
            position = track.watermark if track.watermark is not None else (
                track.offsets[0] if track.offsets else None)
            self._new_track(tp, track.committed)
            self._tracks[tp].watermark = position
            self._changed.notify_all()
            return position

    def assigned(self) -> set[TopicPartition]:
        with self._lock:
            return set(self._tracks)

    def is_current(self, tp: TopicPartition, epoch: int) -> bool:
        """Whether ``epoch`` is still the assignment of ``tp`` (not revoked, not rewound since). Lock-free:
        a dictionary read, on every batch a command stage starts."""
        track = self._tracks.get(tp)
        return track is not None and track.epoch == epoch

    def epoch(self, tp: TopicPartition) -> int | None:
        with self._lock:
            track = self._tracks.get(tp)
            return None if track is None else track.epoch

    # -- records ------------------------------------------------------------------------------------------
    def emit(self, tp: TopicPartition, offset: int, epoch: int | None = None, *, last: int | None = None,
             records: int = 1) -> int | None:
        """Record that ``offset`` is about to be emitted; return the epoch its ticket must carry. With
        ``epoch`` (the one the record was fetched under) return ``None`` instead when the partition was revoked
        or rewound since: the record is stale and must not be emitted. With ``last``, ``offset`` starts a run
        of ``records`` records ending at offset ``last``, settled as one (by a settle of ``offset``)."""
        with self._lock:
            track = self._tracks.get(tp)
            if epoch is not None and (track is None or track.epoch != epoch):
                return None
            if track is None:
                raise OffsetOrderError(f"{tp} is not assigned; cannot emit offset {offset}")
            if track.last_emitted is not None and offset <= track.last_emitted:
                raise OffsetOrderError(f"{tp}: offset {offset} emitted after {track.last_emitted}")
            if last is None:
                track.last_emitted = offset
            else:
                if last < offset or records < 1:
                    raise OffsetOrderError(f"{tp}: a run from {offset} to {last} of {records} records")
                track.last_emitted = last
                track.runs[offset] = (last, records)
            track.offsets.append(offset)
            track.states[offset] = _PENDING
            track.pending += records
            self._in_flight += records
            return track.epoch

    def settle(self, tp: TopicPartition, epoch: int, offset: int, error: BaseException | None) -> bool:
        """Ack (``error is None``) or nack an emitted offset. Returns False if it was stale and ignored."""
        with self._lock:
            track = self._tracks.get(tp)
            stale = track is None or track.epoch != epoch or track.states.get(offset) != _PENDING
            wake = False
            if stale:
                self.stale += 1
            else:
                assert track is not None
                runs = track.runs
                n = runs[offset][1] if runs and offset in runs else 1
                before = self._in_flight
                self._in_flight -= n
                track.pending -= n
                # wake when in flight reaches 0 or falls past the wake level (a run may jump over it)
                wake = self._in_flight == 0 or before > self._wake_in_flight >= self._in_flight or error is not None
                if error is None:
                    self.acked += n
                    track.states[offset] = _DONE
                    done_before = self._done_since_commit
                    self._done_since_commit += n
                    wake = wake or done_before < self._wake_done <= self._done_since_commit
                    while track.offsets and track.states[track.offsets[0]] == _DONE:
                        done = track.offsets.popleft()
                        del track.states[done]
                        track.watermark = (runs.pop(done)[0] if runs and done in runs else done) + 1
                else:
                    self.nacked += n
                    track.states[offset] = _FAILED
                    if track.failure is None:
                        track.failure = Failure(tp, offset, error, epoch)
                        self.failed += 1
                if self._waiters:
                    self._changed.notify_all()
                if wake:
                    self.changes += 1
        if stale:
            self._on_stale()
            return False
        if wake:
            self._on_change()
        return True

    # -- queries ------------------------------------------------------------------------------------------
    def in_flight(self, tps: Iterable[TopicPartition] | None = None) -> int:
        with self._lock:
            if tps is None:
                return self._in_flight
            return sum(self._tracks[tp].in_flight() for tp in tps if tp in self._tracks)

    def failures(self) -> list[Failure]:
        with self._lock:
            return [t.failure for t in self._tracks.values() if t.failure is not None]

    def watermarks(self) -> dict[TopicPartition, int | None]:
        """Per partition the first offset not known to be done (``None`` before anything was emitted)."""
        with self._lock:
            return {tp: t.watermark if t.watermark is not None else (t.offsets[0] if t.offsets else None)
                    for tp, t in self._tracks.items()}

    def done_since_commit(self) -> int:
        with self._lock:
            return self._done_since_commit

    def to_commit(self) -> dict[TopicPartition, int]:
        """Watermarks that moved past the last commit."""
        with self._lock:
            return {tp: t.watermark for tp, t in self._tracks.items()
                    if t.watermark is not None and t.watermark != t.committed}

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        with self._lock:
            self._done_since_commit = 0
            for tp, offset in offsets.items():
                track = self._tracks.get(tp)
                if track is None:
                    continue
                if track.committed is not None and offset < track.committed:
                    raise OffsetOrderError(f"{tp}: commit {offset} would go back from {track.committed}")
                track.committed = offset

    def wait_settled(self, tps: Iterable[TopicPartition] | None, timeout: float) -> bool:
        """Block until nothing is in flight for ``tps`` (all partitions if ``None``); False on timeout."""
        wanted = None if tps is None else list(tps)
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if wanted is None:
                    busy = self._in_flight
                else:
                    busy = sum(self._tracks[tp].in_flight() for tp in wanted if tp in self._tracks)
                if busy == 0:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._waiters += 1
                try:
                    self._changed.wait(remaining)
                finally:
                    self._waiters -= 1
