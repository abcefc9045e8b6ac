"""Tracing on the in-memory fakes: off, nothing is traced and records go out as they came; on, a record's span
is its producer's child, its stages' spans are its children, what it publishes carries its trace, and a span
ends at the commit, or uncommitted when the record is delivered again."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from rxcqrs import run, tracing
from rxcqrs.acks import GateTicket, TracedGateTicket
from rxcqrs.exceptions import StageError
from rxcqrs.kafka import ConsumerSettings, KafkaSink, KafkaSource, SourceSettings
from rxcqrs.messages import OutgoingRecord, TopicPartition
from rxcqrs.operators import map_value
from rxcqrs.testing import FakeBroker, fake_consumers, fake_producer
from tests.helpers import wait_until

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TP = TopicPartition("in", 0)


@pytest.fixture
def exported() -> Iterator[Any]:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.enable(exporter, simple=True)
    yield exporter
    tracing.disable()


def copy_flow(broker: FakeBroker, records: int, fail_first: bool = False) -> tuple[KafkaSource, list[Any]]:
    broker.create_topic("in", 1)
    broker.create_topic("out", 1)
    for i in range(records):
        broker.append("in", f"r{i}".encode(), partition=0, headers=[("traceparent", PARENT.encode()), ("app", b"1")])
    failed: list[bool] = []

    def upper(value: bytes) -> OutgoingRecord:
        if fail_first and not failed:
            failed.append(True)
            raise RuntimeError("once")
        return OutgoingRecord(value.upper())

    settings = SourceSettings(poll_timeout=0.01, failure_policy="rewind")
    source = KafkaSource("in", ConsumerSettings(group_id="g"), settings, client_factory=fake_consumers(broker))
    flow = run(source, map_value(upper), KafkaSink("out", fake_producer(broker)))
    wait_until(lambda: source.records_committed() >= records, 20, "every record committed")
    flow.stop_and_wait()
    return source, broker.records("out")


def test_off_nothing_is_traced_and_headers_pass_as_they_came() -> None:
    assert not tracing.ACTIVE
    broker = FakeBroker()
    source, out = copy_flow(broker, 5)
    assert [r.value for r in out] == [f"R{i}".encode() for i in range(5)]
    assert all(not r.headers for r in out)  # map_value made new records: no header is invented
    assert type(source.committer.ticket(TP, 0, 0, lambda *_: None)) is GateTicket  # no traced ticket when off


def test_on_one_trace_from_the_producer_through_the_stages_to_what_is_published(exported: Any) -> None:
    broker = FakeBroker()
    source, out = copy_flow(broker, 5)
    tracing.disable()
    spans = exported.get_finished_spans()
    process = [s for s in spans if s.name == "process in"]
    stages = [s for s in spans if s.name == "map_value"]
    assert len(process) == 5 and len(stages) == 5
    assert {format(s.context.trace_id, "032x") for s in spans} == {PARENT.split("-")[1]}
    assert {s.parent.span_id for s in process} == {int(PARENT.split("-")[2], 16)}
    assert {s.parent.span_id for s in stages} == {s.context.span_id for s in process}
    assert all(s.attributes["rxcqrs.committed"] is True for s in process)
    by_offset = {s.attributes["messaging.kafka.message.offset"]: s for s in process}
    for i, record in enumerate(out):  # each output record carries the span of the record it came from
        header = dict(record.headers)["traceparent"].decode()
        assert int(header.split("-")[2], 16) == by_offset[i].context.span_id


def test_a_record_delivered_again_ends_its_first_span_uncommitted(exported: Any) -> None:
    broker = FakeBroker()
    copy_flow(broker, 3, fail_first=True)
    tracing.disable()
    first = [s for s in exported.get_finished_spans()
             if s.name == "process in" and s.attributes["messaging.kafka.message.offset"] == 0]
    assert sorted(s.attributes["rxcqrs.committed"] for s in first) == [False, True]
    failed = [s for s in first if not s.attributes["rxcqrs.committed"]]
    assert failed[0].status.description == StageError.__name__


def test_a_traced_source_hands_out_tickets_that_mark_a_nack(exported: Any) -> None:
    broker = FakeBroker()
    broker.create_topic("in", 1)
    source = KafkaSource("in", ConsumerSettings(group_id="g"), client_factory=fake_consumers(broker))
    assert type(source.committer.ticket(TP, 0, 0, lambda *_: None)) is TracedGateTicket
