"""The Event Log: one row per *logging* of an event, so an event logged twice is visible.

Table design (created by :meth:`EventLog.create`)::

    CREATE TABLE <ks>.<table> (
        <entity> <type>, bucket int,          -- partition key: one entity, one time bucket (bounded partitions)
        event_time timestamp,                 -- the Kafka record timestamp: a redelivery has the same time
        event_id uuid,                        -- the Kafka key: a redelivery has the same id
        logged_at timeuuid,                   -- this logging: two loggings of one event are two rows
        <payload columns...>,
        source_topic text, source_partition int, source_offset bigint,
        PRIMARY KEY ((<entity>, bucket), event_time, event_id, logged_at)
    ) WITH CLUSTERING ORDER BY (event_time DESC, event_id ASC, logged_at ASC)

    CREATE TABLE <ks>.<table>_buckets (<entity> <type>, bucket int, PRIMARY KEY (<entity>, bucket))

    CREATE TABLE <ks>.<table>_unknown (       -- writes whose outcome stayed unknown (see record_unknown)
        <entity> <type>, event_id uuid, source_topic text, source_partition int, source_offset bigint,
        error text, recorded_at timestamp, PRIMARY KEY (<entity>, event_id))

Queries by entity and time range read only the buckets the range spans (no ``ALLOW FILTERING``). The
duplicates query groups by the clustering prefix (``GROUP BY event_time, event_id``) inside each entity's
buckets, or over the whole table, paged by the driver: the log is never loaded into memory.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Mapping

from rxcqrs.cassandra.binding import binder
from rxcqrs.cassandra.identifiers import cql_type, identifier, qualified
from rxcqrs.cassandra.schema import create_table, prepare
from rxcqrs.cassandra.timeuuid import time_uuid
from rxcqrs.exceptions import ConfigError
from rxcqrs.messages import RecordMetadata

__all__ = ["EventLog", "Duplicate", "LoggedEvent", "UnknownOutcome"]

_BUCKETS = {"hour": 3600, "day": 86400, "week": 7 * 86400}
_RESERVED_COLUMNS = {"bucket", "event_time", "event_id", "logged_at", "source_topic", "source_partition",
                     "source_offset"}


@dataclass(frozen=True)
class LoggedEvent:
    """One row of the log (one logging of an event)."""

    entity_id: Any
    event_id: uuid.UUID
    event_time: datetime
    logged_at: uuid.UUID
    payload: Mapping[str, Any]
    source: tuple[str | None, int | None, int | None]

    @property
    def order(self) -> tuple[datetime, int, int, uuid.UUID]:
        """Replay order: event time, then the source partition/offset (ties inside one millisecond)."""
        _, partition, offset = self.source
        return (self.event_time, partition if partition is not None else -1,
                offset if offset is not None else -1, self.event_id)


@dataclass(frozen=True)
class Duplicate:
    """An event logged more than once."""

    entity_id: Any
    bucket: int
    event_time: datetime
    event_id: uuid.UUID
    times_logged: int


@dataclass(frozen=True)
class UnknownOutcome:
    """A command write whose outcome could not be resolved: its entity may be wrong until compensated."""

    entity_id: Any
    event_id: uuid.UUID
    source: tuple[str | None, int | None, int | None]
    error: str
    recorded_at: datetime


@dataclass
class EventLog:
    """An event-log table: ``entity`` names the entity column (``cart_id``), ``payload`` the event's columns."""

    keyspace: str
    table: str = "event_log"
    entity: str = "entity_id"
    entity_type: str = "uuid"
    payload: Mapping[str, str] = field(default_factory=dict)
    bucket: str | int = "day"
    fetch_size: int = 1000

    def __post_init__(self) -> None:
        self.name = qualified(self.keyspace, self.table)
        self.buckets_name = qualified(self.keyspace, self.table + "_buckets")
        self.unknown_name = qualified(self.keyspace, self.table + "_unknown")
        self.entity = identifier(self.entity, "entity column")
        self.entity_type = cql_type(self.entity_type)
        self.payload = {identifier(c, "payload column"): cql_type(t) for c, t in self.payload.items()}
        clash = (_RESERVED_COLUMNS | {self.entity}) & set(self.payload)
        if clash:
            raise ConfigError(f"payload columns {sorted(clash)} clash with the event log's own columns")
        seconds = _BUCKETS.get(self.bucket) if isinstance(self.bucket, str) else self.bucket
        if not isinstance(seconds, int) or seconds < 1:
            raise ConfigError(f"bucket must be one of {list(_BUCKETS)} or a number of seconds, got {self.bucket!r}")
        self.bucket_seconds = seconds
        self._seen: set[tuple[Any, int]] = set()
        self._seen_lock = threading.Lock()
        self._payload_columns = frozenset(self.payload)
        self._payload_order = tuple(self.payload)
        cols = [self.entity, "bucket", "event_time", "event_id", "logged_at", *self.payload, "source_topic",
                "source_partition", "source_offset"]
        #: the session the insert was last bound for, and the insert's binder there
        self._insert_binder: tuple[Any, Any] | None = None
        self._insert_query = f"INSERT INTO {self.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"

    # -- DDL ----------------------------------------------------------------------------------------------
    def create(self, session: Any) -> None:
        columns = {self.entity: self.entity_type, "bucket": "int", "event_time": "timestamp", "event_id": "uuid",
                   "logged_at": "timeuuid", **self.payload, "source_topic": "text", "source_partition": "int",
                   "source_offset": "bigint"}
        create_table(session, self.keyspace, self.table, columns, [self.entity, "bucket"],
                     [("event_time", "DESC"), ("event_id", "ASC"), ("logged_at", "ASC")])
        create_table(session, self.keyspace, self.table + "_buckets",
                     {self.entity: self.entity_type, "bucket": "int"}, [self.entity], [("bucket", "ASC")])
        create_table(session, self.keyspace, self.table + "_unknown",
                     {self.entity: self.entity_type, "event_id": "uuid", "source_topic": "text",
                      "source_partition": "int", "source_offset": "bigint", "error": "text",
                      "recorded_at": "timestamp"}, [self.entity], [("event_id", "ASC")])

    # -- unknown outcomes ---------------------------------------------------------------------------------
    def record_unknown(self, session: Any, entity_id: Any, event_id: uuid.UUID, source: RecordMetadata | None,
                       error: BaseException) -> Any:
        """An idempotent statement recording that the command write of ``event_id`` has an unknown outcome."""
        columns = f"{self.entity}, event_id, source_topic, source_partition, source_offset, error, recorded_at"
        statement = prepare(session, f"INSERT INTO {self.unknown_name} ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?)")
        bound = statement.bind((entity_id, event_id, source.topic if source else None,
                                source.partition if source else None, source.offset if source else None,
                                repr(error)[:2000], datetime.now(timezone.utc)))
        bound.is_idempotent = True
        return bound

    def unknown_outcomes(self, session: Any) -> Iterator[UnknownOutcome]:
        """Every recorded unknown outcome (a paged scan of a table that is normally empty)."""
        from cassandra.query import SimpleStatement

        statement = SimpleStatement(f"SELECT {self.entity}, event_id, source_topic, source_partition, source_offset, "
                                    f"error, recorded_at FROM {self.unknown_name}", fetch_size=self.fetch_size)
        for row in session.execute(statement):
            yield UnknownOutcome(row[0], row.event_id, (row.source_topic, row.source_partition, row.source_offset),
                                 row.error, row.recorded_at.replace(tzinfo=timezone.utc))

    def clear_unknown(self, session: Any, entity_id: Any) -> None:
        """Forget the unknown outcomes of ``entity_id`` (after it was compensated)."""
        session.execute(prepare(session, f"DELETE FROM {self.unknown_name} WHERE {self.entity} = ?"), (entity_id,))

    # -- writing ------------------------------------------------------------------------------------------
    def bucket_of(self, when: datetime) -> int:
        return int(when.timestamp()) // self.bucket_seconds

    def buckets_of(self, records: Iterable[RecordMetadata]) -> dict[int, datetime]:
        """The buckets of the records' timestamps, each with one of its times (a record of the same second as the
        record before it is in its bucket: not converted again)."""
        buckets: dict[int, datetime] = {}
        second = -1
        for meta in records:
            if meta.timestamp // 1000 == second >= 0:
                continue
            second, when = meta.timestamp // 1000, meta.timestamp_utc
            buckets[self.bucket_of(when)] = when
        return buckets

    def insert_statement(self, session: Any) -> Any:
        """The prepared insert of one logging (its text built once; prepared once per session by ``prepare``)."""
        return prepare(session, self._insert_query)

    def insert(self, session: Any, entity_id: Any, event_id: uuid.UUID, event_time: datetime,
               payload: Mapping[str, Any], source: RecordMetadata | None = None) -> Any:
        """The idempotent insert of one logging of an event (a retry writes the same row; a redelivery, with
        a new ``logged_at``, another row). It does not record the bucket: see :meth:`bucket_index`.
        One per logged event, so it is kept cheap (see :mod:`rxcqrs.cassandra.binding`)."""
        if event_time.tzinfo is None:
            raise ConfigError("event_time must be timezone-aware (UTC)")
        if not self._payload_columns.issuperset(payload):
            unknown = set(payload) - self._payload_columns
            raise ConfigError(f"unknown payload columns {sorted(unknown)}; the log has {sorted(self.payload)}")
        get = payload.get
        values = [entity_id, self.bucket_of(event_time), event_time, event_id, time_uuid(),
                  *[get(c) for c in self._payload_order],
                  source.topic if source else None, source.partition if source else None,
                  source.offset if source else None]
        bound = self._insert_binder
        if bound is None or bound[0] is not session:
            bound = self._insert_binder = (session, binder(self.insert_statement(session)))
        return bound[1].bind(values, True)

    def bucket_index_query(self) -> str:
        return f"INSERT INTO {self.buckets_name} ({self.entity}, bucket) VALUES (?, ?)"

    def bucket_index(self, session: Any, entity_id: Any, event_time: datetime) -> Any:
        """The idempotent insert recording that ``entity_id`` has events in the bucket of ``event_time``."""
        bound = prepare(session, self.bucket_index_query()).bind((entity_id, self.bucket_of(event_time)))
        bound.is_idempotent = True
        return bound

    def bind(self, session: Any, entity_id: Any, event_id: uuid.UUID, event_time: datetime,
             payload: Mapping[str, Any], source: RecordMetadata | None = None) -> Any:
        """A statement logging one event (idempotent: a retry writes the same row). The first logging of an
        entity in a bucket (by this process) also records the bucket in ``<table>_buckets``, in the same
        logged batch."""
        from cassandra.query import BatchStatement, BatchType

        insert = self.insert(session, entity_id, event_id, event_time, payload, source)
        key = (entity_id, self.bucket_of(event_time))
        with self._seen_lock:
            first = key not in self._seen
            if first:
                if len(self._seen) > 100_000:
                    self._seen.clear()
                self._seen.add(key)
        if not first:
            return insert
        batch = BatchStatement(BatchType.LOGGED)
        batch.add(insert)
        batch.add(self.bucket_index(session, entity_id, event_time))
        batch.is_idempotent = True
        return batch

    # -- reading ------------------------------------------------------------------------------------------
    def entity_buckets(self, session: Any, entity_id: Any) -> list[int]:
        rows = session.execute(prepare(session, f"SELECT bucket FROM {self.buckets_name} WHERE {self.entity} = ?"),
                               (entity_id,))
        return [r.bucket for r in rows]

    def entities(self, session: Any) -> Iterator[Any]:
        """Every entity that has events (a paged scan of the small bucket index)."""
        from cassandra.query import SimpleStatement

        statement = SimpleStatement(f"SELECT DISTINCT {self.entity} FROM {self.buckets_name}",
                                    fetch_size=self.fetch_size)
        for row in session.execute(statement):
            yield row[0]

    def _buckets_for(self, session: Any, entity_id: Any, start: datetime | None, end: datetime | None) -> list[int]:
        if start is None or end is None:
            buckets = self.entity_buckets(session, entity_id)
            low = self.bucket_of(start) if start else None
            high = self.bucket_of(end) if end else None
            return [b for b in buckets if (low is None or b >= low) and (high is None or b <= high)]
        first, last = self.bucket_of(start), self.bucket_of(end)
        return list(range(first, last + 1))

    def events(self, session: Any, entity_id: Any, start: datetime | None = None, end: datetime | None = None
               ) -> Iterator[LoggedEvent]:
        """Every logging of ``entity_id``'s events in ``[start, end)``, newest bucket first."""
        cols = ", ".join(["event_time", "event_id", "logged_at", *self.payload, "source_topic", "source_partition",
                          "source_offset"])
        where = f"{self.entity} = ? AND bucket = ?"
        if start is not None:
            where += " AND event_time >= ?"
        if end is not None:
            where += " AND event_time < ?"
        query = prepare(session, f"SELECT {cols} FROM {self.name} WHERE {where}")
        for bucket in sorted(self._buckets_for(session, entity_id, start, end), reverse=True):
            params = [entity_id, bucket] + [t for t in (start, end) if t is not None]
            query.fetch_size = self.fetch_size
            for row in session.execute(query, params):
                yield self._logged(entity_id, row)

    def _logged(self, entity_id: Any, row: Any) -> LoggedEvent:
        payload = {c: getattr(row, c) for c in self.payload}
        return LoggedEvent(entity_id, row.event_id, row.event_time.replace(tzinfo=timezone.utc), row.logged_at,
                           payload, (row.source_topic, row.source_partition, row.source_offset))

    def distinct_events(self, session: Any, entity_id: Any) -> list[LoggedEvent]:
        """Each event once, in replay order: what a rebuild folds."""
        first: dict[uuid.UUID, LoggedEvent] = {}
        for event in self.events(session, entity_id):
            first.setdefault(event.event_id, event)
        return sorted(first.values(), key=lambda e: e.order)

    def duplicates(self, session: Any, entity_id: Any = None, start: datetime | None = None,
                   end: datetime | None = None) -> Iterator[Duplicate]:
        """Events logged more than once: for one entity (its buckets), optionally in ``[start, end)``; or, with
        no entity, over the whole table (a paged GROUP BY scan, time range filtered as rows stream by)."""
        if entity_id is not None:
            where = f"{self.entity} = ? AND bucket = ?"
            if start is not None:
                where += " AND event_time >= ?"
            if end is not None:
                where += " AND event_time < ?"
            query = prepare(session, f"SELECT event_time, event_id, count(*) AS n FROM {self.name} WHERE {where} "
                                     "GROUP BY event_time, event_id")
            query.fetch_size = self.fetch_size
            for bucket in self._buckets_for(session, entity_id, start, end):
                params = [entity_id, bucket] + [t for t in (start, end) if t is not None]
                for row in session.execute(query, params):
                    if row.n > 1:
                        yield Duplicate(entity_id, bucket, row.event_time.replace(tzinfo=timezone.utc), row.event_id,
                                        row.n)
            return
        from cassandra.query import SimpleStatement

        statement = SimpleStatement(
            f"SELECT {self.entity}, bucket, event_time, event_id, count(*) AS n FROM {self.name} "
            f"GROUP BY {self.entity}, bucket, event_time, event_id", fetch_size=self.fetch_size)
        low = start.replace(tzinfo=None) if start else None
        high = end.replace(tzinfo=None) if end else None
        for row in session.execute(statement, timeout=60):
            if row.n > 1 and (low is None or row.event_time >= low) and (high is None or row.event_time < high):
                yield Duplicate(row[0], row.bucket, row.event_time.replace(tzinfo=timezone.utc), row.event_id, row.n)

    def logged(self, session: Any, duplicate: Duplicate) -> list[LoggedEvent]:
        """The rows of one duplicated event."""
        cols = ", ".join(["event_time", "event_id", "logged_at", *self.payload, "source_topic", "source_partition",
                          "source_offset"])
        query = prepare(session, f"SELECT {cols} FROM {self.name} WHERE {self.entity} = ? AND bucket = ? "
                                 "AND event_time = ? AND event_id = ?")
        return [self._logged(duplicate.entity_id, row) for row in
                session.execute(query, (duplicate.entity_id, duplicate.bucket, duplicate.event_time,
                                        duplicate.event_id))]

