"""KafkaSink and dead-lettering on the in-memory fakes."""

from __future__ import annotations

import uuid

import pytest
import reactivex
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, NotEnoughReplicasError

from rxcqrs import run
from rxcqrs.acks import Ticket
from rxcqrs.backoff import Backoff
from rxcqrs.exceptions import ConfigError, DeliveryError, FlowError, PoisonRecordError, TopicNotFoundError, is_permanent
from rxcqrs.kafka import KafkaSink
from rxcqrs.messages import Envelope, OutgoingRecord, RecordMetadata, TopicPartition
from rxcqrs.operators import DeadLetters, decode
from rxcqrs.testing import FakeBroker, fake_producer
from tests.helpers import Collect, fake_source, wait_until

FAST = Backoff(0.005, 0.1, 0.0)


def tracked(value: object, results: list) -> Envelope:  # type: ignore[type-arg]
    return Envelope(value, RecordMetadata("src", 0, len(results), 0), Ticket(results.append))


def test_sends_in_order_acks_on_delivery_and_completion_flushes() -> None:
    broker = FakeBroker()
    broker.create_topic("out")
    producer = fake_producer(broker)
    sink = KafkaSink("out", producer, backoff=FAST)
    results: list = []
    items = [tracked(OutgoingRecord(f"v{i}".encode(), key=b"k"), results) for i in range(50)]
    reactivex.from_iterable(items).subscribe(sink)
    assert sink.completed.is_set() and sink.in_flight == 0
    assert results == [None] * 50
    assert [r.value for r in broker.records("out")] == [f"v{i}".encode() for i in range(50)]


def test_retriable_errors_are_retried_with_backoff_then_delivered() -> None:
    broker = FakeBroker()
    broker.create_topic("out")
    producer = fake_producer(broker)
    producer.client.failures = [KafkaTimeoutError("slow"), NotEnoughReplicasError("isr")]
    sink = KafkaSink("out", producer, backoff=FAST)
    results: list = []
    sink.on_next(tracked(b"x", results))
    sink.on_completed()
    assert results == [None] and sink.retries == 2
    assert [r.value for r in broker.records("out")] == [b"x"]


def test_retries_give_up_when_the_backoff_reaches_max() -> None:
    broker = FakeBroker()
    broker.create_topic("out")
    producer = fake_producer(broker)
    producer.client.failures = [KafkaTimeoutError("slow")] * 10
    sink = KafkaSink("out", producer, backoff=Backoff(0.005, 0.02, 0.0))
    results: list = []
    sink.on_next(tracked(b"x", results))
    sink.on_completed()
    assert isinstance(results[0], DeliveryError) and "after 2 retries" in str(results[0])


def test_a_non_retriable_error_ends_the_sink_with_a_clear_error() -> None:
    broker = FakeBroker()
    broker.create_topic("out")
    producer = fake_producer(broker)
    producer.client.failures = [MessageSizeTooLargeError("too big")]
    sink = KafkaSink("out", producer, backoff=FAST)
    results: list = []
    sink.on_next(tracked(b"x" * 10, results))
    sink.wait_idle(5)
    sink.on_next(tracked(b"y", results))  # refused at once, nothing lost silently
    sink.on_completed()
    assert all(isinstance(r, DeliveryError) for r in results) and len(results) == 2
    assert "non-retriable" in str(results[0])
    with pytest.raises(DeliveryError):
        sink.raise_if_failed()


def test_a_missing_topic_is_a_permanent_error_at_once_and_nothing_is_sent() -> None:
    broker = FakeBroker()
    sink = KafkaSink("typo", fake_producer(broker), backoff=FAST)
    results: list = []
    sink.on_next(tracked(b"x", results))
    sink.on_completed()
    assert isinstance(results[0], TopicNotFoundError) and is_permanent(results[0])
    assert "'typo' does not exist" in str(results[0]) and sink.retries == 0
    with pytest.raises(TopicNotFoundError):
        sink.on_next(b"plain value")


def test_a_record_without_any_topic_is_refused() -> None:
    sink = KafkaSink(producer=fake_producer(FakeBroker()))
    with pytest.raises(ConfigError):
        sink.on_next(b"x")


def test_poison_goes_to_the_dead_letter_topic_with_its_provenance_and_the_stream_goes_on() -> None:
    broker = FakeBroker()
    broker.create_topic("cmds", 1)
    broker.create_topic("cmds.dlq", 1)
    good = str(uuid.uuid4()).encode()
    broker.append("cmds", b"1", key=good, headers=[("trace", b"t1")])
    broker.append("cmds", b"not a number", key=good)
    broker.append("cmds", b"2", key=b"not-a-uuid")
    broker.append("cmds", b"3", key=None)
    broker.append("cmds", b"4", key=good)
    dlq = DeadLetters(KafkaSink(producer=fake_producer(broker), backoff=FAST))
    sink = Collect()
    source = fake_source(broker, "cmds")
    flow = run(source, decode(lambda b: int(b), require_uuid_key=True, dead_letters=dlq), sink)
    wait_until(lambda: broker.committed["g"].get(TopicPartition("cmds", 0)) == 5, what="all five committed")
    flow.stop_and_wait()
    assert sink.values() == [1, 4]
    dead = broker.records("cmds.dlq")
    assert [(r.key, r.value) for r in dead] == [(good, b"not a number"), (b"not-a-uuid", b"2"), (None, b"3")]
    headers = dict(dead[0].headers)
    assert headers["rxcqrs.source.topic"] == b"cmds" and headers["rxcqrs.source.offset"] == b"1"
    assert headers["rxcqrs.error.type"] == b"PoisonRecordError"
    assert b"UUID" in dict(dead[1].headers)["rxcqrs.error.message"]
    assert source.metrics.get("dead_lettered") == 3


def test_poison_policy_fail_stops_the_flow_before_the_poison_record() -> None:
    broker = FakeBroker()
    broker.create_topic("cmds", 1)
    for value in (b"1", b"x", b"3"):
        broker.append("cmds", value)
    flow = run(fake_source(broker, "cmds"), decode(int, on_poison="fail"), Collect())
    with pytest.raises(FlowError) as info:
        flow.wait(10)
    assert isinstance(info.value.__cause__, PoisonRecordError)
    assert broker.committed["g"] == {TopicPartition("cmds", 0): 1}


def test_dead_letter_policy_needs_a_dead_letter_sink() -> None:
    with pytest.raises(ConfigError, match="dead_letters"):
        decode(int)
