"""Test helpers shipped with rxcqrs: in-memory Kafka fakes for fast unit tests and notebooks."""

from rxcqrs.testing.fake_kafka import FakeBroker, FakeConsumer, FakeProducer, FakeRecord

__all__ = ["FakeBroker", "FakeConsumer", "FakeProducer", "FakeRecord"]
