"""KafkaSource: Kafka polls as a pull-based (backpressured) observable of envelopes with gated commits.

One poll thread owns the ``KafkaConsumer``; nothing else touches it. The thread emits the records of a
poll one at a time, only while there is demand and room in the window, and polls again only when every
record of the previous poll was settled by every branch (unless ``prefetch``). While it waits it pauses
its partitions and keeps polling, so a stalled downstream never costs the group membership. Commits are
the gate's watermarks (never past a record that is not done), in batches, always from the poll thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from functools import partial
from typing import Any, Callable, Iterable, Literal, Protocol, Sequence

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from rxcqrs.acks import Ticket
from rxcqrs.commit import CommitGate, Failure
from rxcqrs.exceptions import CommitError, FlowError, RetriesExhaustedError
from rxcqrs.kafka.settings import ConsumerSettings, SourceSettings
from rxcqrs.messages import Envelope, RecordMetadata, TopicPartition
from rxcqrs.metrics import Metrics

__all__ = ["KafkaSource", "ConsumerLike"]

log = logging.getLogger(__name__)


class ConsumerLike(Protocol):
    """The subset of ``kafka.KafkaConsumer`` a source uses (the in-memory fake implements the same)."""

    def subscribe(self, topics: Sequence[str], listener: Any = None) -> None: ...
    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]: ...
    def pause(self, *partitions: Any) -> None: ...
    def resume(self, *partitions: Any) -> None: ...
    def paused(self) -> set[Any]: ...
    def assignment(self) -> set[Any]: ...
    def seek(self, partition: Any, offset: int) -> None: ...
    def commit(self, offsets: Any = None, timeout_ms: int | None = None) -> None: ...
    def commit_async(self, offsets: Any = None, callback: Any = None) -> Any: ...
    def highwater(self, partition: Any) -> int | None: ...
    def close(self) -> None: ...


def _kafka_consumer(config: dict[str, Any]) -> ConsumerLike:
    from kafka import KafkaConsumer

    return KafkaConsumer(**config)


def _offsets(offsets: dict[TopicPartition, int]) -> dict[Any, Any]:
    from kafka import TopicPartition as KafkaTP
    from kafka.structs import OffsetAndMetadata

    return {KafkaTP(tp.topic, tp.partition): OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}


def _kafka_tps(tps: Iterable[TopicPartition]) -> list[Any]:
    from kafka import TopicPartition as KafkaTP

    return [KafkaTP(tp.topic, tp.partition) for tp in tps]


def _tp(kafka_tp: Any) -> TopicPartition:
    return TopicPartition(kafka_tp.topic, kafka_tp.partition)


class KafkaSource:
    """Polls ``topics`` in consumer group ``consumer.group_id`` and emits ``Envelope[bytes]`` on demand.

    ``demand="auto"`` (default) emits whenever the window has room; ``demand="manual"`` emits only what
    :meth:`request` asked for (the controlled subject of RxPY 1). Subscribe once (broadcast for fan-out).
    """

    def __init__(self, topics: str | Sequence[str], consumer: ConsumerSettings,
                 settings: SourceSettings | None = None, *, demand: Literal["auto", "manual"] = "auto",
                 consumer_factory: Callable[[dict[str, Any]], ConsumerLike] = _kafka_consumer,
                 name: str | None = None) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise FlowError("a KafkaSource needs at least one topic")
        self.consumer_settings = consumer
        self.settings = settings or SourceSettings()
        self.name = name or f"{consumer.group_id}:{','.join(self.topics)}"
        self.metrics = Metrics()
        self._factory = consumer_factory
        self._manual = demand == "manual"
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._demand = 0
        self._subscribed = False
        self._stop_mode: Literal["drain", "now"] | None = None
        self._stop_error: Exception | None = None
        self._stop_deadline = float("inf")
        self.gate = CommitGate(on_change=self._wake.set)
        self._batch: deque[tuple[Any, int]] = deque()
        self._halted: dict[TopicPartition, float] = {}  # rewinding: wait for in-flight, then seek and back off
        self._resume_at: dict[TopicPartition, float] = {}
        self._rewinds: dict[TopicPartition, tuple[int, int]] = {}  # tp -> (failed offset, attempts)
        self._last_poll = 0.0
        self._last_commit = time.monotonic()
        self._lag: dict[TopicPartition, int] = {}
        self._thread: threading.Thread | None = None
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.metrics.gauge("in_flight", self.gate.in_flight)
        self._committed: dict[TopicPartition, int] = {}  # last commit per partition, kept after a revoke
        self.metrics.gauge("committed", lambda: {f"{tp.topic}/{tp.partition}": off
                                                 for tp, off in sorted(self._committed.items())})
        self.metrics.gauge("lag", lambda: sum(self._lag.values()))
        self.observable: Observable[Envelope[bytes | None]] = reactivex.create(self._subscribe)

    # -- public control -----------------------------------------------------------------------------------
    def pipe(self, *operators: Callable[[Any], Any]) -> Any:
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
        self._wake.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the poll thread has finished; True if it did."""
        return self.done.wait(timeout)

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
        consumer: ConsumerLike | None = None
        error: Exception | None = None
        try:
            consumer = self._connect()
            self._loop(consumer, observer)
            error = self._stop_error
        except Exception as exc:
            error = exc
            log.exception("source %s failed", self.name)
        finally:
            if consumer is not None:
                try:
                    self._commit(consumer, force=True, strict=True)
                except Exception as exc:
                    log.warning("final commit of %s failed: %r", self.name, exc)
                    error = error or exc
                try:
                    consumer.close()
                except Exception as exc:
                    log.warning("closing the consumer of %s failed: %r", self.name, exc)
            self.error = error
            self.done.set()
            if error is None:
                observer.on_completed()
            else:
                observer.on_error(error)

    def _connect(self) -> ConsumerLike:
        config = self.consumer_settings.to_kafka()
        try:
            consumer = self._factory(config)
        except Exception as exc:
            raise FlowError(f"cannot create a Kafka consumer for {self.consumer_settings.bootstrap_servers} "
                            f"(group {self.consumer_settings.group_id}): {exc!r}") from exc
        consumer.subscribe(self.topics, listener=_listener(self, consumer))
        return consumer

    def _loop(self, consumer: ConsumerLike, observer: abc.ObserverBase[Envelope[bytes | None]]) -> None:
        while True:
            self._wake.clear()
            self._handle_failures()
            self._finish_rewinds(consumer)
            if self._stop_mode is not None:
                if self._stop_mode == "now" or self.gate.in_flight() == 0:
                    return
                if time.monotonic() >= self._stop_deadline:
                    self._stop_error = self._stop_error or FlowError(
                        f"drain of {self.name} timed out with {self.gate.in_flight()} records in flight; "
                        "they will be redelivered")
                    return
            elif self._emit_one(observer):
                if time.monotonic() - self._last_poll >= self.settings.keepalive_interval:
                    self._keepalive(consumer)
                self._commit(consumer)
                continue
            elif self._ready_to_poll():
                self._poll(consumer)
                self._commit(consumer)
                continue
            self._commit(consumer)
            self._wait(consumer)

    def _emit_one(self, observer: abc.ObserverBase[Envelope[bytes | None]]) -> bool:
        while self._batch:
            if self.gate.in_flight() >= self.settings.max_in_flight:
                return False
            if self._manual:
                with self._lock:
                    if self._demand <= 0:
                        return False
            record, epoch = self._batch[0]
            tp = TopicPartition(record.topic, record.partition)
            if self.gate.epoch(tp) != epoch or tp in self._halted:
                self._batch.popleft()  # revoked or rewound since the poll: it will be fetched again
                continue
            self._batch.popleft()
            if self._manual:
                with self._lock:
                    self._demand -= 1
            self._emit(observer, tp, epoch, record)
            return True
        return False

    def _emit(self, observer: abc.ObserverBase[Envelope[bytes | None]], tp: TopicPartition, epoch: int,
              record: Any) -> None:
        self.gate.emit(tp, record.offset)
        meta = RecordMetadata(record.topic, record.partition, record.offset, record.timestamp,
                              getattr(record, "timestamp_type", 0) or 0, record.key,
                              tuple((k, v) for k, v in (record.headers or ())))
        ticket = Ticket(partial(self._settled, tp, epoch, record.offset), self.metrics.incr)
        self.metrics.incr("records_in")
        try:
            observer.on_next(Envelope(record.value, meta, ticket))
        except Exception as exc:  # a downstream observer without its own isolation: nack, never kill the source
            log.warning("downstream raised on %s: %r", meta, exc)
            ticket.nack(exc)

    def _settled(self, tp: TopicPartition, epoch: int, offset: int, error: BaseException | None) -> None:
        if self.gate.settle(tp, epoch, offset, error):
            self.metrics.incr("acked" if error is None else "nacked")
        else:
            self.metrics.incr("stale_settles")

    def _ready_to_poll(self) -> bool:
        if self._batch:
            return False
        if self._manual:
            with self._lock:
                if self._demand <= 0:
                    return False
        in_flight = self.gate.in_flight()
        return in_flight < self.settings.max_in_flight if self.settings.prefetch else in_flight == 0

    def _pollable(self, consumer: ConsumerLike) -> tuple[list[Any], list[Any]]:
        now = time.monotonic()
        for tp, at in list(self._resume_at.items()):
            if at <= now:
                del self._resume_at[tp]
        assigned = consumer.assignment()
        active = [tp for tp in assigned if _tp(tp) not in self._halted and _tp(tp) not in self._resume_at]
        held = [tp for tp in assigned if _tp(tp) in self._halted or _tp(tp) in self._resume_at]
        return active, held

    def _poll(self, consumer: ConsumerLike) -> None:
        active, held = self._pollable(consumer)
        paused = consumer.paused()
        to_resume = [tp for tp in active if tp in paused]
        if to_resume:
            consumer.resume(*to_resume)
        to_pause = [tp for tp in held if tp not in paused]
        if to_pause:
            consumer.pause(*to_pause)
        room = self.settings.max_in_flight - self.gate.in_flight()
        max_records = max(1, min(self.consumer_settings.max_poll_records, room))
        records = consumer.poll(timeout_ms=int(self.settings.poll_timeout * 1000), max_records=max_records)
        self._last_poll = time.monotonic()
        self.metrics.incr("polls")
        self._add_batch(records)
        self._update_lag(consumer)

    def _add_batch(self, records: dict[Any, list[Any]]) -> None:
        """Interleave the partitions round-robin, so per-partition ordered sinks can work on all of them."""
        if not records:
            self.metrics.incr("empty_polls")
            return
        queues = []
        for ktp, recs in records.items():
            tp = _tp(ktp)
            epoch = self.gate.epoch(tp)
            if epoch is None:  # records before the assignment callback (manual assignment): track it now
                epoch = self.gate.assign(tp)
            queues.append(deque((r, epoch) for r in recs))
        while queues:
            for queue in list(queues):
                self._batch.append(queue.popleft())
                if not queue:
                    queues.remove(queue)

    def _update_lag(self, consumer: ConsumerLike) -> None:
        marks = self.gate.watermarks()
        lag = {}
        for ktp in consumer.assignment():
            high = consumer.highwater(ktp)
            mark = marks.get(_tp(ktp))
            if high is not None and mark is not None:
                lag[_tp(ktp)] = max(0, high - mark)
        self._lag = lag

    def _keepalive(self, consumer: ConsumerLike) -> None:
        """A poll with every partition paused: returns nothing, keeps the member in the group."""
        assigned = consumer.assignment()
        paused = consumer.paused()
        to_pause = [tp for tp in assigned if tp not in paused]
        if to_pause:
            consumer.pause(*to_pause)
        records = consumer.poll(timeout_ms=0, max_records=1)
        self._last_poll = time.monotonic()
        self.metrics.incr("keepalive_polls")
        if records:  # only newly assigned, not yet paused partitions can return data: keep it, in order
            self._add_batch(records)

    def _wait(self, consumer: ConsumerLike) -> None:
        timeout = self.settings.keepalive_interval
        if self._resume_at:
            timeout = min(timeout, max(0.0, min(self._resume_at.values()) - time.monotonic()))
        if self.gate.to_commit():
            timeout = min(timeout, self.settings.commit_interval)
        self._wake.wait(timeout)
        if time.monotonic() - self._last_poll >= self.settings.keepalive_interval:
            self._keepalive(consumer)

    # -- commits ------------------------------------------------------------------------------------------
    def _commit(self, consumer: ConsumerLike, force: bool = False, strict: bool = False) -> None:
        """Commit the gate's watermarks when due (count, time, end of a poll batch) or when ``force``d."""
        now = time.monotonic()
        due = (force or self.gate.done_since_commit() >= self.settings.commit_every
               or now - self._last_commit >= self.settings.commit_interval
               or (not self._batch and self.gate.in_flight() == 0))  # the end of a poll batch
        if not due:
            return
        offsets = self.gate.to_commit()
        if not offsets:
            return
        try:
            consumer.commit(_offsets(offsets), timeout_ms=10_000)
        except Exception as exc:
            self.metrics.incr("commit_failures")
            if strict:
                raise CommitError(f"commit of {offsets} failed: {exc!r}") from exc
            log.warning("commit of %s failed (will retry): %r", offsets, exc)
            self._last_commit = now
            return
        self._committed_now(offsets)
        self._last_commit = now

    def _committed_now(self, offsets: dict[TopicPartition, int]) -> None:
        self.gate.mark_committed(offsets)
        self._committed.update(offsets)
        self.metrics.incr("commits")

    # -- failures -----------------------------------------------------------------------------------------
    def _begin_stop(self, error: Exception) -> None:
        with self._lock:
            if self._stop_error is None:
                self._stop_error = error
            if self._stop_mode is None:
                self._stop_mode = "drain"
                self._stop_deadline = time.monotonic() + self.settings.drain_timeout
        self._batch.clear()

    def _handle_failures(self) -> None:
        if not self.gate.failed:
            return
        for failure in self.gate.failures():
            if failure.tp in self._halted or self._stop_error is not None:
                continue
            if self.settings.failure_policy == "stop":
                self._begin_stop(_failed(failure))
                return
            last_offset, attempts = self._rewinds.get(failure.tp, (-1, -1))
            attempts = attempts + 1 if last_offset == failure.offset else 0
            delay = self.settings.backoff.delay(attempts)
            if delay is None:
                exhausted = RetriesExhaustedError(
                    f"{failure.tp.topic}/{failure.tp.partition}@{failure.offset} kept failing after {attempts} "
                    f"rewinds: {failure.error!r}")
                exhausted.__cause__ = failure.error
                self._begin_stop(exhausted)
                return
            self._rewinds[failure.tp] = (failure.offset, attempts)
            self._halted[failure.tp] = delay
            self.metrics.incr("rewinds")
            log.warning("rewinding %s to before offset %d in %.2fs (attempt %d): %r", failure.tp, failure.offset,
                        delay, attempts + 1, failure.error)

    def _finish_rewinds(self, consumer: ConsumerLike) -> None:
        for tp, delay in list(self._halted.items()):
            if self.gate.in_flight([tp]) > 0:
                continue
            del self._halted[tp]
            position = self.gate.rewind(tp)
            self._commit(consumer, force=True)
            if position is not None and tp in {_tp(k) for k in consumer.assignment()}:
                consumer.seek(_kafka_tps([tp])[0], position)
            self._resume_at[tp] = time.monotonic() + delay


def _failed(failure: Failure) -> FlowError:
    error = FlowError(f"record {failure.tp.topic}/{failure.tp.partition}@{failure.offset} failed: "
                      f"{failure.error!r}; nothing at or after it was committed")
    error.__cause__ = failure.error
    return error


def _listener(source: KafkaSource, consumer: ConsumerLike) -> Any:
    """A rebalance listener. kafka-python 3 runs it on its IO thread, where blocking consumer calls raise:
    it is async, awaits ``commit_async``, and only touches the thread-safe gate."""
    from kafka import ConsumerRebalanceListener  # noqa: F401  (ensures kafka-python 3 is importable)
    from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener

    class Listener(AsyncConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked: Any) -> None:
            tps = [_tp(k) for k in revoked]
            if not tps:
                return
            # give in-flight records of these partitions a moment to settle, so their commits count (not when
            # the source is being stopped without draining: then they are left to be redelivered)
            settled = source._stop_mode == "now" or source.gate.wait_settled(
                tps, source.settings.revoke_settle_timeout)
            offsets = source.gate.revoke(tps)
            source.metrics.incr("revoked", len(tps))
            log.info("%s: revoked %s (settled: %s), committing %s", source.name, tps, settled, offsets)
            if offsets:
                try:
                    await consumer.commit_async(_offsets(offsets))
                    source._committed_now(offsets)
                except Exception as exc:  # the group moved on: those records will be redelivered
                    source.metrics.incr("commit_failures")
                    log.warning("%s: commit on revoke failed: %r", source.name, exc)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            for ktp in assigned:
                source.gate.assign(_tp(ktp))
            source.metrics.incr("assigned", len(assigned))
            log.info("%s: assigned %s", source.name, sorted(_tp(k) for k in assigned))

        async def on_partitions_lost(self, lost: Any) -> None:
            source.gate.revoke([_tp(k) for k in lost])
            source.metrics.incr("lost", len(lost))

    return Listener()
