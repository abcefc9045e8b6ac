"""KafkaSource: Kafka polls as a pull-based (backpressured) observable of envelopes with gated commits.

The source is a facade over parts with one job each, all driven by its poll thread (see the threading model
in :mod:`rxcqrs.kafka`): the :class:`~rxcqrs.kafka.poller.Poller` fills a poll window, the
:class:`~rxcqrs.kafka.emission.Emitter` emits buffered records one at a time (with ``batches``, a partition's
run as one :class:`~rxcqrs.messages.Batch`) only while there is demand and room in the window, the
:class:`~rxcqrs.kafka.committer.Committer` commits, applies the failure policy and handles rebalances, the
:class:`~rxcqrs.kafka.lag.LagMeter` measures lag and backlog, and :mod:`rxcqrs.kafka.liveness` replaces a
consumer that hangs, starves or never gets an assignment (after ``max_consumer_restarts`` replacements the
source gives up with a clear error). It polls again only when every record of the previous poll was settled
by every branch (unless ``prefetch``); while it waits it keeps polling (keep-alive), so a stalled downstream
never costs the group membership. Before subscribing it waits for the topics' metadata: a missing topic
fails with :class:`~rxcqrs.exceptions.TopicNotFoundError` (nothing is ever auto-created).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Literal, Sequence

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from rxcqrs.clock import SYSTEM, Clock
from rxcqrs.exceptions import FlowError
from rxcqrs.kafka.client import ConsumerClient
from rxcqrs.kafka.committer import Committer
from rxcqrs.kafka.emission import Emitter, FetchBuffers
from rxcqrs.kafka.lag import LagMeter
from rxcqrs.kafka.liveness import AssignmentCheck, WatchedCalls
from rxcqrs.kafka.ownership import OwnershipChecks
from rxcqrs.kafka.poll_thread import Parts, PollThread
from rxcqrs.kafka.poller import Poller
from rxcqrs.kafka.settings import ConsumerSettings, SourceSettings
from rxcqrs.messages import Envelope, TopicPartition
from rxcqrs.metrics import Metrics
from rxcqrs.partitions import Confirmed, StartPositions

__all__ = ["KafkaSource", "consumer_client"]

log = logging.getLogger(__name__)

ClientFactory = Callable[[ConsumerSettings], ConsumerClient]


def consumer_client(settings: ConsumerSettings) -> ConsumerClient:
    """A consumer client of the settings' ``backend``."""
    if settings.backend == "confluent":
        from rxcqrs.kafka.confluent import ConfluentConsumer

        return ConfluentConsumer.create(settings)
    from rxcqrs.kafka.kafka_python import KafkaPythonConsumer

    return KafkaPythonConsumer.create(settings)


class KafkaSource:
    """Polls ``topics`` in consumer group ``consumer.group_id`` and emits ``Envelope[bytes]`` on demand.

    ``demand="auto"`` (default) emits whenever the window has room; ``demand="manual"`` emits only what
    :meth:`request` asked for (the controlled subject of RxPY 1). Subscribe once (broadcast for fan-out).
    ``clock`` times every interval and deadline (tests pass a virtual one, see :mod:`rxcqrs.clock`).
    """

    def __init__(self, topics: str | Sequence[str], consumer: ConsumerSettings,
                 settings: SourceSettings | None = None, *, demand: Literal["auto", "manual"] = "auto",
                 client_factory: ClientFactory = consumer_client, name: str | None = None,
                 clock: Clock = SYSTEM) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise FlowError("a KafkaSource needs at least one topic")
        self.consumer_settings = consumer
        self.settings = settings = settings or SourceSettings()
        self.name = name or f"{consumer.group_id}:{','.join(self.topics)}"
        self.metrics = metrics = Metrics()
        self._lock = threading.Lock()
        self._subscribed = False
        committer = Committer(settings, metrics, self.name, wake=lambda: self._poll.wake_if_sleeping(), clock=clock)
        self.committer = committer
        buffers = FetchBuffers()
        calls = WatchedCalls(self.name, settings.stuck_timeout, clock)
        liveness = AssignmentCheck(self.name, settings, clock)
        earliest = consumer.auto_offset_reset == "earliest"
        self._meter = meter = LagMeter(self.name, settings, earliest, committer, buffers, calls, clock)
        emitter = Emitter(buffers, committer, metrics, settings.batches)
        parts = Parts(committer=committer, buffers=buffers, emitter=emitter,
                      poller=Poller(settings, consumer.max_poll_records, committer, buffers, calls, liveness, meter,
                                    metrics, clock),
                      meter=meter, liveness=liveness, calls=calls, ownership=OwnershipChecks(self.name, earliest))
        self._ownership = parts.ownership
        self._poll = poll = PollThread(self.name, self.topics, consumer, settings, client_factory, parts, metrics,
                                       clock, manual=demand == "manual")
        metrics.gauge("records_in", lambda: poll.records_in)
        metrics.gauge("acked", lambda: committer.acked)
        metrics.gauge("nacked", lambda: committer.nacked)
        metrics.gauge("in_flight", committer.in_flight)
        metrics.gauge("buffered", lambda: buffers.count)
        metrics.gauge("committed", committer.records_committed)
        metrics.gauge("lag", lambda: sum(meter.lag.values()))
        metrics.gauge("backlog", lambda: meter.backlog)
        metrics.gauge("state", lambda: poll.state)
        self.observable: Observable[Envelope[bytes | None]] = reactivex.create(self._subscribe)

    # -- public control -----------------------------------------------------------------------------------
    @property
    def emits_batches(self) -> bool:
        """Whether :attr:`observable` emits :class:`~rxcqrs.messages.Batch` es (``SourceSettings.batches``)."""
        return self.settings.batches

    def pipe(self, *operators: Callable[[Any], Any]) -> Any:
        """``observable.pipe(*operators)``; with batches, split into envelopes before the first operator that
        does not take them (and at the end: the subscriber is not known)."""
        if self.emits_batches:
            from rxcqrs.operators._batch import fit_batches

            return self.observable.pipe(*fit_batches(operators, None))
        return self.observable.pipe(*operators)

    def request(self, n: int) -> None:
        """Ask for ``n`` more records (manual demand); safe from any thread, including inside ``on_next``."""
        if n < 0:
            raise ValueError("request(n) needs n >= 0")
        self._poll.request(n)

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop emitting; with ``drain`` wait for in-flight records (up to ``timeout`` / ``drain_timeout``),
        then commit what is done, close the consumer and complete. Returns at once; see :attr:`done`."""
        self._poll.stop(drain, timeout)

    @property
    def state(self) -> str:
        """What the poll thread does: starting, connecting, waiting for partition assignment, running,
        draining, stopped or failed."""
        return self._poll.state

    @property
    def done(self) -> threading.Event:
        """Set once the poll thread has finished (then :attr:`error` says how)."""
        return self._poll.done

    @property
    def error(self) -> BaseException | None:
        return self._poll.error

    @property
    def left_behind(self) -> int | None:
        """Records of the topic the group had not committed when the source stopped (None: unknown)."""
        return self._poll.left_behind

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the poll thread has finished; True if it did."""
        return self.done.wait(timeout)

    @property
    def drain_timeout(self) -> float:
        """How long a drain may take (``SourceSettings.drain_timeout``)."""
        return self.settings.drain_timeout

    def records_committed(self) -> int:
        """Records whose offsets this source has committed (not a sum of offsets)."""
        return self.committer.records_committed()

    def wait_committed(self, records: int, timeout: float) -> bool:
        """Block until this source has committed ``records`` records (True) or ``timeout`` passed (False)."""
        return self.committer.wait_committed(records, timeout)

    @property
    def group_id(self) -> str:
        return self.consumer_settings.group_id

    def on_revoke(self, listener: Callable[[list[TopicPartition]], None]) -> None:
        """Call ``listener(partitions)`` when partitions are revoked or lost (see :class:`Committer`)."""
        self.committer.on_revoke(listener)

    def on_assign(self, listener: Callable[[list[TopicPartition]], None]) -> None:
        """Call ``listener(partitions)`` when partitions are assigned, before any of their records is emitted."""
        self.committer.on_assign(listener)

    def start_at(self, positions: StartPositions) -> None:
        """Start newly assigned partitions where ``positions(partitions)`` says (see :class:`Committer`)."""
        self.committer.start_at(positions)

    def confirm_ownership(self, tps: Sequence[TopicPartition], then: Confirmed) -> None:
        """Ask whether this member is still in the group's current generation (see
        :mod:`rxcqrs.kafka.ownership`); the poll thread answers at its next turn."""
        self._ownership.ask(tps, then)
        self._poll.wake()

    def in_flight(self) -> int:
        """Records emitted and not settled yet."""
        return self.committer.in_flight()

    def assigned(self) -> set[TopicPartition]:
        """The partitions assigned to this source now."""
        return self.committer.assigned_partitions()

    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the end offsets, per partition assigned to this source (last measurement)."""
        return dict(self._meter.lag)

    def backlog(self) -> int | None:
        """Records of the whole topic not yet done by the group (last measurement; None before the first)."""
        return self._meter.backlog

    def idle_seconds(self) -> float:
        """How long nothing has been in flight, nothing buffered and the group's backlog zero."""
        return self._meter.idle_seconds()

    # -- subscription -------------------------------------------------------------------------------------
    def _subscribe(self, observer: abc.ObserverBase[Envelope[bytes | None]],
                   scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        with self._lock:
            if self._subscribed:
                observer.on_error(FlowError(f"KafkaSource {self.name} can be subscribed once; "
                                            "use rxcqrs.operators.broadcast to feed several observers"))
                return Disposable()
            self._subscribed = True
        self._poll.start(observer)
        return Disposable(lambda: self.stop(drain=False))
