"""The poll thread of a :class:`~rxcqrs.kafka.KafkaSource`: its loop, its consumer's life, and stopping.

One turn of the loop: replace a consumer found stuck (:mod:`rxcqrs.kafka.liveness`), answer ownership
checks, apply the failure policy, then, unless stopping, emit a burst of buffered records if the window
and the demand allow, or poll a new window once the previous one is settled (unless ``prefetch``), check
liveness, measure lag, commit when due, and sleep until a settle that matters, a request or a deadline wakes
it (making keep-alive polls meanwhile). Stopping drains in-flight records until the drain deadline, commits
what is done, counts what is left for the next run and closes the consumer, each step bounded.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Literal

from reactivex import abc

from rxcqrs.clock import Clock
from rxcqrs.exceptions import DrainTimeoutError, FlowError, GroupMovedOnError, TopicNotFoundError
from rxcqrs.kafka.client import ConsumerClient
from rxcqrs.kafka.committer import Committer
from rxcqrs.kafka.emission import Demand, Emitter, FetchBuffers
from rxcqrs.kafka.lag import LagMeter
from rxcqrs.kafka.liveness import AssignmentCheck, ReplaceConsumer, WatchedCalls
from rxcqrs.kafka.ownership import OwnershipChecks
from rxcqrs.kafka.poller import Poller
from rxcqrs.kafka.settings import ConsumerSettings, SourceSettings
from rxcqrs.messages import Envelope
from rxcqrs.metrics import Metrics

__all__ = ["PollThread", "Parts"]

log = logging.getLogger(__name__)

_BURST = 64  # records emitted per loop turn before the loop looks at failures, commits and its clock
_BATCH_BURST = 512  # the same with batches (a batch costs about what one record costs)


@dataclass
class Parts:
    """The parts of one source that the poll thread drives."""

    committer: Committer
    buffers: FetchBuffers
    emitter: Emitter
    poller: Poller
    meter: LagMeter
    liveness: AssignmentCheck
    calls: WatchedCalls
    ownership: OwnershipChecks


class PollThread:
    def __init__(self, name: str, topics: list[str], consumer: ConsumerSettings, settings: SourceSettings,
                 factory: Callable[[ConsumerSettings], ConsumerClient], parts: Parts, metrics: Metrics,
                 clock: Clock, manual: bool) -> None:
        self.name = name
        self.topics = topics
        self.consumer_settings = consumer
        self.settings = settings
        self._factory = factory
        self.parts = parts
        self.metrics = metrics
        self._clock = clock
        self._demand = Demand(manual)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._joined = False  # the current consumer subscribed
        self._stop_mode: Literal["drain", "now"] | None = None
        self._stop_error: BaseException | None = None
        self._stop_deadline = float("inf")
        self._client: ConsumerClient | None = None
        self._restarts = 0
        self.state = "starting"
        self.left_behind: int | None = None
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.records_in = 0  # only the poll thread counts
        self._sleeping = False  # the poll thread waits for a wake-up (see wake_if_sleeping)
        self._seen_changes = 0
        self._thread: threading.Thread | None = None

    # -- any thread ---------------------------------------------------------------------------------------
    def start(self, observer: abc.ObserverBase[Envelope[bytes | None]]) -> None:
        self._thread = threading.Thread(target=self._run, args=(observer,), name=f"rxcqrs-poll-{self.name}",
                                        daemon=True)
        self._thread.start()

    def request(self, n: int) -> None:
        self._demand.request(n)
        self._wake.set()

    def stop(self, drain: bool, timeout: float | None) -> None:
        with self._lock:
            if self._stop_mode is None or (self._stop_mode == "drain" and not drain):
                self._stop_mode = "drain" if drain else "now"
                self._stop_deadline = self._clock.now() + (timeout if timeout is not None
                                                           else self.settings.drain_timeout)
                if not drain:
                    self.parts.committer.stop_now()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def wake_if_sleeping(self) -> None:
        """A settle that matters (see ``CommitGate.wake_when``): wake the poll thread only if it sleeps; if it
        is busy, it sees the gate's change counter move before it goes to sleep."""
        if self._sleeping:
            self._wake.set()

    # -- the poll thread ----------------------------------------------------------------------------------
    def _run(self, observer: abc.ObserverBase[Envelope[bytes | None]]) -> None:
        error: BaseException | None = None
        try:
            self._open()
            while True:
                try:
                    self._loop(observer)
                    break
                except ReplaceConsumer as why:
                    self._replace(str(why))
            error = self._stop_error
        except Exception as exc:
            error = exc
            log.error("source %s failed: %s", self.name, exc)
        finally:
            error = self._close(error)
            self.parts.calls.stop()
            self.error = error
            self.state = "failed" if error is not None else "stopped"
            self.done.set()
            if error is None:
                observer.on_completed()
            else:
                observer.on_error(error)  # type: ignore[arg-type]

    def _open(self) -> None:
        self.state = "connecting"
        self._joined = False
        self._client = client = self._factory(self.consumer_settings)
        self.parts.calls.use(client)
        for topic in self.topics:
            self.parts.meter.partitions[topic] = self._wait_for_topic(client, topic)
        self.parts.calls("subscribe", client.subscribe, self.topics, self.parts.committer)
        self._joined = True
        self.parts.liveness.subscribed()
        self.state = "waiting for partition assignment"

    def _wait_for_topic(self, client: ConsumerClient, topic: str) -> int:
        """The topic's partition count, once its metadata is known (so the group join sees its partitions)."""
        deadline = self._clock.now() + self.settings.metadata_timeout
        while True:
            partitions = self.parts.calls("metadata", client.topic_partitions, topic, self.settings.metadata_timeout)
            if partitions:
                return int(partitions)
            if self._clock.now() >= deadline:
                raise TopicNotFoundError(
                    f"Kafka topic {topic!r} does not exist at {self.consumer_settings.bootstrap_servers} (rxcqrs "
                    "never creates topics implicitly): create it first, or check the topic name")
            self._clock.sleep(0.2)  # pacing between metadata requests; the deadline bounds the loop

    def _replace(self, why: str) -> None:
        """Close the consumer (it is stuck or never assigned) and start a new one in the same group."""
        self._restarts += 1
        self.metrics.incr("consumer_restarts")
        if self._restarts > self.settings.max_consumer_restarts:
            raise FlowError(f"{self.name}: gave up after replacing the consumer {self.settings.max_consumer_restarts} "
                            f"times; last reason: {why}")
        log.warning("%s: replacing the consumer (%d of at most %d): %s", self.name, self._restarts,
                    self.settings.max_consumer_restarts, why)
        client = self._client
        self.parts.committer.lost(sorted(self.parts.committer.assigned_partitions()))  # in flight: redelivered
        self.parts.buffers.clear()
        if client is not None:
            try:
                client.close(timeout=5.0)
            except Exception as exc:
                log.info("%s: closing the replaced consumer failed: %r", self.name, exc)
        self._open()

    def _loop(self, observer: abc.ObserverBase[Envelope[bytes | None]]) -> None:
        client = self._client
        assert client is not None
        parts, clock = self.parts, self._clock
        committer, poller, meter = parts.committer, parts.poller, parts.meter
        while True:
            self._wake.clear()
            self._seen_changes = committer.changes
            parts.calls.check()
            if parts.ownership.waiting:
                parts.ownership.serve(client, parts.calls)
            stop_with = committer.check_failures()
            if stop_with is not None:
                self._begin_stop(stop_with)
            committer.finish_rewinds(client)
            if self._stop_mode is not None:
                self.state = "draining"
                in_flight = committer.in_flight()
                if self._stop_mode == "now" or in_flight == 0:
                    return
                if clock.now() >= self._stop_deadline:
                    committer.stop_now()  # the drain has waited: the revoke at close does not wait again
                    self._stop_error = self._stop_error or DrainTimeoutError(
                        f"drain of {self.name} timed out with {in_flight} records in flight; they were not "
                        "committed and will be delivered again")
                    return
            else:
                if self._emit_burst(observer):
                    if poller.keepalive_due():
                        self._fetched(poller.keepalive(client))
                    committer.maybe_commit(client)
                    continue
                if self._ready_to_poll():  # the previous window is settled (unless prefetch): commit it first
                    committer.maybe_commit(client, batch_done=committer.in_flight() == 0)
                    self._fetched(poller.window(client))
                    self._check_assignment(client)
                    meter.measure(client)
                    continue
                self._check_assignment(client)
            meter.measure(client)
            committer.maybe_commit(client, batch_done=not self.parts.buffers.count and committer.in_flight() == 0)
            self._wait(client)

    def _fetched(self, added: int) -> None:
        if added and self.state != "running":
            self.state = "running"

    def _check_assignment(self, client: ConsumerClient) -> None:
        self.parts.liveness.check(client, self.parts.calls, bool(self.parts.committer.assigned_partitions()),
                             sum(self.parts.meter.partitions.values()), self.parts.meter.unfetched)

    def _emit_burst(self, observer: abc.ObserverBase[Any]) -> bool:
        """Emit up to ``_BURST`` buffered records (``_BATCH_BURST`` in batches) within the window and the
        demand (both are read once: settles and requests made meanwhile only add room)."""
        if not self.parts.buffers:
            return False
        burst = _BATCH_BURST if self.settings.batches else _BURST
        allowed = self._demand.allows(min(burst, self.settings.max_in_flight - self.parts.committer.in_flight()))
        emitted = self.parts.emitter.emit(observer, allowed)
        if emitted:
            self.records_in += emitted
            self.parts.meter.busy()
            self._demand.took(emitted)
        return emitted > 0

    def _ready_to_poll(self) -> bool:
        if self.parts.buffers.count:
            return False
        if not self._demand.allows(1):
            return False
        in_flight = self.parts.committer.in_flight()
        return in_flight < self.settings.max_in_flight if self.settings.prefetch else in_flight == 0

    def _wait(self, client: ConsumerClient) -> None:
        clock = self._clock
        timeout = self.settings.keepalive_interval
        resume = self.parts.committer.next_resume()
        if resume is not None:
            timeout = min(timeout, max(0.0, resume - clock.now()))
        if self.parts.committer.commit_due():
            timeout = min(timeout, self.settings.commit_interval)
        if self._stop_mode is not None:
            timeout = min(timeout, max(0.0, self._stop_deadline - clock.now()))
        self._sleeping = True
        try:
            if self.parts.committer.changes == self._seen_changes:  # nothing happened since this turn began
                clock.wait(self._wake, timeout)
        finally:
            self._sleeping = False
        if self.parts.poller.keepalive_due():
            self._fetched(self.parts.poller.keepalive(client))

    # -- stopping -----------------------------------------------------------------------------------------
    def _begin_stop(self, error: BaseException) -> None:
        with self._lock:
            if self._stop_error is None:
                self._stop_error = error
            if self._stop_mode is None:
                self._stop_mode = "drain"
                self._stop_deadline = self._clock.now() + self.settings.drain_timeout
        self.parts.buffers.clear()

    def _close(self, error: BaseException | None) -> BaseException | None:
        """Commit what is done, note what is left for the next run, close the consumer: each step bounded."""
        client = self._client
        if client is None:
            return error
        if not self.parts.calls.stuck and self._joined:
            try:
                self.parts.committer.maybe_commit(client, force=True, strict=True)
            except GroupMovedOnError as exc:  # the next owner starts from the last accepted commit
                log.warning("final commit of %s refused, the group moved on (%s); what it did not cover is "
                            "delivered again", self.name, exc)
            except Exception as exc:
                log.warning("final commit of %s failed: %r", self.name, exc)
                error = error or exc
            try:
                self.left_behind = self.parts.meter.left_behind(client)
            except Exception as exc:
                log.info("%s: could not read what is left: %r", self.name, exc)
        try:
            client.close(timeout=5.0)
        except Exception as exc:
            log.warning("closing the consumer of %s failed: %r", self.name, exc)
        return error
