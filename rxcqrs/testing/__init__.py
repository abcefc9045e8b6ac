"""Test helpers shipped with rxcqrs: in-memory Kafka and Cassandra fakes, and waiting on conditions."""

from rxcqrs.testing.fake_kafka import FakeBroker, FakeConsumer, FakeProducer, FakeRecord
from rxcqrs.testing.wait import wait_until

__all__ = ["FakeBroker", "FakeConsumer", "FakeProducer", "FakeRecord", "wait_until"]
