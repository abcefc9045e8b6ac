"""OpenTelemetry traces on the real servers: each command produced under a span of its own (a W3C
``traceparent`` header, as any instrumented producer sends it) is one trace through rxcqrs: the record's
``process`` span is the producer span's child, the stages' and the Cassandra requests' spans are the record's
children, the events published for it and a dead letter carry its trace, and its span ends at the commit."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from rxcqrs import tracing
from rxcqrs.examples.shoppingcart.codec import command_codec
from rxcqrs.examples.shoppingcart.generator import generate, partition_for, reference
from rxcqrs.examples.shoppingcart.pipeline import start_pipeline
from rxcqrs.examples.shoppingcart.store import CartStore
from rxcqrs.kafka import ConsumerSettings, KafkaSink, KafkaSource, ProducerSettings, create_topics
from rxcqrs.kafka.admin import committed_offsets, end_offsets, read_topic
from rxcqrs.messages import OutgoingRecord
from rxcqrs.operators import DeadLetters
from tests.helpers import wait_until


@pytest.fixture
def exported() -> Any:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.enable(exporter, service_name="carts", simple=True)
    yield exporter
    tracing.disable()


def producer_spans(count: int) -> tuple[list[Any], list[bytes]]:
    """``count`` spans of another service (the producer), and the traceparent header of each."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import set_span_in_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    tracer = TracerProvider().get_tracer("producer")
    spans, headers = [], []
    for i in range(count):
        span = tracer.start_span(f"send command {i}")
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, context=set_span_in_context(span))
        span.end()
        spans.append(span)
        headers.append(carrier["traceparent"].encode())
    return spans, headers


def trace_of(header: bytes) -> tuple[int, int]:
    _version, trace_id, span_id, _flags = header.decode().split("-")
    return int(trace_id, 16), int(span_id, 16)


def test_one_connected_trace_per_command_from_the_producer_to_its_events(
        exported: Any, topic_factory: Any, kafka_bootstrap: str, group_id: str, cassandra_session: Any,
        keyspace: str) -> None:
    topic = topic_factory(2)
    events = f"{topic}.events"
    create_topics({events: 2, f"{topic}.dlq": 1}, bootstrap_servers=kafka_bootstrap)
    commands = generate(8, 120, seed=4)
    spans, headers = producer_spans(len(commands) + 1)
    codec = command_codec()
    producer = ProducerSettings(bootstrap_servers=kafka_bootstrap)
    sink = KafkaSink(topic, producer)
    for cmd, header in zip(commands, headers, strict=False):
        sink.on_next(OutgoingRecord(codec.encode(cmd), str(uuid.uuid4()).encode(), topic,
                                    (("traceparent", header), ("app", b"x")), partition_for(cmd.cart_id, 2)))
    sink.on_next(OutgoingRecord(b"\x00garbage", str(uuid.uuid4()).encode(), topic, (("traceparent", headers[-1]),),
                                0))
    sink.on_completed()
    store = CartStore(cassandra_session, keyspace, events_topic=events)
    store.create()
    source = KafkaSource(topic, ConsumerSettings(group_id=group_id, bootstrap_servers=kafka_bootstrap))
    flow = start_pipeline(source, store, dead_letters=DeadLetters(KafkaSink(producer=producer)), producer=producer)
    ends = end_offsets(topic, bootstrap_servers=kafka_bootstrap)
    wait_until(lambda: committed_offsets(group_id, topic, bootstrap_servers=kafka_bootstrap) == ends, 120,
               "every command committed")
    flow.stop_and_wait()
    tracing.disable()  # every span ended and exported
    assert dict(store.all_carts()) == {c: cart for c, cart in reference(commands).items() if cart is not None}

    finished = exported.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    process = [s for s in finished if s.name == f"process {topic}"]
    producers = {(s.context.trace_id, s.context.span_id) for s in spans}
    assert len(process) == len(commands) + 1
    for span in process:  # each record's span is the child of its producer's span, and ended at the commit
        assert (span.context.trace_id, span.parent.span_id) in producers
        assert span.attributes["rxcqrs.committed"] is True
        assert span.resource.attributes["service.name"] == "carts"
    process_ids = {s.context.span_id for s in process}
    decodes = [s for s in finished if s.name == "decode"]
    assert len(decodes) >= len(commands) and all(s.parent.span_id in process_ids for s in decodes)
    requests = [s for s in finished if s.name.startswith("cassandra ")]
    assert requests and all(s.parent.span_id in process_ids for s in requests)
    assert {s.attributes["rxcqrs.outcome"] for s in requests} == {"answered"}
    for span in [*decodes, *requests]:  # the same trace as the record it serves
        assert span.context.trace_id == by_id[span.parent.span_id].context.trace_id
    allowed = {"messaging.system", "messaging.operation", "messaging.destination.name",
               "messaging.destination.partition.id", "messaging.kafka.message.offset", "rxcqrs.committed",
               "rxcqrs.stage", "db.system", "db.operation", "rxcqrs.records", "rxcqrs.outcome"}
    assert {k for s in finished for k in s.attributes} <= allowed  # no values, keys or settings

    traces = {s.context.trace_id for s in spans}
    published = read_topic(events, bootstrap_servers=kafka_bootstrap)
    assert published
    for record in published:  # every event carries the trace of the command it was decided for
        trace_id, parent = trace_of(dict(record.headers)["traceparent"])
        assert trace_id in traces and parent in process_ids
    (dead,) = read_topic(f"{topic}.dlq", bootstrap_servers=kafka_bootstrap)
    assert trace_of(dict(dead.headers)["traceparent"])[0] == spans[-1].context.trace_id
    poison = [s for s in process if s.context.trace_id == spans[-1].context.trace_id]
    assert len(poison) == 1
