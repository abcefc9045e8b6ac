"""OpenTelemetry traces of records (the optional ``tracing`` extra: ``pip install rxcqrs[tracing]``).

Off by default, and then every hook below is one check of :data:`ACTIVE` (no OpenTelemetry import). On
(:func:`enable`), each consumed record gets a span ``process <topic>`` (kind consumer) that is a child of the
producer's span when the record carries a W3C ``traceparent`` header, and that ends when the record's offset
is committed (or its partition is revoked first: ``rxcqrs.committed`` false). Under it: a span per operator
stage (``decode``, ``map_value``, ...), and a span per Cassandra request of the command engine (a child of the
first record it serves, linked to the others) with its outcome class (``rxcqrs.outcome``: ``answered``,
``transient``, ``unknown``, ``permanent``). Records rxcqrs publishes for a consumed record (Kafka sinks, dead
letters, the event stream) carry its ``traceparent``. Attributes are topics, partitions, offsets, stage names
and counts: never a value, a key or a setting.

Spans are started and ended on whichever thread the work runs on (poll thread, stage threads, driver
callbacks); the table of open record spans is guarded by a lock.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Literal, Sequence

from rxcqrs.exceptions import ConfigError
from rxcqrs.messages import TopicPartition

__all__ = ["ACTIVE", "enable", "disable", "Exporter"]

#: whether tracing is on (read on the hot path; set only by :func:`enable` / :func:`disable`)
ACTIVE = False
Exporter = Literal["console", "otlp"]

_state: dict[str, Any] = {}
_lock = threading.Lock()
_open: dict[tuple[str, int, int], Any] = {}  # record spans by (topic, partition, offset), until committed
_TRACEPARENT = "traceparent"


def enable(exporter: Exporter | Any = "console", *, service_name: str = "rxcqrs", endpoint: str | None = None,
           simple: bool = False) -> None:
    """Trace records from now on: ``"console"`` (spans printed as JSON), ``"otlp"`` (OTLP over HTTP to
    ``endpoint``, or ``$OTEL_EXPORTER_OTLP_ENDPOINT``) or any OpenTelemetry ``SpanExporter``; ``simple``
    exports each span as it ends (tests) instead of in batches."""
    global ACTIVE
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        raise ConfigError("tracing needs OpenTelemetry: pip install 'rxcqrs[tracing]' (opentelemetry-sdk)") from None
    if exporter == "console":
        chosen: Any = ConsoleSpanExporter()
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError("--trace otlp needs opentelemetry-exporter-otlp-proto-http: pip install "
                              "'rxcqrs[tracing]'") from None
        chosen = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    elif isinstance(exporter, str):
        raise ConfigError(f"the trace exporter must be console or otlp, got {exporter!r}")
    else:
        chosen = exporter
    disable()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(SimpleSpanProcessor(chosen) if simple else BatchSpanProcessor(chosen))
    _state.update(provider=provider, tracer=provider.get_tracer("rxcqrs"), propagator=TraceContextTextMapPropagator())
    ACTIVE = True


def disable() -> None:
    """Stop tracing: open record spans end (not committed), and every span is exported."""
    global ACTIVE
    ACTIVE = False
    with _lock:
        spans = list(_open.values())
        _open.clear()
    for span in spans:
        span.set_attribute("rxcqrs.committed", False)
        span.end()
    provider = _state.pop("provider", None)
    _state.clear()
    if provider is not None:
        provider.shutdown()


# -- the hooks (called only when ACTIVE) -------------------------------------------------------------------
def record_started(record: Any) -> None:
    """A source emits ``record`` (topic, partition, offset, headers): its span starts."""
    from opentelemetry.trace import SpanKind

    carrier = {k: v.decode("latin-1") for k, v in (record.headers or ()) if k == _TRACEPARENT and v}
    parent = _state["propagator"].extract(carrier) if carrier else None
    span = _state["tracer"].start_span(
        f"process {record.topic}", context=parent, kind=SpanKind.CONSUMER,
        attributes={"messaging.system": "kafka", "messaging.operation": "process",
                    "messaging.destination.name": record.topic,
                    "messaging.destination.partition.id": str(record.partition),
                    "messaging.kafka.message.offset": record.offset})
    with _lock:
        before = _open.pop((record.topic, record.partition, record.offset), None)
        _open[(record.topic, record.partition, record.offset)] = span
    if before is not None:  # delivered again (a rewind) before its first delivery was committed
        before.set_attribute("rxcqrs.committed", False)
        before.end()


def _span(meta: Any) -> Any:
    with _lock:
        return _open.get((meta.topic, meta.partition, meta.offset))


def _context(span: Any) -> Any:
    from opentelemetry.trace import set_span_in_context

    return set_span_in_context(span)


def stage(name: str, meta: Any) -> Any:
    """A span for operator stage ``name`` handling the record of ``meta`` (end it with ``.end()``); ``None``
    for a record without a span (not from a traced source)."""
    parent = _span(meta)
    if parent is None:
        return None
    return _state["tracer"].start_span(name, context=_context(parent), attributes={"rxcqrs.stage": name})


def request(step: str, metas: Sequence[Any], records: int) -> Any:
    """A span for one Cassandra request serving ``metas``' records (a child of the first, linked to the
    others); end it with :func:`request_done`."""
    from opentelemetry.trace import Link, SpanKind

    spans = [s for s in (_span(m) for m in metas) if s is not None]
    if not spans:
        return None
    return _state["tracer"].start_span(
        f"cassandra {step}", context=_context(spans[0]), kind=SpanKind.CLIENT,
        links=[Link(s.get_span_context()) for s in spans[1:]],
        attributes={"db.system": "cassandra", "db.operation": step, "rxcqrs.records": records})


def request_done(span: Any, outcome: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    if span is None:
        return
    span.set_attribute("rxcqrs.outcome", outcome)
    if outcome != "answered":
        span.set_status(Status(StatusCode.ERROR, outcome))
    span.end()


def traced(record: Any, meta: Any) -> Any:
    """``record`` (an :class:`~rxcqrs.messages.OutgoingRecord`) with the ``traceparent`` of the consumed record
    of ``meta`` (anything with topic, partition and offset) among its headers, replacing one that was there."""
    span = _span(meta)
    if span is None:
        return record
    return record._replace(headers=_with_traceparent(span, record.headers))


def _with_traceparent(span: Any, headers: Iterable[tuple[str, bytes]] | None) -> list[tuple[str, bytes]]:
    carrier: dict[str, str] = {}
    _state["propagator"].inject(carrier, context=_context(span))
    kept = [(k, v) for k, v in (headers or ()) if k != _TRACEPARENT]
    return [*kept, *((k, v.encode("latin-1")) for k, v in carrier.items())]


def nacked(tp: TopicPartition, offset: int, error: BaseException) -> None:
    """A record was nacked: its span says so (it still ends at the commit or the revoke)."""
    from opentelemetry.trace import Status, StatusCode

    with _lock:
        span = _open.get((tp.topic, tp.partition, offset))
    if span is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))


def committed(offsets: dict[TopicPartition, int]) -> None:
    """Offsets were committed: the spans of every record below them end."""
    ended = []
    with _lock:
        for key in [k for k in _open if (o := offsets.get(TopicPartition(k[0], k[1]))) is not None and k[2] < o]:
            ended.append(_open.pop(key))
    for span in ended:
        span.set_attribute("rxcqrs.committed", True)
        span.end()


def revoked(tps: Iterable[TopicPartition], committing: dict[TopicPartition, int] | None = None) -> None:
    """Partitions went away: their records' spans end, committed if below the offsets ``committing`` (the
    commit on revoke), else not (those records are delivered again)."""
    gone = {(tp.topic, tp.partition) for tp in tps}
    marks = {(tp.topic, tp.partition): o for tp, o in (committing or {}).items()}
    with _lock:
        ended = [(k, _open.pop(k)) for k in [k for k in _open if (k[0], k[1]) in gone]]
    for (topic, partition, offset), span in ended:
        span.set_attribute("rxcqrs.committed", offset < marks.get((topic, partition), -1))
        span.end()
