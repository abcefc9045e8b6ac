"""KafkaSource: Kafka polls as a pull-based (backpressured) observable of envelopes with gated commits.

The poll thread (see the threading model in :mod:`rxcqrs.kafka`) owns the consumer client. It emits
records one at a time (with ``batches``, a partition's buffered records as one
:class:`~rxcqrs.messages.Batch`), only while there is demand and room in the window, and polls again only
when every record of the previous poll was settled by every branch (unless ``prefetch``). A poll window covers every
assigned partition: partitions that already hold their share are paused while the others are fetched,
so per-key ordered stages downstream get work for all of their workers. While it waits, the source pauses
its partitions and keeps polling, so a stalled downstream never costs the group membership. Committing,
failure policies and rebalances belong to the :class:`~rxcqrs.kafka.committer.Committer`.

Liveness: before subscribing, the source waits for the topic's metadata (a missing topic fails at once with
:class:`~rxcqrs.exceptions.TopicNotFoundError`: nothing is ever auto-created). A consumer that gets no
assignment in ``assignment_timeout`` while the topic has more partitions than the group has members, or
whose client call hangs longer than ``stuck_timeout``, is closed and replaced (same group), with a warning
that says why; after ``max_consumer_restarts`` replacements the source gives up with a clear error.

Lag is measured from the broker's end offsets for every partition of the topic (``lag``: this member's
partitions; ``backlog``: the whole group's, from its committed offsets for partitions of other members),
and :meth:`KafkaSource.idle_seconds` says how long nothing has been in flight, nothing buffered and the
backlog zero.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Literal, Sequence

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from rxcqrs import tracing
from rxcqrs.exceptions import DrainTimeoutError, FlowError, GroupMovedOnError, TopicNotFoundError
from rxcqrs.kafka.client import ConsumerClient, Record
from rxcqrs.kafka.committer import Committer
from rxcqrs.kafka.liveness import Watchdog
from rxcqrs.kafka.ownership import OwnershipChecks
from rxcqrs.kafka.settings import ConsumerSettings, SourceSettings
from rxcqrs.messages import Batch, Envelope, RecordMetadata, TopicPartition
from rxcqrs.metrics import Metrics
from rxcqrs.partitions import Confirmed, StartPositions

__all__ = ["KafkaSource", "consumer_client"]

log = logging.getLogger(__name__)

ClientFactory = Callable[[ConsumerSettings], ConsumerClient]
_BURST = 64  # records emitted per loop turn before the loop looks at failures, commits and its clock
_BATCH_BURST = 512  # the same with batches (a batch costs about what one record costs)


def consumer_client(settings: ConsumerSettings) -> ConsumerClient:
    """A consumer client of the settings' ``backend``."""
    if settings.backend == "confluent":
        from rxcqrs.kafka.confluent import ConfluentConsumer

        return ConfluentConsumer.create(settings)
    from rxcqrs.kafka.kafka_python import KafkaPythonConsumer

    return KafkaPythonConsumer.create(settings)


class _Replace(Exception):
    """The current consumer must be replaced (stuck, or never assigned)."""


class KafkaSource:
    """Polls ``topics`` in consumer group ``consumer.group_id`` and emits ``Envelope[bytes]`` on demand.

    ``demand="auto"`` (default) emits whenever the window has room; ``demand="manual"`` emits only what
    :meth:`request` asked for (the controlled subject of RxPY 1). Subscribe once (broadcast for fan-out).
    """

    def __init__(self, topics: str | Sequence[str], consumer: ConsumerSettings,
                 settings: SourceSettings | None = None, *, demand: Literal["auto", "manual"] = "auto",
                 client_factory: ClientFactory = consumer_client, name: str | None = None) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise FlowError("a KafkaSource needs at least one topic")
        self.consumer_settings = consumer
        self.settings = settings or SourceSettings()
        self.name = name or f"{consumer.group_id}:{','.join(self.topics)}"
        self.metrics = Metrics()
        self._factory = client_factory
        self._manual = demand == "manual"
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._demand = 0
        self._subscribed = False
        self._stop_mode: Literal["drain", "now"] | None = None
        self._stop_error: BaseException | None = None
        self._stop_deadline = float("inf")
        self.committer = Committer(self.settings, self.metrics, self.name, wake=self._wake_if_sleeping)
        self.gate = self.committer.gate
        self._ownership = OwnershipChecks(self.name, consumer.auto_offset_reset == "earliest")
        self._client: ConsumerClient | None = None
        self._partitions: dict[str, int] = {}
        self._buffers: dict[TopicPartition, tuple[int, deque[Record]]] = {}
        self._ring: deque[TopicPartition] = deque()  # partitions with buffered records, in emission turn
        self._buffered = 0
        self._last_poll = 0.0
        self._subscribed_at = 0.0
        self._restarts = 0
        self._stuck: str | None = None
        self._lag: dict[TopicPartition, int] = {}
        self._unfetched: dict[TopicPartition, int] = {}  # end offset - fetch position, per assigned partition
        self._starving_since: float | None = None  # polls return nothing although records wait to be fetched
        self._backlog: int | None = None
        self._measured_at = 0.0
        self._idle_since: float | None = None
        self.state = "starting"
        #: records of the topic the group had not committed when the source stopped (None: unknown)
        self.left_behind: int | None = None
        self._thread: threading.Thread | None = None
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._records_in = 0  # only the poll thread counts
        self._sleeping = False  # the poll thread waits for a wake-up (see _wake_if_sleeping)
        self._seen_changes = 0
        self.metrics.gauge("records_in", lambda: self._records_in)
        self.metrics.gauge("acked", lambda: self.gate.acked)
        self.metrics.gauge("nacked", lambda: self.gate.nacked)
        self.metrics.gauge("in_flight", self.gate.in_flight)
        self.metrics.gauge("buffered", lambda: self._buffered)
        self.metrics.gauge("committed", self.committer.records_committed)
        self.metrics.gauge("lag", lambda: sum(self._lag.values()))
        self.metrics.gauge("backlog", lambda: self._backlog)
        self.metrics.gauge("state", lambda: self.state)
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
        with self._lock:
            self._demand += n
        self._wake.set()

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop emitting; with ``drain`` wait for in-flight records (up to ``timeout`` / ``drain_timeout``),
        then commit what is done, close the consumer and complete. Returns at once; see :attr:`done`."""
        with self._lock:
            if self._stop_mode is None or (self._stop_mode == "drain" and not drain):
                self._stop_mode = "drain" if drain else "now"
                self._stop_deadline = time.monotonic() + (timeout if timeout is not None
                                                          else self.settings.drain_timeout)
                self.committer.stopping_now = not drain
        self._wake.set()

    def _wake_if_sleeping(self) -> None:
        """A settle that matters (see ``CommitGate.wake_when``): wake the poll thread only if it sleeps; if it
        is busy, it sees the gate's change counter move before it goes to sleep."""
        if self._sleeping:
            self._wake.set()

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
        self._wake.set()

    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the end offsets, per partition assigned to this source (last measurement)."""
        return dict(self._lag)

    def backlog(self) -> int | None:
        """Records of the whole topic not yet done by the group (last measurement; None before the first)."""
        return self._backlog

    def idle_seconds(self) -> float:
        """How long nothing has been in flight, nothing buffered and the group's backlog zero."""
        since = self._idle_since
        return 0.0 if since is None else time.monotonic() - since

    # -- subscription -------------------------------------------------------------------------------------
    def _subscribe(self, observer: abc.ObserverBase[Envelope[bytes | None]],
                   scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        with self._lock:
            if self._subscribed:
                observer.on_error(FlowError(f"KafkaSource {self.name} can be subscribed once; "
                                            "use rxcqrs.operators.broadcast to feed several observers"))
                return Disposable()
            self._subscribed = True
        self._thread = threading.Thread(target=self._run, args=(observer,), name=f"rxcqrs-poll-{self.name}",
                                        daemon=True)
        self._thread.start()
        return Disposable(lambda: self.stop(drain=False))

    # -- the poll thread ----------------------------------------------------------------------------------
    def _run(self, observer: abc.ObserverBase[Envelope[bytes | None]]) -> None:
        watchdog = Watchdog(self.name, self.settings.stuck_timeout, self._on_stuck)
        self._watch = watchdog
        error: BaseException | None = None
        try:
            self._open()
            while True:
                try:
                    self._loop(observer)
                    break
                except _Replace as why:
                    self._replace(str(why))
            error = self._stop_error
        except Exception as exc:
            error = exc
            log.error("source %s failed: %s", self.name, exc)
        finally:
            error = self._close(error)
            watchdog.stop()
            self.error = error
            self.state = "failed" if error is not None else "stopped"
            self.done.set()
            if error is None:
                observer.on_completed()
            else:
                observer.on_error(error)  # type: ignore[arg-type]

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One call to the client, watched for hanging."""
        with self._watch.call(what):
            try:
                return fn(*args, **kwargs)
            except Exception:
                if self._stuck is not None:
                    raise _Replace(self._stuck) from None
                raise

    def _on_stuck(self, what: str, seconds: float) -> None:
        """The watchdog's thread: a call hangs. Break it; the poll thread replaces the consumer."""
        self._stuck = f"the consumer's {what}() has not returned for {seconds:.0f}s"
        client = self._client
        log.warning("%s: %s; interrupting it", self.name, self._stuck)
        if client is not None:
            try:
                client.interrupt()
            except Exception as exc:
                log.warning("%s: interrupting the consumer failed: %r", self.name, exc)

    def _open(self) -> None:
        self.state = "connecting"
        self._client = client = self._factory(self.consumer_settings)
        self._stuck = None
        for topic in self.topics:
            self._partitions[topic] = self._wait_for_topic(client, topic)
        self._call("subscribe", client.subscribe, self.topics, self.committer)
        self._subscribed_at = time.monotonic()
        self.state = "waiting for partition assignment"

    def _wait_for_topic(self, client: ConsumerClient, topic: str) -> int:
        """The topic's partition count, once its metadata is known (so the group join sees its partitions)."""
        deadline = time.monotonic() + self.settings.metadata_timeout
        while True:
            partitions = self._call("metadata", client.topic_partitions, topic, self.settings.metadata_timeout)
            if partitions:
                return int(partitions)
            if time.monotonic() >= deadline:
                raise TopicNotFoundError(
                    f"Kafka topic {topic!r} does not exist at {self.consumer_settings.bootstrap_servers} (rxcqrs "
                    "never creates topics implicitly): create it first, or check the topic name")
            time.sleep(0.2)  # pacing between metadata requests; the deadline bounds the loop

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
        self.committer.lost(sorted(self.gate.assigned()))  # in-flight records of the old member are redelivered
        self._clear_buffers()
        if client is not None:
            try:
                client.close(timeout=5.0)
            except Exception as exc:
                log.info("%s: closing the replaced consumer failed: %r", self.name, exc)
        self._open()

    def _loop(self, observer: abc.ObserverBase[Envelope[bytes | None]]) -> None:
        client = self._client
        assert client is not None
        while True:
            self._wake.clear()
            self._seen_changes = self.gate.changes
            if self._stuck is not None:
                raise _Replace(self._stuck)
            if self._ownership.waiting:
                self._ownership.serve(client, self._call)
            stop_with = self.committer.check_failures()
            if stop_with is not None:
                self._begin_stop(stop_with)
            self.committer.finish_rewinds(client)
            if self._stop_mode is not None:
                self.state = "draining"
                in_flight = self.gate.in_flight()
                if self._stop_mode == "now" or in_flight == 0:
                    return
                if time.monotonic() >= self._stop_deadline:
                    self._stop_error = self._stop_error or DrainTimeoutError(
                        f"drain of {self.name} timed out with {in_flight} records in flight; they were not "
                        "committed and will be delivered again")
                    return
            else:
                if self._emit_burst(observer):
                    if time.monotonic() - self._last_poll >= self.settings.keepalive_interval:
                        self._keepalive(client)
                    self.committer.maybe_commit(client)
                    continue
                if self._ready_to_poll():
                    self._poll_window(client)
                    self._check_assignment(client)
                    self._measure(client)
                    self.committer.maybe_commit(client)
                    continue
                self._check_assignment(client)
            self._measure(client)
            self.committer.maybe_commit(client, batch_done=not self._buffered and self.gate.in_flight() == 0)
            self._wait(client)

    # -- emission -----------------------------------------------------------------------------------------
    def _emit_burst(self, observer: abc.ObserverBase[Any]) -> bool:
        """Emit up to ``_BURST`` buffered records (``_BATCH_BURST`` in batches), round-robin over partitions,
        within the window and the demand (both are read once: settles and requests made meanwhile only add
        room)."""
        if not self._ring:
            return False
        batches = self.settings.batches
        allowed = min(_BATCH_BURST if batches else _BURST, self.settings.max_in_flight - self.gate.in_flight())
        if self._manual:
            with self._lock:
                allowed = min(allowed, self._demand)
        emitted = self._emit_batches(observer, allowed) if batches else self._emit_records(observer, allowed)
        if emitted:
            self._records_in += emitted
            self._idle_since = None
            if self._manual:
                with self._lock:
                    self._demand -= emitted
        return emitted > 0

    def _next_run(self, limit: int) -> tuple[TopicPartition, int, list[Record]]:
        """The partition whose turn it is, the epoch its records were fetched under, and up to ``limit`` of
        its buffered records (taken out of the buffer; the partition goes to the back of the ring)."""
        tp = self._ring.popleft()
        epoch, records = self._buffers[tp]
        popleft = records.popleft
        run = [popleft()] if limit == 1 else [popleft() for _ in range(min(limit, len(records)))]
        self._buffered -= len(run)
        if records:
            self._ring.append(tp)
        else:
            del self._buffers[tp]
        return tp, epoch, run

    def _emit_records(self, observer: abc.ObserverBase[Envelope[bytes | None]], allowed: int) -> int:
        emitted = 0
        ring, halted = self._ring, self.committer.halted
        while emitted < allowed and ring:
            tp, epoch, (record,) = self._next_run(1)
            if halted(tp):
                continue  # rewinding: it will be fetched again
            ticket_epoch = self.gate.emit(tp, record.offset, epoch)
            if ticket_epoch is None:
                continue  # revoked or rewound since the poll: it will be fetched again
            emitted += 1
            self._emit(observer, tp, ticket_epoch, record)
        return emitted

    def _emit_batches(self, observer: abc.ObserverBase[Batch[bytes | None]], allowed: int) -> int:
        """Like :meth:`_emit_records`, a partition's buffered records at a time, each run as one batch."""
        emitted = 0
        ring, halted = self._ring, self.committer.halted
        while emitted < allowed and ring:
            tp, epoch, run = self._next_run(allowed - emitted)
            take = len(run)
            if halted(tp):
                continue
            first = run[0].offset
            ticket_epoch = self.gate.emit(tp, first, epoch, last=run[-1].offset, records=take)
            if ticket_epoch is None:
                continue
            emitted += take
            if tracing.ACTIVE:
                for record in run:
                    tracing.record_started(record)
            ticket = self.committer.ticket(tp, ticket_epoch, first, self.metrics.incr)
            try:
                observer.on_next(Batch([record.value for record in run], run, ticket))
            except Exception as exc:  # as in _emit: nack, never kill the source
                log.warning("downstream raised on a batch of %d from %s/%d@%d: %r", take, tp.topic, tp.partition,
                            first, exc)
                ticket.nack(exc)
        return emitted

    def _emit(self, observer: abc.ObserverBase[Envelope[bytes | None]], tp: TopicPartition, epoch: int,
              record: Record) -> None:
        meta = RecordMetadata.of(record)
        if tracing.ACTIVE:
            tracing.record_started(record)
        ticket = self.committer.ticket(tp, epoch, record.offset, self.metrics.incr)
        try:
            observer.on_next(Envelope(record.value, meta, ticket))
        except Exception as exc:  # a downstream observer without its own isolation: nack, never kill the source
            log.warning("downstream raised on %s: %r", meta, exc)
            ticket.nack(exc)

    # -- polling ------------------------------------------------------------------------------------------
    def _ready_to_poll(self) -> bool:
        if self._buffered:
            return False
        if self._manual:
            with self._lock:
                if self._demand <= 0:
                    return False
        in_flight = self.gate.in_flight()
        return in_flight < self.settings.max_in_flight if self.settings.prefetch else in_flight == 0

    def _poll_window(self, client: ConsumerClient) -> None:
        """Fill the window from the assigned partitions: poll again (without waiting) while some active
        partition has nothing buffered yet, so a window is not one partition's fetch. (Pausing partitions that
        already have records, to make the client hand out the others, stalls kafka-python 3.0 fetches across
        rebalances; small per-partition fetches, ``max_partition_fetch_bytes``, do the balancing instead.)"""
        assigned = self._call("assignment", client.assignment)
        held = self.committer.held()
        active = [tp for tp in assigned if tp not in held]
        paused = self._call("paused", client.paused)
        to_pause = [tp for tp in assigned if tp in held and tp not in paused]
        if to_pause:
            self._call("pause", client.pause, to_pause)
        to_resume = [tp for tp in active if tp in paused]
        if to_resume:
            self._call("resume", client.resume, to_resume)
        room = self.settings.max_in_flight - self.gate.in_flight() - self._buffered
        timeout = self.settings.poll_timeout
        fetched = False
        for _ in range(len(active) + 1):
            if room <= 0:
                break
            limit = max(1, min(room, self.consumer_settings.max_poll_records))
            records = self._call("poll", client.poll, timeout, limit)
            self._last_poll = time.monotonic()
            self.metrics.incr("polls")
            timeout = 0.0
            if not records:
                break
            fetched = True
            room -= self._add(records)
            if all(tp in self._buffers for tp in active):
                break
        if fetched:
            self._starving_since = None
        else:
            self.metrics.incr("empty_polls")
            if self._starving_since is None and any(self._unfetched.get(tp, 0) > 0 for tp in active):
                self._starving_since = time.monotonic()

    def _add(self, records: dict[TopicPartition, list[Record]]) -> int:
        added = 0
        for tp, recs in records.items():
            if not recs:
                continue
            epoch = self.gate.epoch(tp)
            if epoch is None:  # records before the assignment callback (manual assignment): track it now
                epoch = self.gate.assign(tp)
            current = self._buffers.get(tp)
            if current is None or current[0] != epoch:
                if current is not None:
                    self._buffered -= len(current[1])
                else:
                    self._ring.append(tp)
                self._buffers[tp] = (epoch, deque(recs))
            else:
                current[1].extend(recs)
            self.committer.started_at(tp, recs[0].offset)
            added += len(recs)
        self._buffered += added
        if added and self.state != "running":
            self.state = "running"
        return added

    def _clear_buffers(self) -> None:
        self._buffers.clear()
        self._ring.clear()
        self._buffered = 0

    def _keepalive(self, client: ConsumerClient) -> None:
        """A poll that fetches (almost) nothing and keeps the member in the group while downstream is busy."""
        records = self._call("keepalive", client.keepalive)
        self._last_poll = time.monotonic()
        self.metrics.incr("keepalive_polls")
        if records:  # e.g. newly assigned partitions that were not paused yet: keep them, in order
            self._add(records)

    def _wait(self, client: ConsumerClient) -> None:
        timeout = self.settings.keepalive_interval
        resume = self.committer.next_resume()
        if resume is not None:
            timeout = min(timeout, max(0.0, resume - time.monotonic()))
        if self.gate.to_commit():
            timeout = min(timeout, self.settings.commit_interval)
        if self._stop_mode is not None:
            timeout = min(timeout, max(0.0, self._stop_deadline - time.monotonic()))
        self._sleeping = True
        try:
            if self.gate.changes == self._seen_changes:  # nothing happened since this turn began
                self._wake.wait(timeout)
        finally:
            self._sleeping = False
        if time.monotonic() - self._last_poll >= self.settings.keepalive_interval:
            self._keepalive(client)

    # -- liveness, lag and idleness -----------------------------------------------------------------------
    def _check_assignment(self, client: ConsumerClient) -> None:
        """Liveness: replace a consumer that fetches nothing while records wait, or that never got partitions
        although the group has room for it."""
        now = time.monotonic()
        if self._starving_since is not None and now - self._starving_since >= self.settings.stuck_timeout:
            waiting = {f"{tp.topic}/{tp.partition}": n for tp, n in sorted(self._unfetched.items()) if n}
            raise _Replace(f"polls returned nothing for {now - self._starving_since:.0f}s although records wait "
                           f"to be fetched ({waiting})")
        if self.gate.assigned() or now - self._subscribed_at < self.settings.assignment_timeout:
            return
        partitions = sum(self._partitions.values())
        members = self._group_size(client)
        if members is not None and members >= partitions:
            self._subscribed_at = now  # a full group: an idle member is right; look again later
            return
        raise _Replace(f"no partition assigned after {self.settings.assignment_timeout:g}s although the topic has "
                       f"{partitions} partitions and the group {members if members is not None else 'unknown'} "
                       "members")

    def _group_size(self, client: ConsumerClient) -> int | None:
        try:
            size = self._call("group_size", client.group_size, 5.0)
            return None if size is None else int(size)
        except _Replace:
            raise
        except Exception as exc:
            log.info("%s: could not describe the group: %r", self.name, exc)
            return None

    def _measure(self, client: ConsumerClient, force: bool = False) -> None:
        """Lag, backlog and what is left to fetch, from the broker's end offsets (every ``lag_interval``)."""
        now = time.monotonic()
        if not force and now - self._measured_at < self.settings.lag_interval:
            return
        self._measured_at = now
        every = [TopicPartition(t, p) for t, n in self._partitions.items() for p in range(n)]
        try:
            ends = self._call("end_offsets", client.end_offsets, every, 5.0)
            assigned = [tp for tp in self._call("assignment", client.assignment) if tp in ends]
            positions = {tp: self._call("position", client.position, tp) for tp in assigned}
            # where the group stands on partitions of other members, and on ours before the first fetch
            unknown = [tp for tp in every if tp not in assigned or positions.get(tp) is None]
            committed = self._call("committed", client.committed, unknown, 5.0) if unknown else {}
            starts = self._starts(client, [tp for tp in unknown if committed.get(tp) is None])
        except _Replace:
            raise
        except Exception as exc:
            log.info("%s: could not measure lag: %r", self.name, exc)
            self._unfetched = {}  # unknown, not "records wait": no consumer is replaced on stale figures
            self._starving_since = None
            return
        group = {tp: committed[tp] if committed.get(tp) is not None else starts.get(tp, ends[tp])
                 for tp in unknown if tp in ends}
        marks = self.gate.watermarks()  # before the first fetch: a start position given on assignment, if any
        for tp in assigned:
            if positions[tp] is None:
                mark = marks.get(tp)
                positions[tp] = mark if mark is not None else group[tp]
        self._unfetched = {tp: max(0, ends[tp] - positions[tp]) for tp in assigned}
        self._lag = {tp: max(0, ends[tp] - self._next_offset(tp, positions[tp], ends[tp])) for tp in assigned}
        self._backlog = sum(self._lag.values()) + sum(max(0, ends[tp] - group[tp]) for tp in every
                                                      if tp not in self._lag and tp in group)
        if not any(self._unfetched.values()):
            self._starving_since = None
        idle = self._backlog == 0 and not self._buffered and self.gate.in_flight() == 0
        if not idle:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now

    def _starts(self, client: ConsumerClient, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Where a partition without a commit starts: its beginning (``auto_offset_reset="earliest"``) or its
        end ("latest", i.e. nothing to do)."""
        if not tps or self.consumer_settings.auto_offset_reset != "earliest":
            return {}
        return dict(self._call("beginning_offsets", client.beginning_offsets, tps, 5.0))

    def _next_offset(self, tp: TopicPartition, position: int, end: int) -> int:
        """The first offset of ``tp`` this source has not finished: in flight (or failed), buffered, or the
        fetch position."""
        if self.gate.in_flight([tp]) or self.gate.failed:
            mark = self.gate.watermarks().get(tp)
            if mark is not None:
                return mark
        buffered = self._buffers.get(tp)
        if buffered and buffered[1]:
            return int(buffered[1][0].offset)
        return position

    # -- stopping -----------------------------------------------------------------------------------------
    def _begin_stop(self, error: BaseException) -> None:
        with self._lock:
            if self._stop_error is None:
                self._stop_error = error
            if self._stop_mode is None:
                self._stop_mode = "drain"
                self._stop_deadline = time.monotonic() + self.settings.drain_timeout
        self._clear_buffers()

    def _close(self, error: BaseException | None) -> BaseException | None:
        """Commit what is done, note what is left for the next run, close the consumer: each step bounded."""
        client = self._client
        if client is None:
            return error
        if self._stuck is None and self._subscribed_at:
            try:
                self.committer.maybe_commit(client, force=True, strict=True)
            except GroupMovedOnError as exc:  # the next owner starts from the last accepted commit
                log.warning("final commit of %s refused, the group moved on (%s); what it did not cover is "
                            "delivered again", self.name, exc)
            except Exception as exc:
                log.warning("final commit of %s failed: %r", self.name, exc)
                error = error or exc
            try:
                every = [TopicPartition(t, p) for t, n in self._partitions.items() for p in range(n)]
                ends = self._call("end_offsets", client.end_offsets, every, 5.0)
                committed = self._call("committed", client.committed, every, 5.0)
                self.left_behind = sum(max(0, ends[tp] - (committed.get(tp) or 0)) for tp in every if tp in ends)
            except Exception as exc:
                log.info("%s: could not read what is left: %r", self.name, exc)
        try:
            client.close(timeout=5.0)
        except Exception as exc:
            log.warning("closing the consumer of %s failed: %r", self.name, exc)
        return error
