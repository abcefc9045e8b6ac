"""The fetching half of a source's poll loop: poll windows and keep-alive polls (the poll thread only).

A window covers every assigned partition: the poller polls again, without waiting, while some partition that
is not held (rewinding or backing off, see :mod:`rxcqrs.kafka.rewinds`) has nothing buffered yet, so a window
is not one partition's fetch, and it stops at the room the in-flight window leaves (a poll returns when it has
its records or at its timeout, so the timeout also sets how full a window gets). Held partitions are
paused, the others resumed. (Pausing partitions that already have records, to make the client hand out the
others, stalls kafka-python 3.0 fetches across rebalances; small per-partition fetches,
``max_partition_fetch_bytes``, do the balancing instead.) While downstream is busy the loop makes keep-alive
polls, which fetch (almost) nothing and keep the member in the group. A poll cannot be interrupted, so once
a window's waiting poll came back with fewer records than it asked for (it reached the end of what there is)
the next waits at most ``SETTLING_POLL`` while records are in flight: the ack that settles them is committed
that soon after it, not a whole ``poll_timeout`` later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rxcqrs.clock import Clock
from rxcqrs.kafka.client import ConsumerClient, Record
from rxcqrs.kafka.committer import Committer
from rxcqrs.kafka.emission import FetchBuffers
from rxcqrs.kafka.lag import LagMeter
from rxcqrs.kafka.liveness import AssignmentCheck, WatchedCalls
from rxcqrs.kafka.settings import SourceSettings
from rxcqrs.messages import TopicPartition
from rxcqrs.metrics import Metrics

__all__ = ["SETTLING_POLL", "Poller"]

#: seconds a poll waits for records while others are in flight (see the module's docstring)
SETTLING_POLL = 0.02


@dataclass
class Poller:
    settings: SourceSettings
    max_poll_records: int
    committer: Committer
    buffers: FetchBuffers
    calls: WatchedCalls
    liveness: AssignmentCheck
    meter: LagMeter
    metrics: Metrics
    clock: Clock
    #: when the client was last polled (on the clock)
    last_poll: float = field(init=False)
    #: the last window's waiting poll returned fewer records than it asked for (it waited its timeout)
    drained: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.last_poll = self.clock.now()

    def keepalive_due(self) -> bool:
        return self.clock.now() - self.last_poll >= self.settings.keepalive_interval

    def window(self, client: ConsumerClient) -> int:
        """Fill the window from the assigned partitions; the number of records added to the buffers."""
        call, committer = self.calls, self.committer
        assigned = call("assignment", client.assignment)
        held = committer.held()
        active = [tp for tp in assigned if tp not in held]
        paused = call("paused", client.paused)
        to_pause = [tp for tp in assigned if tp in held and tp not in paused]
        if to_pause:
            call("pause", client.pause, to_pause)
        to_resume = [tp for tp in active if tp in paused]
        if to_resume:
            call("resume", client.resume, to_resume)
        in_flight = committer.in_flight()
        room = self.settings.max_in_flight - in_flight - self.buffers.count
        timeout = self.settings.poll_timeout
        if self.drained and in_flight:
            timeout = min(timeout, SETTLING_POLL)
        added = 0
        for _ in range(len(active) + 1):
            if room <= 0:
                break
            asked = max(1, min(room, self.max_poll_records))
            records = call("poll", client.poll, timeout, asked)
            self.last_poll = self.clock.now()
            self.metrics.incr("polls")
            if timeout:  # the window's waiting poll (the others only collect what is there)
                self.drained = sum(map(len, records.values())) < asked
            timeout = 0.0
            if not records:
                break
            fetched = self.add(records)
            added += fetched
            room -= fetched
            if all(self.buffers.holds(tp) for tp in active):
                break
        if not added:
            self.metrics.incr("empty_polls")
        unfetched = self.meter.unfetched
        self.liveness.polled(added > 0, any(unfetched.get(tp, 0) > 0 for tp in active))
        return added

    def keepalive(self, client: ConsumerClient) -> int:
        """A poll that keeps the member in the group; records it returns anyway (e.g. of newly assigned
        partitions not paused yet) are kept, in order. The number added."""
        records = self.calls("keepalive", client.keepalive)
        self.last_poll = self.clock.now()
        self.metrics.incr("keepalive_polls")
        return self.add(records) if records else 0

    def add(self, records: dict[TopicPartition, list[Record]]) -> int:
        added = 0
        committer = self.committer
        for tp, recs in records.items():
            if not recs:
                continue
            epoch = committer.epoch(tp)
            if epoch is None:  # records before the assignment callback (manual assignment): track it now
                epoch = committer.track(tp)
            self.buffers.add(tp, epoch, recs)
            committer.started_at(tp, recs[0].offset)
            added += len(recs)
        return added
