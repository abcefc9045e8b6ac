"""Test helpers shipped with rxcqrs: in-memory Kafka and Cassandra fakes, and waiting on conditions.

The fakes speak kafka-python's API, so sources and sinks use them through the kafka-python adapter, the
same code path as the real client: ``KafkaSource(..., client_factory=fake_consumers(broker))`` and
``KafkaSink(topic, fake_producer(broker))``.
"""

from __future__ import annotations

from typing import Any, Callable

from rxcqrs.testing.fake_kafka import FakeBroker, FakeConsumer, FakeProducer, FakeRecord, UnknownTopicError
from rxcqrs.testing.virtual_clock import VirtualClock
from rxcqrs.testing.wait import wait_until

__all__ = ["FakeBroker", "FakeConsumer", "FakeProducer", "FakeRecord", "UnknownTopicError", "fake_consumers",
           "fake_producer", "wait_until", "VirtualClock"]


def fake_consumers(broker: FakeBroker, created: list[FakeConsumer] | None = None,
                   prepare: Callable[[FakeConsumer], None] = lambda _consumer: None) -> Callable[[Any], Any]:
    """A ``client_factory`` for :class:`~rxcqrs.kafka.KafkaSource` over ``broker``; every consumer it makes is
    appended to ``created`` (and passed to ``prepare`` first, to inject faults)."""
    from rxcqrs.kafka.kafka_python import KafkaPythonConsumer

    def make(settings: Any) -> Any:
        config = settings.to_kafka()
        consumer = FakeConsumer(broker, **config)
        prepare(consumer)
        if created is not None:
            created.append(consumer)
        return KafkaPythonConsumer(consumer, f"fake consumer of group {settings.group_id}", config)

    return make


def fake_producer(broker: FakeBroker) -> Any:
    """A producer client over ``broker`` for :class:`~rxcqrs.kafka.KafkaSink`."""
    from rxcqrs.kafka.kafka_python import KafkaPythonProducer

    return KafkaPythonProducer(FakeProducer(broker), "fake producer")
