"""The failure policies of a source: ``stop`` at the first failed record, or ``rewind`` its partition.

A rewind waits until nothing of the partition is in flight, commits what is done, seeks back to the first
record not done and holds the partition for the backoff's delay. Attempts are counted per partition and
reset only by progress (a commit past the offset that first failed), so failures that move between offsets
still reach the backoff's maximum and stop the source. A permanent error
(:func:`~rxcqrs.exceptions.is_permanent`) stops it at once, whatever the policy. Poll thread only.
"""

from __future__ import annotations

import logging
from typing import Callable

from rxcqrs.clock import Clock
from rxcqrs.commit import CommitGate, Failure
from rxcqrs.exceptions import FlowError, RetriesExhaustedError, is_permanent
from rxcqrs.kafka.client import ConsumerClient
from rxcqrs.kafka.settings import SourceSettings
from rxcqrs.messages import TopicPartition
from rxcqrs.metrics import Metrics

__all__ = ["Rewinds"]

log = logging.getLogger(__name__)


class Rewinds:
    def __init__(self, settings: SourceSettings, metrics: Metrics, name: str, gate: CommitGate,
                 clock: Clock) -> None:
        self.settings = settings
        self.metrics = metrics
        self.name = name
        self._gate = gate
        self._clock = clock
        self._halted: dict[TopicPartition, float] = {}  # waiting for in-flight to settle, then seek + back off
        self._resume_at: dict[TopicPartition, float] = {}
        self._attempts: dict[TopicPartition, int] = {}
        self._first_failed: dict[TopicPartition, int] = {}

    def check_failures(self) -> BaseException | None:
        """Apply the failure policy to nacked records: schedule rewinds, or return the error to stop with."""
        if not self._gate.failed:
            return None
        for failure in self._gate.failures():
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

    def finish(self, client: ConsumerClient, commit: Callable[[], None]) -> None:
        """Once a halted partition has nothing in flight: ``commit()`` what is done, seek to it, back off."""
        for tp, delay in list(self._halted.items()):
            if self._gate.in_flight([tp]) > 0:
                continue
            del self._halted[tp]
            position = self._gate.rewind(tp)
            commit()
            if position is not None and tp in client.assignment():
                client.seek(tp, position)
            self._resume_at[tp] = self._clock.now() + delay

    def progressed(self, offsets: dict[TopicPartition, int]) -> None:
        """Commits made: progress past a failure resets its attempts."""
        for tp, offset in offsets.items():
            failed = self._first_failed.get(tp)
            if failed is not None and offset > failed:
                self._first_failed.pop(tp, None)
                self._attempts.pop(tp, None)

    def halted(self, tp: TopicPartition) -> bool:
        """A failure on ``tp`` waits for its rewind: its buffered records must not be emitted."""
        return tp in self._halted

    def held(self) -> set[TopicPartition]:
        """Partitions not to fetch now: rewinding, or backing off after a rewind."""
        now = self._clock.now()
        for tp, at in list(self._resume_at.items()):
            if at <= now:
                del self._resume_at[tp]
        return set(self._halted) | set(self._resume_at)

    def next_resume(self) -> float | None:
        """When the first held partition may be fetched again (on the clock), if any is held."""
        return min(self._resume_at.values()) if self._resume_at else None


def _failed(failure: Failure) -> FlowError:
    error = FlowError(f"record {failure.tp.topic}/{failure.tp.partition}@{failure.offset} failed: "
                      f"{failure.error}; nothing at or after it was committed")
    error.__cause__ = failure.error
    return error
