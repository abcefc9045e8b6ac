"""The confluent-kafka producer behind rxcqrs' client seam: ``send`` hands a record to librdkafka, whose
delivery reports run on a small poller thread owned by :class:`ConfluentProducer`."""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import Any

from rxcqrs.exceptions import DeliveryError
from rxcqrs.kafka.client import Delivered
from rxcqrs.kafka.confluent import started
from rxcqrs.kafka.settings import ProducerSettings

__all__ = ["ConfluentProducer"]

log = logging.getLogger(__name__)


def _report(on_done: Delivered, wrap: type[BaseException], error: Any, _message: Any) -> None:
    """librdkafka's delivery report ``(error, message)`` as ``on_done(None)`` or ``on_done(exception)``."""
    on_done(None if error is None else wrap(error))


class ConfluentProducer:
    backend = "confluent"

    def __init__(self, producer: Any, description: str = "confluent-kafka producer") -> None:
        from confluent_kafka import KafkaException

        self._producer = producer
        self._exception = KafkaException  # imported once: ``send`` is on every record's path
        self.description = description
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._serve, name="rxcqrs-confluent-delivery", daemon=True)
        self._poller.start()

    @classmethod
    def create(cls, settings: ProducerSettings) -> "ConfluentProducer":
        from confluent_kafka import Producer

        producer = started(Producer, settings.to_confluent(), settings.bootstrap_timeout_ms, lambda why: DeliveryError(
            f"cannot create a Kafka producer for {settings.bootstrap_servers}: {why}"))
        return cls(producer, f"confluent-kafka producer at {settings.bootstrap_servers}")

    def _serve(self) -> None:
        """Delivery reports are served by ``poll``: one thread does it, so they never run on a caller."""
        while not self._closed.is_set():
            self._producer.poll(0.1)

    def send(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]] | None,
             partition: int | None, timestamp_ms: int | None, on_done: Delivered) -> None:
        KafkaException = self._exception  # noqa: N806 (the class, under its own name)
        report = partial(_report, on_done, KafkaException)  # one object per record (a closure costs four)
        if headers or partition is not None or timestamp_ms is not None:
            options: dict[str, Any] = {}
            if headers:
                options["headers"] = headers
            if partition is not None:
                options["partition"] = partition
            if timestamp_ms is not None:
                options["timestamp"] = timestamp_ms
        else:  # the common case: no optional field, no dict, one attempt
            try:
                self._producer.produce(topic, value, key, on_delivery=report)
                return
            except BufferError:
                options = {}
            except KafkaException as exc:
                on_done(exc)
                return
        produce = self._producer.produce
        for _ in range(600):  # a full local queue drains as deliveries complete: wait up to ~60 s for room
            try:
                produce(topic, value, key, on_delivery=report, **options)
                return
            except BufferError:
                self._producer.flush(0.1)
            except KafkaException as exc:
                on_done(exc)
                return
        on_done(DeliveryError(f"the producer's queue stayed full for 60 s; could not send to {topic}"))

    def topic_exists(self, topic: str, timeout: float) -> bool:
        found = self._producer.list_topics(topic, timeout=timeout).topics.get(topic)
        return found is not None and found.error is None and bool(found.partitions)

    def flush(self, timeout: float | None = None) -> None:
        left = self._producer.flush(-1 if timeout is None else timeout)
        if left:
            raise DeliveryError(f"{left} records were still undelivered when flush timed out")

    def close(self, timeout: float | None = None) -> None:
        try:
            self.flush(timeout)
        finally:
            self._closed.set()
            self._poller.join(1.0)
