"""A :class:`~rxcqrs.decider.Decider` in Cassandra: tables derived from its types, and the command engine's
statements for it (the :class:`~rxcqrs.cassandra.aggregate.Aggregate` protocol), so that a user writes no CQL.

Tables (``<name>`` is the decider's name, ``<key>`` its key field)::

    <name>            (<key>, <the state's fields as columns>, deleted boolean, seq bigint,
                       applied map<int, bigint>, PRIMARY KEY (<key>))
    <name>_event_log  (the :class:`~rxcqrs.cassandra.eventlog.EventLog` of the decided events: event_type text
                       and the events' fields as columns; plus its _buckets and _unknown tables)
    <name>_rejections (<key>, source_partition int, source_offset bigint, source_topic text, command_type text,
                       command text, reason text, PRIMARY KEY (<key>, source_partition, source_offset))
    <name>_rebuilds   (the ledger of :meth:`DeciderStore.rebuild`)

plus the keyspace's fence tables (:mod:`rxcqrs.cassandra.fence`). A deleted entity (``evolve`` returned
``None``) stays as a row with ``deleted = true``. ``applied`` holds the highest source offset applied per
partition (rejected commands too): a redelivered command is recognised and skipped.

Exactness: a command's events are decided once per delivery that the state has not recorded yet, and written
*before* the state that records the command (with the rejections), each with an id derived from the command's
source partition and offset and its place among the command's events. A crash before the state write leads to
the same decision again (``decide`` and ``evolve`` are deterministic), so the same events with the same ids:
logged twice at most, never lost, and the rebuild folds each id once. Event times are the command record's
timestamp; replay order is the source offset, then the place among the command's events.
"""

from __future__ import annotations

import hashlib
import operator
import threading
import uuid
from typing import Any, Generic, Iterable, Iterator, Mapping, TypeVar

from rxcqrs.cassandra.aggregate import Applied, Rejection, Stored
from rxcqrs.cassandra.columns import Column, column, columns_of, conversion_to_cql
from rxcqrs.cassandra.compensation import Rebuilder, RebuildReport
from rxcqrs.cassandra.eventlog import EventLog, LoggedEvent
from rxcqrs.cassandra.fence import (
    FENCES_TABLE,
    WRITERS_TABLE,
    Fence,
    TableClaim,
    WriteProtocol,
    check_protocol,
    claim_table,
    create_fence_tables,
    write_timestamp,
)
from rxcqrs.cassandra.identifiers import identifier, qualified
from rxcqrs.cassandra.schema import create_keyspace, create_table, prepare, prepare_serial
from rxcqrs.cassandra.timeuuid import uuid_of_int
from rxcqrs.decider import Decider, Reject, type_hints
from rxcqrs.exceptions import ConfigError, SchemaError
from rxcqrs.messages import RecordMetadata

__all__ = ["DeciderStore", "event_id"]

_second = operator.itemgetter(1)  # a (command, meta) pair's meta

C = TypeVar("C")
S = TypeVar("S")
E = TypeVar("E")

_BOOKKEEPING = {"deleted": "boolean", "seq": "bigint", "applied": "map<int,bigint>"}
_LOG_RESERVED = {"bucket", "event_time", "event_id", "logged_at", "source_topic", "source_partition", "source_offset",
                 "event_type"}


def event_id(meta: RecordMetadata, index: int) -> uuid.UUID:
    """The id of the ``index``-th event decided for the command at ``meta``: the same for every delivery of the
    command, distinct across commands, and ordered by ``index`` among the command's events (a UUID version 8)."""
    if not 0 <= index < 1 << 16:
        raise ConfigError(f"a command decided more than {1 << 16} events ({meta})")
    digest = hashlib.sha1(f"{meta.topic}/{meta.partition}/{meta.offset}".encode()).digest()
    value = int.from_bytes(digest[:14] + index.to_bytes(2, "big"), "big")
    value = (value & ~(0xF << 76)) | (8 << 76)  # version 8 (RFC 9562: custom)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # the RFC variant
    return uuid_of_int(value)


class DeciderStore(Generic[C, S, E]):
    """The tables and statements of ``decider`` in ``keyspace``. ``column_types`` picks the CQL type of a field
    (field name -> type, for the key, the state and the events); ``bucket``: the event log's time bucket;
    ``schema_hint``: how a user creates the schema (named by the errors of :meth:`check_schema`)."""

    def __init__(self, session: Any, keyspace: str, decider: Decider[C, S, E], *,
                 write_protocol: WriteProtocol = "fenced", column_types: Mapping[str, str] | None = None,
                 bucket: str = "day", schema_hint: str = "create_schema=True, or DeciderStore.create_schema()",
                 events_topic: str | None = None) -> None:
        self.session = session
        self.schema_hint = schema_hint
        self.keyspace = identifier(keyspace, "keyspace")
        self.decider = decider
        self.write_protocol = check_protocol(write_protocol)
        self.name = identifier(decider.name, "aggregate name")
        types = dict(column_types or {})
        self.key_field = decider.key
        key_hint = type_hints(decider.command)[decider.key]
        self.key_column = column(decider.key, key_hint, f"command {decider.command.__name__}.{decider.key}",
                                 types.get(decider.key))
        self.state_columns = self._state_columns(types)
        self.event_columns = self._event_columns(types)
        self.table = qualified(self.keyspace, self.name)
        self.rejections_table = qualified(self.keyspace, f"{self.name}_rejections")
        payload = {"event_type": "text", **{c.name: c.cql for c in self.event_columns.values()}}
        self.log = EventLog(self.keyspace, f"{self.name}_event_log", entity=self.key_field,
                            entity_type=self.key_column.cql, payload=payload, bucket=bucket)
        self._event_types = {e.__name__: e for e in decider.events}
        self._event_fields = {e: list(type_hints(e)) for e in decider.events}
        #: per event type: its name, then each logged field with its conversion (None: it goes as it is)
        self._payload_plans = {e: (e.__name__, tuple((f, conversion_to_cql(self.event_columns[f]))
                                                      for f in fields if f in self.event_columns))
                               for e, fields in self._event_fields.items()}
        self._lock = threading.Lock()
        self._prepared = False
        from rxcqrs.cassandra.event_stream import EventStream

        #: the event stream (``events_topic``): what the engine publishes of every decided event
        self.stream: EventStream[E, S] | None = EventStream(self, events_topic) if events_topic else None

    def _state_columns(self, types: Mapping[str, str]) -> dict[str, Column]:
        found = columns_of(self.decider.state, "state", types)
        for name, col in found.items():
            if name in _BOOKKEEPING:
                raise ConfigError(f"state {self.decider.state.__name__}.{name}: {name!r} is a column rxcqrs keeps "
                                  f"for itself ({sorted(_BOOKKEEPING)}); rename the field")
            if name == self.key_field and col.cql != self.key_column.cql:
                raise ConfigError(f"state {self.decider.state.__name__}.{name} is the key column but its type "
                                  f"({col.cql}) differs from the command's ({self.key_column.cql})")
        return found

    def _event_columns(self, types: Mapping[str, str]) -> dict[str, Column]:
        merged: dict[str, Column] = {}
        for cls in self.decider.events:
            for name, col in columns_of(cls, "event", types).items():
                if name == self.key_field:
                    continue  # the log's partition key: read back from the entity
                if name in _LOG_RESERVED:
                    raise ConfigError(f"event {cls.__name__}.{name}: {name!r} is a column the event log keeps for "
                                      f"itself ({sorted(_LOG_RESERVED)}); rename the field")
                if name in merged and merged[name].cql != col.cql:
                    raise ConfigError(f"event field {name!r} is {merged[name].cql} in one event type and {col.cql} in "
                                      f"{cls.__name__}: one column cannot hold both; rename one of them")
                merged.setdefault(name, col)
        return merged

    # -- schema -------------------------------------------------------------------------------------------
    @property
    def tables(self) -> dict[str, dict[str, str]]:
        """Every table this store needs (name -> column -> CQL type), fence tables excepted."""
        state = {self.key_field: self.key_column.cql,
                 **{c.name: c.cql for c in self.state_columns.values() if c.name != self.key_field}, **_BOOKKEEPING}
        rejections = {self.key_field: self.key_column.cql, "source_partition": "int", "source_offset": "bigint",
                      "source_topic": "text", "command_type": "text", "command": "text", "reason": "text"}
        return {self.name: state, f"{self.name}_rejections": rejections}

    def create_schema(self, replication: int = 1) -> None:
        """Create the keyspace and the tables that are missing; then check every table against the types
        (an existing table with other columns is a :class:`SchemaError`, never altered)."""
        create_keyspace(self.session, self.keyspace, replication)
        tables = self.tables
        create_table(self.session, self.keyspace, self.name, tables[self.name], [self.key_field])
        create_table(self.session, self.keyspace, f"{self.name}_rejections", tables[f"{self.name}_rejections"],
                     [self.key_field], [("source_partition", "ASC"), ("source_offset", "ASC")])
        self.log.create(self.session)
        self.rebuilder().create()
        create_fence_tables(self.session, self.keyspace)
        self.check_schema()

    def check_schema(self) -> None:
        """Raise :class:`SchemaError` (one line: what differs, what to do) unless every table exists with the
        columns the types give."""
        if self.session.execute("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
                                (self.keyspace,)).one() is None:
            raise SchemaError(f"keyspace {self.keyspace!r} does not exist: check the keyspace, or create the schema "
                              f"({self.schema_hint})")
        expected = dict(self.tables)
        expected[self.log.table] = {self.key_field: self.key_column.cql, **{c: t for c, t in self.log.payload.items()}}
        for extra in self.table_names:
            expected.setdefault(extra, {})
        for table, columns in expected.items():
            found = {row.column_name: row.type.replace(" ", "") for row in self.session.execute(
                "SELECT column_name, type FROM system_schema.columns WHERE keyspace_name = %s AND table_name = %s",
                (self.keyspace, table))}
            if not found:
                raise SchemaError(f"{self.keyspace}.{table} does not exist: create the schema first "
                                  f"({self.schema_hint})")
            wrong = {c: (t, found.get(c)) for c, t in columns.items() if found.get(c) != t.replace(" ", "")}
            if wrong:
                what = ", ".join(f"{c} is {f or 'missing'} (the types give {t})" for c, (t, f) in wrong.items())
                raise SchemaError(f"{self.keyspace}.{table} does not match {self.decider.name}'s types: {what}; "
                                  "rxcqrs never alters a table: migrate it yourself, or use a new keyspace")

    def missing_tables(self) -> list[str]:
        """The keyspace (``[keyspace]``) or the tables of it that do not exist (asked of the server's schema
        tables, not the driver's cached metadata)."""
        if self.session.execute("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
                                (self.keyspace,)).one() is None:
            return [self.keyspace]
        found = {row.table_name for row in self.session.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (self.keyspace,))}
        return [f"{self.keyspace}.{t}" for t in self.table_names if t not in found]

    @property
    def table_names(self) -> list[str]:
        """Every table of this store, the fence tables included."""
        return [*self.tables, self.log.table, self.log.table + "_buckets", self.log.table + "_unknown",
                f"{self.name}_rebuilds", FENCES_TABLE, WRITERS_TABLE]

    def recorded_protocol(self) -> WriteProtocol:
        """The protocol recorded for the state table (a table from before the record: conditional)."""
        row = self.session.execute(f"SELECT protocol FROM {qualified(self.keyspace, WRITERS_TABLE)} WHERE "
                                   "table_name = %s", (self.name,)).one()
        return check_protocol(row.protocol) if row is not None else "conditional"

    def claim(self, group: str | None) -> TableClaim:
        """Record (or check) that this store's protocol (and, fenced, ``group``) writes the state table."""
        return claim_table(self.session, self.keyspace, self.name, self.write_protocol, group)

    def _prepare(self) -> None:
        with self._lock:
            if self._prepared:
                return
            s, t = self.session, self.table
            state = [c for c in self.state_columns if c != self.key_field]
            columns = ", ".join([self.key_field, *state, "deleted", "seq", "applied"])
            self._read = prepare(s, f"SELECT {columns} FROM {t} WHERE {self.key_field} = ?")
            self._read_many = prepare(s, f"SELECT {columns} FROM {t} WHERE {self.key_field} IN ?")
            self._read_serial = prepare_serial(s, f"SELECT {columns} FROM {t} WHERE {self.key_field} = ?")
            row = [self.key_field, *state, "deleted"]
            marks = ", ".join("?" * (len(row) + 1))
            self._fenced = prepare(s, f"INSERT INTO {t} ({', '.join(row)}, applied) VALUES ({marks}) USING TIMESTAMP ?")
            self._insert = prepare(s, f"INSERT INTO {t} ({', '.join(row)}, applied, seq) VALUES ({marks}, ?) "
                                      "IF NOT EXISTS")
            sets = ", ".join(f"{c} = ?" for c in [*state, "deleted", "applied", "seq"])
            self._update = prepare(s, f"UPDATE {t} SET {sets} WHERE {self.key_field} = ? IF seq = ?")
            self._reject = prepare(s, f"INSERT INTO {self.rejections_table} ({self.key_field}, source_partition, "
                                      "source_offset, source_topic, command_type, command, reason) "
                                      "VALUES (?, ?, ?, ?, ?, ?, ?)")
            self._state_order = state
            self._prepared = True

    # -- rows <-> states ----------------------------------------------------------------------------------
    def _values(self, state: S | None) -> list[Any]:
        if state is None:
            return [None] * len(self._state_order) + [True]
        return [self.state_columns[c].to_cql(getattr(state, c)) for c in self._state_order] + [False]

    def _state(self, row: Any) -> S | None:
        if row.deleted:
            return None
        values = {c: getattr(row, c) for c in self._state_order}
        return self.state_from_columns(getattr(row, self.key_field, None), values)

    def state_columns_of(self, state: S) -> dict[str, Any]:
        """The state's columns (but the key) as the driver takes them."""
        return {c: col.to_cql(getattr(state, c)) for c, col in self.state_columns.items() if c != self.key_field}

    def state_from_columns(self, entity: Any, values: Mapping[str, Any]) -> S:
        """The state of ``entity`` whose columns (but the key) are ``values``."""
        made = {c: col.from_cql(values.get(c)) for c, col in self.state_columns.items() if c != self.key_field}
        if self.key_field in self.state_columns:
            made[self.key_field] = entity
        return self.decider.state(**made)

    def _event(self, logged: LoggedEvent) -> E:
        return self.event_from_payload(logged.entity_id, logged.payload)

    def event_from_payload(self, entity: Any, payload: Mapping[str, Any]) -> E:
        """The event of ``entity`` whose log columns are ``payload`` (``event_type`` and its fields)."""
        cls = self._event_types.get(payload["event_type"])
        if cls is None:
            raise SchemaError(f"{self.log.name} holds an event of type {payload['event_type']!r}, which is not one of "
                              f"{sorted(self._event_types)}: add the type back to the decider")
        values = {f: entity if f == self.key_field else self.event_columns[f].from_cql(payload.get(f))
                  for f in self._event_fields[cls]}
        return cls(**values)

    def payload(self, event: Any) -> dict[str, Any]:
        """The event-log columns of ``event`` (its type's name and its fields)."""
        name, fields = self._payload_plans[type(event)]
        out = {"event_type": name}
        for f, convert in fields:
            out[f] = getattr(event, f) if convert is None else convert(getattr(event, f))
        return out

    # -- reads --------------------------------------------------------------------------------------------
    def row(self, key: Any, *, serial: bool = False) -> Stored[S]:
        """The entity as stored (``serial``: through Paxos, settling an unknown conditional write first)."""
        return self.stored(list(self.session.execute(self.read(key, serial))))

    def get(self, key: Any) -> S | None:
        """The entity's state (``None``: no such entity, or deleted)."""
        return self.row(key).state

    def all(self) -> Iterator[tuple[Any, S]]:
        """Every live entity, paged by the driver."""
        from cassandra.query import SimpleStatement

        self._prepare()
        columns = ", ".join([self.key_field, *self._state_order, "deleted"])
        for row in self.session.execute(SimpleStatement(f"SELECT {columns} FROM {self.table}", fetch_size=1000)):
            state = self._state(row)
            if state is not None:
                yield getattr(row, self.key_field), state

    def history(self, key: Any) -> list[E]:
        """The entity's distinct events in replay order, as event objects."""
        return [self._event(e) for e in self.log.distinct_events(self.session, key)]

    def rejections(self, key: Any) -> list[Any]:
        """The entity's refused commands (rows of ``<name>_rejections``, in source order)."""
        return list(self.session.execute(f"SELECT * FROM {self.rejections_table} WHERE {self.key_field} = %s", (key,)))

    # -- the aggregate of the command engine ----------------------------------------------------------------
    def prepare(self) -> None:
        self._prepare()
        self.log.insert_statement(self.session)
        prepare(self.session, self.log.bucket_index_query())

    def key(self, command: C) -> Any:
        return self.decider.key_of(command)

    def read(self, key: Any, serial: bool = False) -> Any:
        self._prepare()
        return (self._read_serial if serial else self._read).bind((key,))

    def read_many(self, keys: list[Any]) -> Any:
        self._prepare()
        return self._read_many.bind((keys,))

    def key_of_row(self, row: Any) -> Any:
        return getattr(row, self.key_field)

    def stored(self, rows: Any) -> Stored[S]:
        found = rows[0] if rows else None
        if found is None:
            return Stored(None, None, {})
        return Stored(self._state(found), found.seq or 0, dict(found.applied or {}))

    def decide(self, state: S | None, command: C, meta: RecordMetadata) -> Applied[S] | Rejection:
        answer = self.decider.decided(state, command)
        if isinstance(answer, Reject):
            return Rejection(answer.reason)
        entity, when, stream = self.decider.key_of(command), meta.timestamp_utc, self.stream
        records, published = [], []
        for i, event in enumerate(answer):
            ident, payload = event_id(meta, i), self.payload(event)
            records.append(self.log.insert(self.session, entity, ident, when, payload, meta))
            before, state = state, self.decider.evolve(state, event)
            if stream is not None:
                published.append(stream.record(entity, ident, i, event, meta, before, state, payload))
        return Applied(state, records, published)

    def write(self, key: Any, state: S | None, applied: dict[int, int], timestamp: int) -> Any:
        self._prepare()
        bound = self._fenced.bind([key, *self._values(state), applied, timestamp])
        bound.is_idempotent = True
        return bound

    def update(self, key: Any, before: Stored[S], state: S | None, applied: dict[int, int]) -> Any:
        self._prepare()
        if before.seq is None:
            return self._insert.bind([key, *self._values(state), applied, 1])
        return self._update.bind([*self._values(state), applied, before.seq + 1, key, before.seq])

    def events(self, key: Any, records: list[tuple[C, RecordMetadata]]) -> list[Any]:
        """Nothing: a decider's events are logged with its decisions, before the state (see the module)."""
        return []

    def delivery_statement(self, command: C, meta: RecordMetadata) -> Any:
        """The event-log write of one delivery, for the event-log branch of the parallel and serial pipelines:
        the decider's ``logged(command)``, with the id the engine gives a command's first event."""
        event = self.decider.require_logged("parallel")(command)
        return self.log.bind(self.session, self.decider.key_of(command), event_id(meta, 0), meta.timestamp_utc,
                             self.payload(event), meta)

    def record_rejections(self, key: Any, rejected: list[tuple[C, RecordMetadata, str]]) -> list[Any]:
        self._prepare()
        out = []
        for command, meta, reason in rejected:
            bound = self._reject.bind((key, meta.partition, meta.offset, meta.topic, type(command).__name__,
                                       repr(command), reason))
            bound.is_idempotent = True
            out.append(bound)
        return out

    def index(self, key: Any, records: list[tuple[C, RecordMetadata]]) -> list[Any]:
        """The bucket index of the records' buckets, written with every delivery (a row per bucket of the batch):
        a memory of rows written before would have to be kept true through failed writes and redeliveries."""
        buckets = self.log.buckets_of(map(_second, records))
        return [self.log.bucket_index(self.session, key, when) for when in buckets.values()]

    # -- rebuild -------------------------------------------------------------------------------------------
    def rebuild(self, keys: Iterable[Any] | None = None, *, group: str | None = None,
                topic: str | None = None) -> RebuildReport:
        """Rewrite every entity (or ``keys``) whose state differs from ``evolve`` over its distinct logged
        events. Fenced: the rewrite takes an epoch of ``group``'s fence on ``topic`` (above every epoch its
        members wrote with), so run it while the group has no members."""
        return self.rebuilder(group=group, topic=topic).run(keys)

    def rebuilder(self, *, group: str | None = None, topic: str | None = None) -> Rebuilder[S]:
        """The :class:`~rxcqrs.cassandra.compensation.Rebuilder` of :meth:`rebuild`."""
        epoch: list[int] = []
        writes = [0]

        def current(key: Any) -> tuple[S | None, int | None] | None:
            row = self.row(key)
            return None if row.seq is None else (row.state, row.seq)

        def write(key: Any, state: S | None, seq: int | None) -> Any:
            row = self.row(key)
            if self.write_protocol == "conditional":
                return None if row.seq != seq else self.update(key, row, state, dict(row.applied))
            if not epoch:
                if group is None or topic is None:
                    raise SchemaError("a rebuild of fenced entities needs the consumer group and topic whose fence "
                                      "orders their writers (group=..., topic=...)")
                epoch.append(Fence(self.session, self.keyspace, group, topic).take())
            writes[0] += 1
            return self.write(key, state, dict(row.applied), write_timestamp(epoch[0], writes[0]))

        return Rebuilder(self.session, self.log, fold=lambda logged: self.decider.fold(self._event(e) for e in logged),
                         read=current, write=write, ledger=f"{self.name}_rebuilds")
