"""The common case in a few lines: publish commands, describe a table, run a CQRS flow.

``cqrs(topic, Model, aggregate=..., keyspace=...)`` runs the command engine over your own aggregate (a
:class:`~rxcqrs.decider.Decider`: decide and evolve, no CQL); ``cqrs(topic, Model, command=..., log=...,
event=...)`` builds the broadcast pipeline of stateless upserts (source -> decode with dead letters -> command
stage + event log, offsets committed once both are written). Both take the settings of :mod:`rxcqrs.config`
and return the running :class:`~rxcqrs.flow.Flow`. ``project(events_topic, aggregate, views, keyspace=...)`` is
the query side: the aggregate's event stream folded into read models.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Mapping, Sequence

from rxcqrs.config import Config, load_config
from rxcqrs.decider import Decider
from rxcqrs.exceptions import ConfigError
from rxcqrs.flow import Flow
from rxcqrs.messages import RecordMetadata

if TYPE_CHECKING:  # the Cassandra driver is imported only when a flow needs it
    from rxcqrs.cassandra.decider_store import DeciderStore
    from rxcqrs.cassandra.eventlog import EventLog

__all__ = ["publish", "Table", "cqrs", "store", "project"]

_sessions: dict[Any, Any] = {}


def _session(config: Config) -> Any:
    """One shared session per Cassandra configuration (connecting is slow; sessions are thread-safe)."""
    from rxcqrs.cassandra import connect

    settings = config.cassandra()
    key = repr(settings)
    if key not in _sessions:
        _sessions[key] = connect(settings)
    return _sessions[key]


def _codec(model_or_codec: Any) -> Any:
    from rxcqrs.avro import AvroCodec

    return model_or_codec if hasattr(model_or_codec, "decode") else AvroCodec.for_model(model_or_codec)


def publish(topic: str, values: Iterable[Any], codec: Any = None, *, partitions: int = 1,
            key: Callable[[Any], bytes] | str = lambda _v: str(uuid.uuid4()).encode(), config: Config | None = None
            ) -> int:
    """Send ``values`` (dataclass-avroschema models, or anything ``codec`` encodes) to ``topic`` as raw Avro,
    each keyed by a new event id, or by ``key(value)``, or (``key`` a field name) by that field as text, so an
    entity's commands share a partition; the topic is created if missing. Returns how many were delivered."""
    from rxcqrs.kafka import KafkaSink, create_topics
    from rxcqrs.messages import OutgoingRecord

    config = config or load_config()
    items = list(values)
    if not items:
        return 0
    encoder = _codec(codec or type(items[0]))
    if isinstance(key, str):
        field_name = key
        key = lambda value: str(getattr(value, field_name)).encode()  # noqa: E731
    create_topics({topic: partitions}, bootstrap_servers=config.kafka_bootstrap)
    sink = KafkaSink(topic, config.producer())
    for value in items:
        sink.on_next(OutgoingRecord(encoder.encode(value), key(value)))
    sink.on_completed()
    sink.raise_if_failed()
    return sink.sent


class Table:
    """A table that exists (created with its keyspace if missing) and hands out prepared, bound inserts."""

    def __init__(self, keyspace: str, name: str, columns: Mapping[str, str], key: Sequence[str], *,
                 config: Config | None = None, replication: int = 1) -> None:
        from rxcqrs.cassandra import create_keyspace, create_table, prepare

        self.session = _session(config or load_config())
        create_keyspace(self.session, keyspace, replication)
        self.name = create_table(self.session, keyspace, name, columns, key)
        self.columns = list(columns)
        self._insert = prepare(self.session, f"INSERT INTO {self.name} ({', '.join(self.columns)}) "
                                             f"VALUES ({', '.join('?' * len(self.columns))})")

    def insert(self, **values: Any) -> Any:
        """A bound, idempotent INSERT of one row (every column must be given)."""
        missing = set(self.columns) - set(values)
        if missing:
            raise ConfigError(f"insert into {self.name} lacks {sorted(missing)}")
        bound = self._insert.bind([values[c] for c in self.columns])
        bound.is_idempotent = True
        return bound


def cqrs(topic: str, model: Any, *, aggregate: Decider[Any, Any, Any] | None = None, keyspace: str | None = None,
         create_schema: bool = False, command: Callable[..., Any] | None = None, log: EventLog | None = None,
         event: Callable[[Any], tuple[Any, Mapping[str, Any]]] | None = None, group: str | None = None,
         mode: Literal["batched", "parallel", "serial"] | None = None, config: Config | None = None,
         source: Any = None, resolve: Callable[..., Any] | None = None, idempotent: bool | None = None,
         events: str | bool = False) -> Flow:
    """Consume ``topic`` (records of ``model``, or of a codec) and return the running flow; dead letters go to
    ``<topic>.dlq``; settings (servers, write protocol, ...) come from :mod:`rxcqrs.config`.

    With ``aggregate`` (a :class:`~rxcqrs.decider.Decider`): the command engine over the aggregate's tables in
    ``keyspace`` (created first if ``create_schema``; else they must exist and match), ``batched`` (the
    default), or ``parallel`` / ``serial`` (the broadcast pipelines: see :mod:`rxcqrs.cassandra.pipelines`).
    ``events``: publish every decided event to the aggregate's event stream, ``<topic>.events`` (``True``,
    created if missing) or the topic named (it must exist), before its command's writes; see
    :mod:`rxcqrs.cassandra.event_stream`.

    With ``command`` (stateless upserts): apply ``command(value)`` (or ``command(value, meta)`` if it takes
    two arguments; it returns a statement, or None), log ``event(value) -> (entity id, payload)`` in ``log``
    (id = the record key, time = the record timestamp), and commit each record once both are written.
    ``parallel`` (the default): command and log at once; ``serial``: the log after the command."""
    if aggregate is not None:
        if command is not None or log is not None or event is not None:
            raise ConfigError("cqrs: give either aggregate= or command=/log=/event=, not both")
        return _aggregate_flow(topic, model, aggregate, keyspace, create_schema, group, mode or "batched", config,
                               source, events)
    if command is None or log is None or event is None:
        raise ConfigError("cqrs: give aggregate= (a Decider), or command=, log= and event=")
    if events:
        raise ConfigError("cqrs: events= publishes an aggregate's decided events: it needs aggregate=")
    mode = mode or "parallel"
    return _command_flow(topic, model, command, log, event, group, mode, config, source, resolve, idempotent)


def store(aggregate: Decider[Any, Any, Any], keyspace: str, *, config: Config | None = None,
          events_topic: str | None = None) -> DeciderStore:
    """The tables of ``aggregate`` in ``keyspace`` (reads: ``get``, ``all``, ``history``, ``rejections``; and
    ``rebuild``), on the configured Cassandra with the configured write protocol; ``events_topic``: its event
    stream (``store(...).stream.decode`` reads the stream's records)."""
    from rxcqrs.cassandra.decider_store import DeciderStore

    config = config or load_config()
    return DeciderStore(_session(config), keyspace, aggregate, write_protocol=config.write_protocol,  # type: ignore[arg-type]
                        events_topic=events_topic)


def project(events_topic: str, aggregate: Decider[Any, Any, Any], views: Sequence[Any], *, keyspace: str,
            name: str | None = None, group: str | None = None, create_schema: bool = False,
            config: Config | None = None, source: Any = None) -> Flow:
    """Fold ``aggregate``'s event stream ``events_topic`` (as ``cqrs(..., events=...)`` publishes it) into
    ``views`` (:class:`~rxcqrs.cassandra.projection.EntityView` and ``TotalsView``) in ``keyspace``, as
    consumer group ``group`` (default ``<events_topic>.<name>``); ``name`` (default ``<aggregate>_views``)
    prefixes the projection's own tables; a stream record that is not an event goes to ``<events_topic>.dlq``.
    Returns the running flow."""
    from rxcqrs.cassandra.decider_store import DeciderStore
    from rxcqrs.cassandra.projection import Projection
    from rxcqrs.flow import run
    from rxcqrs.kafka import KafkaSink, KafkaSource, SourceSettings, create_topics
    from rxcqrs.operators import DeadLetters

    config = config or load_config()
    session = _session(config)
    stream = DeciderStore(session, keyspace, aggregate, events_topic=events_topic).stream
    assert stream is not None
    name = name or f"{aggregate.name}_views"
    projection = Projection(session, keyspace, name, stream, views)
    if create_schema:
        projection.create_schema()
    source = source or KafkaSource(events_topic, config.consumer(group or f"{events_topic}.{name}"),
                                   SourceSettings(failure_policy="rewind"))  # a failed write: back off, again
    create_topics([events_topic + ".dlq"], bootstrap_servers=config.kafka_bootstrap)  # what is not an event
    return run(source, projection.sink(dead_letters=DeadLetters(KafkaSink(producer=config.producer()))))


def _aggregate_flow(topic: str, model: Any, aggregate: Decider[Any, Any, Any], keyspace: str | None,
                    create_schema: bool, group: str | None, mode: str, config: Config | None, source: Any,
                    events: str | bool) -> Flow:
    from rxcqrs.cassandra.pipelines import MODES, aggregate_pipeline
    from rxcqrs.kafka import KafkaSink, KafkaSource, create_topics
    from rxcqrs.operators import DeadLetters, decode

    if mode not in MODES:
        raise ConfigError(f"cqrs: mode must be one of {MODES}, got {mode!r}")
    if mode != "batched":
        aggregate.require_logged(mode)
    if not keyspace:
        raise ConfigError("cqrs: an aggregate needs the keyspace of its tables (keyspace=...)")
    config = config or load_config()
    events_topic = f"{topic}.events" if events is True else (events or config.events_topic)
    if events is True:  # as many partitions as the commands (missing: the source names it)
        from rxcqrs.kafka.admin import topic_partitions

        partitions = topic_partitions(topic, bootstrap_servers=config.kafka_bootstrap) or 1
        create_topics({f"{topic}.events": partitions}, bootstrap_servers=config.kafka_bootstrap)
    tables = store(aggregate, keyspace, config=config, events_topic=events_topic)
    if create_schema:
        tables.create_schema()
    else:
        tables.check_schema()
    group = group or f"{topic}.cqrs"
    tables.claim(group)
    create_topics([topic + ".dlq"], bootstrap_servers=config.kafka_bootstrap)
    dead_letters = DeadLetters(KafkaSink(producer=config.producer()))
    decoded = decode(_codec(model), dead_letters=dead_letters)
    source = source or KafkaSource(topic, config.consumer(group))
    return aggregate_pipeline(source, decoded, tables, mode=mode, group=group,  # type: ignore[arg-type]
                              merge_partitions=config.merge_partitions, atomic_batches=config.atomic_batches,
                              producer=config.producer())


def _command_flow(topic: str, model: Any, command: Callable[..., Any], log: EventLog,
                  event: Callable[[Any], tuple[Any, Mapping[str, Any]]], group: str | None, mode: str,
                  config: Config | None, source: Any, resolve: Callable[..., Any] | None,
                  idempotent: bool | None) -> Flow:
    import inspect

    from rxcqrs.cassandra import CassandraRetrySink, CassandraSink, cassandra_retry_flow, create_keyspace
    from rxcqrs.flow import run
    from rxcqrs.kafka import KafkaSink, KafkaSource, create_topics
    from rxcqrs.operators import DeadLetters, branch, broadcast, decode, map_envelope

    if mode not in ("parallel", "serial"):
        raise ConfigError(f"mode must be 'parallel' or 'serial', got {mode!r}")
    config = config or load_config()
    session = _session(config)
    create_keyspace(session, log.keyspace)
    log.create(session)
    create_topics([topic + ".dlq"], bootstrap_servers=config.kafka_bootstrap)
    with_meta = len(inspect.signature(command).parameters) >= 2
    is_idempotent = idempotent if idempotent is not None else not with_meta  # a plain upsert, by default

    def logged(env: Any) -> Any:
        meta: RecordMetadata = env.meta
        entity, payload = event(env.value)
        return log.bind(session, entity, meta.key_uuid, meta.timestamp_utc, payload, meta)

    dead_letters = DeadLetters(KafkaSink(producer=config.producer()))
    decoded = decode(_codec(model), require_uuid_key=True, dead_letters=dead_letters)
    options = {"with_meta": with_meta, "idempotent": is_idempotent, "resolve": resolve}
    source = source or KafkaSource(topic, config.consumer(group or f"{topic}.cqrs"))
    events = CassandraSink(session, name="event-log")
    if mode == "parallel":
        commands = CassandraRetrySink(session, command, name="commands", **options)  # type: ignore[arg-type]
        return run(source, decoded, broadcast(commands, branch(map_envelope(logged), events)))
    return run(source, decoded, cassandra_retry_flow(session, command, name="commands", **options),  # type: ignore[arg-type]
               map_envelope(logged), events)
