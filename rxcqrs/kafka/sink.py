"""KafkaSink: an observer that sends each item with the producer, asynchronously, and acks it on delivery.

Retriable errors (``err.retriable``: timeouts, not enough replicas, leader changes, ...) are retried with
the shared exponential backoff until its delay reaches the maximum; a non-retriable error ends the sink
with a clear :class:`DeliveryError` (every later item is nacked with it). Completion waits for every
send, so nothing is lost on shutdown. With envelopes, a Kafka-to-Kafka flow is at-least-once too.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

from rxcqrs.backoff import Backoff
from rxcqrs.exceptions import ConfigError, DeliveryError
from rxcqrs.kafka.settings import ProducerSettings
from rxcqrs.messages import Envelope, OutgoingRecord
from rxcqrs.sink import SinkBase
from rxcqrs.timers import call_later

__all__ = ["KafkaSink", "ProducerLike", "create_producer", "is_retriable"]

log = logging.getLogger(__name__)


class ProducerLike(Protocol):
    def send(self, topic: str, value: Any = None, key: Any = None, headers: Any = None, partition: Any = None,
             timestamp_ms: Any = None) -> Any: ...
    def flush(self, timeout: float | None = None) -> None: ...
    def close(self, timeout: float | None = None) -> None: ...


def create_producer(settings: ProducerSettings) -> ProducerLike:
    """A ``KafkaProducer``; an unreachable bootstrap server is a clear :class:`DeliveryError`."""
    from kafka import KafkaProducer

    try:
        return KafkaProducer(**settings.to_kafka())
    except Exception as exc:
        raise DeliveryError(f"cannot create a Kafka producer for {settings.bootstrap_servers}: {exc!r}") from exc


def is_retriable(error: BaseException) -> bool:
    """kafka-python marks transient errors with ``retriable = True`` (KafkaTimeoutError included)."""
    return bool(getattr(error, "retriable", False))


class KafkaSink(SinkBase):
    """Send ``OutgoingRecord``s (or bytes), plain or in envelopes, to ``topic`` (or each record's own topic)."""

    def __init__(self, producer: ProducerLike | ProducerSettings | None = None, topic: str | None = None, *,
                 backoff: Backoff | None = None, close_producer: bool | None = None,
                 producer_factory: Callable[[ProducerSettings], ProducerLike] = create_producer) -> None:
        super().__init__()
        owned = producer is None or isinstance(producer, ProducerSettings)
        if producer is None or isinstance(producer, ProducerSettings):
            producer = producer_factory(producer or ProducerSettings())
        self.producer: ProducerLike = producer
        self.topic = topic
        self.backoff = backoff or Backoff()
        self._close_producer = owned if close_producer is None else close_producer
        self.sent = 0
        self.retries = 0

    def on_next(self, item: Any) -> None:
        env = item if isinstance(item, Envelope) else None
        value = env.value if env is not None else item
        record = value if isinstance(value, OutgoingRecord) else OutgoingRecord(value)
        topic = record.topic or self.topic
        if topic is None:
            error = ConfigError("KafkaSink has no topic: give the sink a topic or the record one")
            if env is None:
                raise error
            env.nack(error)
            return
        if self.error is not None:  # a non-retriable failure ended this sink
            if env is None:
                raise self.error
            env.nack(self.error)
            return
        self._begin()
        self._send(env, record, topic, 0)

    def _send(self, env: Envelope[Any] | None, record: OutgoingRecord, topic: str, attempt: int) -> None:
        try:
            future = self.producer.send(topic, value=record.value, key=record.key,
                                        headers=list(record.headers) or None, partition=record.partition,
                                        timestamp_ms=record.timestamp_ms)
        except Exception as exc:  # e.g. metadata not available within max_block_ms, record too large
            self._failed(env, record, topic, attempt, exc)
            return
        future.add_callback(self._delivered, env)
        future.add_errback(self._failed, env, record, topic, attempt)

    def _delivered(self, env: Envelope[Any] | None, _metadata: Any) -> None:
        self.sent += 1
        if env is not None:
            env.ack()
        self._end()

    def _failed(self, env: Envelope[Any] | None, record: OutgoingRecord, topic: str, attempt: int,
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
        error.__cause__ = exc
        log.error("%s", error)
        self._fail(error)
        if env is not None:
            env.nack(error)
        self._end()

    def close(self) -> None:
        try:
            self.producer.flush()
        finally:
            if self._close_producer:
                self.producer.close()
