"""KafkaSink: an observer that sends each item with a producer, asynchronously, and acks it on delivery.

Retriable errors (timeouts, not enough replicas, leader changes, ...) are retried with the shared
exponential backoff until its delay reaches the maximum; a non-retriable error ends the sink with a clear,
permanent :class:`DeliveryError` (every later item is nacked with it). A topic is checked once, before its
first record: a missing one is a :class:`TopicNotFoundError` at once (rxcqrs never auto-creates topics).
Completion waits for every send, so nothing is lost on shutdown. With envelopes, a Kafka-to-Kafka flow is
at-least-once too. A :class:`~rxcqrs.messages.Batch` is sent record by record and acked once every one of
them was delivered. Threads: see :mod:`rxcqrs.kafka`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Union

from rxcqrs import tracing
from rxcqrs.acks import Ticket
from rxcqrs.backoff import Backoff
from rxcqrs.exceptions import ConfigError, DeliveryError, TopicNotFoundError
from rxcqrs.kafka.client import ProducerClient, is_retriable
from rxcqrs.kafka.settings import ProducerSettings
from rxcqrs.messages import Batch, Envelope, OutgoingRecord
from rxcqrs.sink import SinkBase
from rxcqrs.timers import call_later

__all__ = ["KafkaSink", "producer_client", "is_retriable"]

log = logging.getLogger(__name__)

Settles = Union[Envelope[Any], "_BatchShare"]  # what a send settles: its envelope, or its share of a batch


def producer_client(settings: ProducerSettings) -> ProducerClient:
    """A producer client of the settings' ``backend``; an unusable configuration is a clear error."""
    if settings.backend == "confluent":
        from rxcqrs.kafka.confluent_producer import ConfluentProducer

        return ConfluentProducer.create(settings)
    from rxcqrs.kafka.kafka_python import KafkaPythonProducer

    return KafkaPythonProducer.create(settings)


class KafkaSink(SinkBase):
    """Send ``OutgoingRecord``s (or bytes), plain or in envelopes, to ``topic`` (or each record's own topic).

    ``producer`` is a :class:`ProducerSettings` (the sink creates and closes its producer) or a producer
    client you own (:func:`producer_client`)."""

    takes_batches = True  # a Batch is sent record by record and settled once (see _send_batch)

    def __init__(self, topic: str | None = None, producer: ProducerSettings | ProducerClient | None = None, *,
                 backoff: Backoff | None = None, close_producer: bool | None = None, topic_timeout: float = 5.0,
                 producer_factory: Callable[[ProducerSettings], ProducerClient] = producer_client) -> None:
        super().__init__()
        owned = producer is None or isinstance(producer, ProducerSettings)
        if producer is None or isinstance(producer, ProducerSettings):
            producer = producer_factory(producer or ProducerSettings())
        self.producer: ProducerClient = producer
        self.topic = topic
        self.backoff = backoff or Backoff()
        self.topic_timeout = topic_timeout
        self._close_producer = owned if close_producer is None else close_producer
        self._known_topics: set[str] = set()
        self._topics_lock = threading.Lock()
        self.sent = 0
        self.retries = 0

    def on_next(self, item: Any) -> None:
        if type(item) is Batch:
            self._send_batch(item)
            return
        env = item if isinstance(item, Envelope) else None
        value = env.value if env is not None else item
        record = value if isinstance(value, OutgoingRecord) else OutgoingRecord(value)
        if tracing.ACTIVE and env is not None:
            record = tracing.traced(record, env.meta)
        topic = record.topic or self.topic
        error = self._refusal(topic)
        if error is not None:
            if env is None:
                raise error
            env.nack(error)
            return
        assert topic is not None  # refused above
        self._begin()
        self._send(env, record, topic, 0)

    def _send_batch(self, batch: Batch[Any]) -> None:
        """Every topic of ``batch`` is checked first (one that cannot be sent to nacks the batch and nothing is
        sent), then every record is sent; the batch is one request in flight until each record's outcome."""
        records = [v if isinstance(v, OutgoingRecord) else OutgoingRecord(v) for v in batch.values]
        if tracing.ACTIVE and batch.records:
            records = [tracing.traced(r, source) for r, source in zip(records, batch.records, strict=True)]
        default = self.topic
        for topic in {record.topic or default for record in records}:
            error = self._refusal(topic)
            if error is not None:
                batch.nack(error)
                return
        share = _BatchShare(self, batch.ticket, len(records))
        self._begin()
        for record in records:
            self._send(share, record, record.topic or default, 0)  # type: ignore[arg-type]  # checked above

    def _refusal(self, topic: str | None) -> BaseException | None:
        """Why a record cannot be sent to ``topic`` (``None``: it can)."""
        if topic is None:
            return ConfigError("KafkaSink has no topic: give the sink a topic or the record one")
        error = self.error  # a non-retriable failure ended this sink
        if error is None and topic not in self._known_topics:
            error = self._check_topic(topic)
        return error

    def _check_topic(self, topic: str) -> BaseException | None:
        """Once per topic (the caller looks it up in ``_known_topics`` first): does it exist? (A send to a
        missing topic would only time out, slowly.)"""
        with self._topics_lock:
            if topic in self._known_topics:
                return None
            try:
                exists = self.producer.topic_exists(topic, self.topic_timeout)
            except Exception as exc:
                return DeliveryError(f"cannot read the metadata of topic {topic!r} with the "
                                     f"{self.producer.description}: {exc!r}")
            if not exists:
                return TopicNotFoundError(f"Kafka topic {topic!r} does not exist (rxcqrs never creates topics "
                                          "implicitly): create it first, or check the topic name")
            self._known_topics.add(topic)
            return None

    def _send(self, env: Settles | None, record: OutgoingRecord, topic: str, attempt: int) -> None:
        self.producer.send(topic, record.value, record.key, list(record.headers) if record.headers else None,
                           record.partition, record.timestamp_ms, _Delivery(self, env, record, topic, attempt))

    def _delivered(self, env: Settles | None) -> None:
        if isinstance(env, _BatchShare):
            env.settle_one(None)
            return
        self.sent += 1
        if env is not None:
            env.ack()
        self._end()

    def _failed(self, env: Settles | None, record: OutgoingRecord, topic: str, attempt: int,
                exc: BaseException) -> None:
        if is_retriable(exc) and self.error is None:
            delay = self.backoff.delay(attempt)
            if delay is not None:
                self.retries += 1
                if env is not None:
                    env.count("retries")
                log.info("send to %s failed (%r); retry %d in %.2fs", topic, exc, attempt + 1, delay)
                call_later(delay, lambda: self._send(env, record, topic, attempt + 1))
                return
            error = DeliveryError(f"sending to {topic} failed after {attempt} retries (backoff reached its "
                                  f"maximum {self.backoff.max_delay}s): {exc!r}")
        else:
            error = DeliveryError(f"sending to {topic} failed with a non-retriable error: {exc!r}")
            error.permanent = True
            self._fail(error)
        error.__cause__ = exc
        log.error("%s", error)
        if isinstance(env, _BatchShare):
            env.settle_one(error)
            return
        if env is not None:
            env.nack(error)
        self._end()

    def close(self) -> None:
        try:
            self.producer.flush(None if self.upstream_error is None else self.abandon_timeout)
        finally:
            if self._close_producer:
                self.producer.close(None if self.upstream_error is None else self.abandon_timeout)


class _Delivery:
    """The outcome callback of one send: acks on delivery, retries or nacks on failure. A small object rather
    than a closure (which costs a cell per captured name): one is made per record, and fewer objects per
    record means fewer garbage collections on the poll thread."""

    __slots__ = ("sink", "env", "record", "topic", "attempt")

    def __init__(self, sink: KafkaSink, env: Settles | None, record: OutgoingRecord, topic: str,
                 attempt: int) -> None:
        self.sink, self.env, self.record, self.topic, self.attempt = sink, env, record, topic, attempt

    def __call__(self, error: BaseException | None) -> None:
        if error is None:
            self.sink._delivered(self.env)
        else:
            self.sink._failed(self.env, self.record, self.topic, self.attempt, error)


class _BatchShare:
    """The sends of one batch: the batch is acked once every record was delivered and nacked at the first
    record that failed for good; the sink counts it as one request until every record has its outcome."""

    __slots__ = ("sink", "ticket", "remaining", "delivered", "lock")

    def __init__(self, sink: KafkaSink, ticket: Ticket, n: int) -> None:
        self.sink, self.ticket, self.remaining, self.delivered = sink, ticket, n, 0
        self.lock = threading.Lock()

    def settle_one(self, error: BaseException | None) -> None:
        if error is not None:
            self.ticket.nack(error)
        with self.lock:
            self.remaining -= 1
            self.delivered += error is None
            last = self.remaining == 0
        if last:
            self.sink.sent += self.delivered
            self.ticket.ack()  # ignored when a record failed: a ticket settles once
            self.sink._end()

    def count(self, name: str, amount: int = 1) -> None:
        self.ticket.count(name, amount)
