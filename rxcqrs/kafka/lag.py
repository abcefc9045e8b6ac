"""Lag, backlog and idleness of a source, from the broker's end offsets (the poll thread only).

``lag``: records behind the end offsets on this member's partitions, counted from the first offset it has
not finished (in flight, buffered or its fetch position); ``backlog``: the whole group's, from its committed
offsets for partitions of other members (or where a partition without a commit starts); ``unfetched``: end
offset minus fetch position per assigned partition (what liveness calls "records wait to be fetched");
``idle_seconds``: how long nothing has been in flight, nothing buffered and the backlog zero. Measured every
``lag_interval``; a failed measurement leaves ``unfetched`` empty (unknown is not "records wait").
"""

from __future__ import annotations

import logging

from rxcqrs.clock import Clock
from rxcqrs.kafka.client import ConsumerClient
from rxcqrs.kafka.committer import Committer
from rxcqrs.kafka.emission import FetchBuffers
from rxcqrs.kafka.liveness import ReplaceConsumer, WatchedCalls
from rxcqrs.kafka.settings import SourceSettings
from rxcqrs.messages import TopicPartition

__all__ = ["LagMeter", "every_partition"]

log = logging.getLogger(__name__)


def every_partition(partitions: dict[str, int]) -> list[TopicPartition]:
    """Every partition of topics with ``partitions[topic]`` partitions."""
    return [TopicPartition(t, p) for t, n in partitions.items() for p in range(n)]


class LagMeter:
    def __init__(self, name: str, settings: SourceSettings, earliest: bool, committer: Committer,
                 buffers: FetchBuffers, calls: WatchedCalls, clock: Clock) -> None:
        self.name = name
        self.settings = settings
        self._earliest = earliest
        self._committer = committer
        self._buffers = buffers
        self._calls = calls
        self._clock = clock
        #: partitions per topic (filled when the source opens)
        self.partitions: dict[str, int] = {}
        self.lag: dict[TopicPartition, int] = {}
        self.unfetched: dict[TopicPartition, int] = {}
        self.backlog: int | None = None
        self._measured_at = float("-inf")
        self._idle_since: float | None = None

    def busy(self) -> None:
        """Records were emitted: not idle."""
        self._idle_since = None

    def idle_seconds(self) -> float:
        since = self._idle_since
        return 0.0 if since is None else self._clock.now() - since

    def measure(self, client: ConsumerClient, force: bool = False) -> None:
        """Measure if ``lag_interval`` has passed since the last time (or ``force``)."""
        now = self._clock.now()
        if not force and now - self._measured_at < self.settings.lag_interval:
            return
        self._measured_at = now
        call = self._calls
        every = every_partition(self.partitions)
        try:
            ends = call("end_offsets", client.end_offsets, every, 5.0)
            assigned = [tp for tp in call("assignment", client.assignment) if tp in ends]
            positions = {tp: call("position", client.position, tp) for tp in assigned}
            # where the group stands on partitions of other members, and on ours before the first fetch
            unknown = [tp for tp in every if tp not in assigned or positions.get(tp) is None]
            committed = call("committed", client.committed, unknown, 5.0) if unknown else {}
            starts = self._starts(client, [tp for tp in unknown if committed.get(tp) is None])
        except ReplaceConsumer:
            raise
        except Exception as exc:
            log.info("%s: could not measure lag: %r", self.name, exc)
            self.unfetched = {}
            return
        group = {tp: committed[tp] if committed.get(tp) is not None else starts.get(tp, ends[tp])
                 for tp in unknown if tp in ends}
        marks = self._committer.watermarks()  # before the first fetch: a start given on assignment, if any
        for tp in assigned:
            if positions[tp] is None:
                mark = marks.get(tp)
                positions[tp] = mark if mark is not None else group[tp]
        self.unfetched = {tp: max(0, ends[tp] - positions[tp]) for tp in assigned}
        self.lag = {tp: max(0, ends[tp] - self._next_offset(tp, positions[tp], marks)) for tp in assigned}
        self.backlog = sum(self.lag.values()) + sum(max(0, ends[tp] - group[tp]) for tp in every
                                                    if tp not in self.lag and tp in group)
        idle = self.backlog == 0 and not self._buffers.count and self._committer.in_flight() == 0
        if not idle:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now

    def left_behind(self, client: ConsumerClient) -> int:
        """Records of the topics the group has not committed (read when the source stops)."""
        every = every_partition(self.partitions)
        ends = self._calls("end_offsets", client.end_offsets, every, 5.0)
        committed = self._calls("committed", client.committed, every, 5.0)
        return sum(max(0, ends[tp] - (committed.get(tp) or 0)) for tp in every if tp in ends)

    def _starts(self, client: ConsumerClient, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Where a partition without a commit starts: its beginning (``auto_offset_reset="earliest"``) or its
        end ("latest", i.e. nothing to do)."""
        if not tps or not self._earliest:
            return {}
        return dict(self._calls("beginning_offsets", client.beginning_offsets, tps, 5.0))

    def _next_offset(self, tp: TopicPartition, position: int, marks: dict[TopicPartition, int | None]) -> int:
        """The first offset of ``tp`` this source has not finished: in flight (or failed), buffered, or the
        fetch position."""
        if self._committer.in_flight([tp]) or self._committer.failed:
            mark = marks.get(tp)
            if mark is not None:
                return mark
        first = self._buffers.first_offset(tp)
        return position if first is None else first
