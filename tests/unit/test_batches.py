"""Batches (``SourceSettings(batches=True)``) on the in-memory fakes: the sink sends a batch record by record
and settles it once, a batch becomes envelopes exactly where a stage does not take it, and a broadcast gives
each branch what it takes."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from reactivex import operators as ops

from rxcqrs import run
from rxcqrs.acks import Ticket
from rxcqrs.backoff import Backoff
from rxcqrs.exceptions import ConfigError, DeliveryError
from rxcqrs.kafka import KafkaSink
from rxcqrs.messages import Batch, Envelope, OutgoingRecord
from rxcqrs.operators import branch, broadcast, map_value
from rxcqrs.operators._batch import fit_batches, takes_batches
from rxcqrs.testing import FakeBroker, fake_producer
from tests.helpers import Collect, fake_source, tap_batches, wait_until

FAST = Backoff(0.005, 0.1, 0.0)


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: Any
    headers: Any = ()


def batch_of(values: list[Any], results: list[Any], start: int = 0) -> Batch[Any]:
    records = [Rec("src", 0, start + i, 1000 + i, b"k%d" % i, v) for i, v in enumerate(values)]
    return Batch(list(values), records, Ticket(results.append))


def sink_to(broker: FakeBroker, topic: str | None = "out") -> KafkaSink:
    broker.create_topic("out")
    return KafkaSink(topic, fake_producer(broker), backoff=FAST)


def test_a_batch_is_sent_record_by_record_and_acked_once_every_record_was_delivered() -> None:
    broker = FakeBroker()
    sink = sink_to(broker)
    sink.producer.client.failures = [KafkaTimeoutError("slow")]  # type: ignore[attr-defined]
    results: list[Any] = []
    sink.on_next(batch_of([OutgoingRecord(b"v%d" % i) for i in range(20)], results))
    sink.on_completed()
    assert results == [None] and sink.retries == 1 and sink.sent == 20 and sink.in_flight == 0
    assert sorted(r.value for r in broker.records("out")) == sorted(b"v%d" % i for i in range(20))


def test_a_batch_with_a_record_that_cannot_be_sent_is_nacked_and_nothing_is_sent() -> None:
    broker = FakeBroker()
    sink = sink_to(broker, topic=None)
    results: list[Any] = []
    sink.on_next(batch_of([OutgoingRecord(b"a", topic="out"), OutgoingRecord(b"b")], results))
    sink.on_completed()
    assert len(results) == 1 and isinstance(results[0], ConfigError) and "no topic" in str(results[0])
    assert broker.records("out") == [] and sink.in_flight == 0


def test_a_non_retriable_failure_of_one_record_nacks_its_batch_once() -> None:
    broker = FakeBroker()
    sink = sink_to(broker)
    sink.producer.client.failures = [MessageSizeTooLargeError("too big")]  # type: ignore[attr-defined]
    results: list[Any] = []
    sink.on_next(batch_of([b"x", b"y", b"z"], results))
    sink.wait_idle(5)
    sink.on_completed()
    assert len(results) == 1 and isinstance(results[0], DeliveryError) and "non-retriable" in str(results[0])
    assert sink.in_flight == 0


class HeldProducer:
    """A producer client whose delivery reports the test gives, in any order."""

    description = "held producer"

    def __init__(self) -> None:
        self.reports: list[Any] = []

    def send(self, topic: str, value: Any, key: Any, headers: Any, partition: Any, timestamp_ms: Any,
             on_done: Any) -> None:
        self.reports.append(on_done)

    def topic_exists(self, topic: str, timeout: float) -> bool:
        return True


@given(st.permutations(range(6)), st.sampled_from([None, 0, 3, 5]))
def test_a_batch_settles_once_after_the_last_outcome_whatever_their_order(order: list[int], failing: int | None
                                                                         ) -> None:
    producer = HeldProducer()
    sink = KafkaSink("out", producer, backoff=FAST)  # type: ignore[arg-type]
    results: list[Any] = []
    sink.on_next(batch_of([b"v"] * 6, results))
    assert len(producer.reports) == 6 and sink.in_flight == 1
    for step, i in enumerate(order):
        producer.reports[i](MessageSizeTooLargeError("too big") if i == failing else None)
        if step < 5 and (failing is None or failing not in order[:step + 1]):
            assert results == [] and sink.in_flight == 1  # nothing settles before its time
    assert len(results) == 1 and sink.in_flight == 0
    assert (results[0] is None) == (failing is None) and sink.sent == 6 - (failing is not None)


def test_a_batch_as_envelopes_keeps_each_record_and_settles_the_batch_once() -> None:
    results: list[Any] = []
    batch = batch_of([b"a", b"b", b"c"], results, start=7)
    envelopes = batch.envelopes()
    assert [(e.value, e.meta.offset, e.meta.key, e.meta.timestamp) for e in envelopes] == [
        (b"a", 7, b"k0", 1000), (b"b", 8, b"k1", 1001), (b"c", 9, b"k2", 1002)]
    assert str(batch.meta) == "src/0@7"
    envelopes[0].ack()
    envelopes[2].ack()
    envelopes[2].ack()  # a second settle of one record counts once
    assert results == []
    envelopes[1].ack()
    assert results == [None]


def test_an_unbatch_goes_before_the_first_stage_that_does_not_take_batches() -> None:
    mapped, raw, sink = map_value(bytes.upper), ops.map(lambda e: e), KafkaSink("out", fake_producer(FakeBroker()))
    assert takes_batches(mapped) and not takes_batches(raw) and takes_batches(sink)
    assert fit_batches([mapped, mapped], sink) == [mapped, mapped]
    fitted = fit_batches([mapped, raw, mapped], sink)
    assert fitted[0] is mapped and fitted[2] is raw and fitted[3] is mapped and not takes_batches(fitted[1])
    assert len(fit_batches([mapped], Collect())) == 2 and len(fit_batches([mapped], None)) == 2


def test_a_broadcast_gives_batches_to_a_branch_that_takes_them_and_envelopes_to_the_other() -> None:
    broker = FakeBroker()
    broker.create_topic("in", 2)
    for i in range(40):
        broker.append("in", b"%d" % i, partition=i % 2)
    whole: list[Any] = []
    single = Collect(hold=True)
    source = fake_source(broker, "in", batches=True)
    flow = run(source, broadcast(branch(tap_batches(whole)), single))
    wait_until(lambda: len(single.items) == 40, 10, "every record in the second branch")
    assert whole and all(type(b) is Batch for b in whole) and sum(len(b) for b in whole) == 40
    assert all(type(e) is Envelope for e in single.items)
    assert source.committer.records_committed() == 0  # the second branch holds every record
    for env in single.items:
        env.ack()
    wait_until(lambda: source.committer.records_committed() == 40, 10, "committed once both branches acked")
    flow.stop_and_wait()


@pytest.mark.parametrize("batches", [False, True])
def test_a_source_emits_batches_only_when_asked(batches: bool) -> None:
    broker = FakeBroker()
    broker.create_topic("in", 1)
    for i in range(10):
        broker.append("in", b"%d" % i)
    seen: list[Any] = []
    source = fake_source(broker, "in", batches=batches)
    flow = run(source, tap_batches(seen))
    wait_until(lambda: source.committer.records_committed() == 10, 10, "committed")
    flow.stop_and_wait()
    assert {type(item) for item in seen} == ({Batch} if batches else {Envelope})


@pytest.mark.parametrize("form", [str, lambda u: "{%s}" % u, lambda u: u.hex, lambda u: u.urn])
def test_decode_takes_a_batch_whole_whatever_form_its_uuid_keys_have(form: Any) -> None:
    import uuid

    from reactivex import from_iterable

    from rxcqrs.operators import DeadLetters, decode

    keys = [form(uuid.uuid4()).encode() for _ in range(3)]
    records = [Rec("src", 0, i, 0, k, b"x") for i, k in enumerate(keys)]
    batch = Batch([b"a", b"b", b"c"], records, Ticket(lambda _result: None))
    seen: list[Any] = []
    from_iterable([batch]).pipe(decode(bytes.upper, require_uuid_key=True,
                                       dead_letters=DeadLetters(None))).subscribe(seen.append)  # type: ignore[arg-type]
    assert [type(item) for item in seen] == [Batch] and seen[0].values == [b"A", b"B", b"C"]


@pytest.mark.parametrize("bad_key", [None, b"not-a-uuid", b"\xff" * 36])
def test_decode_dead_letters_the_record_of_a_key_that_is_no_uuid_and_passes_the_others(bad_key: bytes | None) -> None:
    import uuid

    from reactivex import from_iterable

    from rxcqrs.operators import DeadLetters, decode

    dead: list[Any] = []

    class Letters:
        def on_next(self, env: Any) -> None:
            dead.append(env.value)
            env.ack()

    keys = [str(uuid.uuid4()).encode(), bad_key, str(uuid.uuid4()).encode()]
    values = [b"a", b"b", b"c"]
    records = [Rec("src", 0, i, 0, k, v) for i, (k, v) in enumerate(zip(keys, values, strict=True))]
    batch = Batch(values, records, Ticket(lambda _result: None))
    seen: list[Any] = []
    op = decode(bytes.upper, require_uuid_key=True, dead_letters=DeadLetters(Letters()))  # type: ignore[arg-type]
    from_iterable([batch]).pipe(op).subscribe(seen.append)
    assert [(type(e).__name__, e.value) for e in seen] == [("Envelope", b"A"), ("Envelope", b"C")]
    assert [r.value for r in dead] == [b"b"]


def test_decode_takes_a_clean_batch_whole_and_a_batch_with_poison_as_single_records() -> None:
    import uuid

    from rxcqrs.operators import DeadLetters, decode

    key = str(uuid.uuid4()).encode()
    seen: list[Any] = []
    dead: list[Any] = []

    class Letters:
        def on_next(self, env: Any) -> None:
            dead.append(env.value)
            env.ack()

    def upper(data: bytes | None) -> bytes:
        if data == b"poison":
            raise ValueError("not a word")
        return (data or b"").upper()

    op = decode(upper, require_uuid_key=True, dead_letters=DeadLetters(Letters()))  # type: ignore[arg-type]
    assert takes_batches(op)
    clean: list[Any] = []
    good = Batch([b"a", b"b"], [Rec("src", 0, i, 0, key, v) for i, v in enumerate([b"a", b"b"])], Ticket(clean.append))
    mixed: list[Any] = []
    values = [b"c", b"poison", b"d"]
    bad = Batch(values, [Rec("src", 0, 2 + i, 0, key, v) for i, v in enumerate(values)], Ticket(mixed.append))
    from reactivex import from_iterable

    from_iterable([good, bad]).pipe(op).subscribe(seen.append)
    assert type(seen[0]) is Batch and seen[0].values == [b"A", b"B"]
    assert [(type(e).__name__, e.value) for e in seen[1:]] == [("Envelope", b"C"), ("Envelope", b"D")]
    assert [r.value for r in dead] == [b"poison"]
    for item in seen:
        item.ack()
    assert clean == [None] and mixed == [None]
