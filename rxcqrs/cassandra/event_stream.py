"""The event stream of an aggregate: the events its decider decided, as Avro records on a Kafka topic.

Each record is keyed by the entity id (``str(key)``, UTF-8), so an entity's events share a partition and keep
their order, and its value is one raw binary Avro record of the schema :meth:`EventStream.schema` gives
(record ``<Name>Event``, namespace ``rxcqrs.events``)::

    event_id          string (logicalType uuid)    the event's id, as in the event log
    <key>             the key's type                the entity
    event_type        string                        the event class's name
    event_time        long (timestamp-millis)       the command record's time
    source_topic      string                        the command's topic, partition and offset
    source_partition  int
    source_offset     long
    event_index       int                           its place among the command's events
    <field>           ["null", <type>], default null   each field of the event types (as the log's columns)
    before, after     ["null", <Name>State]         the entity's state before and after the event (null:
                                                    none, or deleted); <Name>State has the state's columns

A projection needs no state of its own: what an event changed is the difference of ``before`` and ``after``
(a deletion carries what it deleted).

CQL types map to Avro as: text string, bigint long, int int, double double, float float, boolean boolean,
uuid string/uuid, timestamp long/timestamp-millis, date int/date, decimal string, blob bytes, map map (keys
as strings), set and list array. The command engine publishes an entity's events *before* it writes the
state that records their command, and acks the command only once they were delivered: a crash in between
decides the same events again (same ids, same source offsets), so a subscriber may see an event twice and
never misses one. :attr:`StreamEvent.position` orders an entity's events and tells a repeat (the same or a
lower position than one already applied).
"""

from __future__ import annotations

import decimal
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Generic, Mapping, TypeVar

from rxcqrs.avro.codec import AvroCodec
from rxcqrs.exceptions import ConfigError, SerializationError
from rxcqrs.messages import OutgoingRecord, RecordMetadata

__all__ = ["EventStream", "StreamEvent", "avro_type"]

E = TypeVar("E")
S = TypeVar("S")

_SCALARS: dict[str, Any] = {
    "text": "string", "varchar": "string", "ascii": "string", "bigint": "long", "counter": "long", "varint": "long",
    "int": "int", "smallint": "int", "tinyint": "int", "double": "double", "float": "float", "boolean": "boolean",
    "uuid": {"type": "string", "logicalType": "uuid"}, "timeuuid": {"type": "string", "logicalType": "uuid"},
    "timestamp": {"type": "long", "logicalType": "timestamp-millis"}, "date": {"type": "int", "logicalType": "date"},
    "decimal": "string", "blob": "bytes",
}


def _split(cql: str) -> tuple[str, list[str]]:
    """``map<uuid, int>`` -> ``("map", ["uuid", "int"])`` (``frozen<...>`` unwrapped)."""
    cql = cql.strip().lower()
    while cql.startswith("frozen<") and cql.endswith(">"):
        cql = cql[len("frozen<"):-1].strip()
    if "<" not in cql:
        return cql, []
    name, inner = cql.split("<", 1)
    args, depth, start = [], 0, 0
    inner = inner[:-1]
    for i, ch in enumerate(inner):
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "," and depth == 0:
            args.append(inner[start:i].strip())
            start = i + 1
    args.append(inner[start:].strip())
    return name.strip(), args


def avro_type(cql: str) -> Any:
    """The Avro type of a CQL column type (see the module); an unmapped one is a clear error."""
    name, args = _split(cql)
    if name == "map":
        return {"type": "map", "values": avro_type(args[1])}
    if name in ("set", "list"):
        return {"type": "array", "items": avro_type(args[0])}
    found = _SCALARS.get(name)
    if found is None:
        raise ConfigError(f"a {cql} column has no Avro type in the event stream; use a type the module lists")
    return found


def _to_avro(cql: str) -> Callable[[Any], Any]:
    """A CQL value (as the driver takes it) -> the Avro value."""
    name, args = _split(cql)
    if name == "map":
        value = _to_avro(args[1])
        return lambda m: {str(k): value(v) for k, v in m.items()}
    if name in ("set", "list"):
        item = _to_avro(args[0])
        return lambda xs: [item(x) for x in (sorted(xs) if name == "set" else xs)]
    if name == "decimal":
        return str
    if name == "timestamp":
        return lambda t: t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    return lambda v: v


def _from_avro(cql: str) -> Callable[[Any], Any]:
    """The Avro value -> the CQL value (map keys back to their type)."""
    name, args = _split(cql)
    if name == "map":
        key, value = _key(args[0]), _from_avro(args[1])
        return lambda m: {key(k): value(v) for k, v in m.items()}
    if name == "set":
        item = _from_avro(args[0])
        return lambda xs: {item(x) for x in xs}
    if name == "list":
        item = _from_avro(args[0])
        return lambda xs: [item(x) for x in xs]
    if name == "decimal":
        return decimal.Decimal
    return lambda v: v


def _key(cql: str) -> Callable[[str], Any]:
    name, _ = _split(cql)
    if name in ("uuid", "timeuuid"):
        return uuid.UUID
    if name in ("bigint", "int", "smallint", "tinyint", "varint", "counter"):
        return int
    if name in ("double", "float"):
        return float
    if name == "boolean":
        return lambda s: s == "True"
    if name == "decimal":
        return decimal.Decimal
    return lambda s: s


@dataclass(frozen=True)
class StreamEvent(Generic[E, S]):
    """An event as the stream carries it, with its entity's state before and after it."""

    event_id: uuid.UUID
    entity: Any
    event: E
    event_time: datetime
    source_topic: str
    source_partition: int
    source_offset: int
    event_index: int
    before: S | None = None
    after: S | None = None

    @property
    def position(self) -> int:
        """The event's place in its entity's history (its command's source offset, then its place among the
        command's events): larger for every later event of the entity, the same for a repeat. An entity's
        commands share a source partition, so the offset alone orders them."""
        return (self.source_offset << 16) | self.event_index


class EventStream(Generic[E, S]):
    """The stream of ``store``'s events on ``topic`` (a :class:`~rxcqrs.cassandra.decider_store.DeciderStore`:
    its event columns are the stream's fields)."""

    def __init__(self, store: Any, topic: str) -> None:
        if not topic or not isinstance(topic, str):
            raise ConfigError("the event stream needs a topic name")
        self.store = store
        self.topic = topic
        self.key_field = store.key_field
        columns = {name: col.cql for name, col in store.event_columns.items()}
        self._columns = columns
        self._to = {name: _to_avro(cql) for name, cql in columns.items()}
        self._from = {name: _from_avro(cql) for name, cql in columns.items()}
        self._key_to = _to_avro(store.key_column.cql)
        self._key_from = _from_avro(store.key_column.cql)
        self._state_columns = {name: col.cql for name, col in store.state_columns.items() if name != self.key_field}
        self._state_to = {name: _to_avro(cql) for name, cql in self._state_columns.items()}
        self._state_from = {name: _from_avro(cql) for name, cql in self._state_columns.items()}
        self.codec: AvroCodec[dict[str, Any]] = AvroCodec.from_schema(self.schema(), dict, dict)

    def schema(self) -> dict[str, Any]:
        """The Avro schema of the stream's records (see the module)."""
        fields: list[dict[str, Any]] = [
            {"name": "event_id", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": self.key_field, "type": avro_type(self.store.key_column.cql)},
            {"name": "event_type", "type": "string"},
            {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "source_topic", "type": "string"},
            {"name": "source_partition", "type": "int"},
            {"name": "source_offset", "type": "long"},
            {"name": "event_index", "type": "int"},
        ]
        fields += [{"name": name, "type": ["null", avro_type(cql)], "default": None}
                   for name, cql in self._columns.items()]
        name = "".join(part.capitalize() for part in self.store.name.split("_"))
        state = {"type": "record", "name": f"{name}State",
                 "fields": [{"name": n, "type": ["null", avro_type(cql)], "default": None}
                            for n, cql in self._state_columns.items()]}
        fields += [{"name": "before", "type": ["null", state], "default": None},
                   {"name": "after", "type": ["null", f"{name}State"], "default": None}]
        return {"type": "record", "name": f"{name}Event", "namespace": "rxcqrs.events", "fields": fields}

    def _state_value(self, state: Any) -> dict[str, Any] | None:
        if state is None:
            return None
        return {n: None if v is None else self._state_to[n](v) for n, v in self.store.state_columns_of(state).items()}

    def _state_of(self, entity: Any, value: dict[str, Any] | None) -> Any:
        if value is None:
            return None
        return self.store.state_from_columns(entity, {n: None if (v := value.get(n)) is None else self._state_from[n](v)
                                                      for n in self._state_columns})

    def record(self, entity: Any, event_id: uuid.UUID, index: int, event: Any, meta: RecordMetadata,
               before: Any = None, after: Any = None, payload: Mapping[str, Any] | None = None) -> OutgoingRecord:
        """The Kafka record of ``event``, the ``index``-th decided for the command at ``meta``, which took the
        entity from ``before`` to ``after`` (``payload``: its log columns, when the caller has them)."""
        payload = dict(self.store.payload(event) if payload is None else payload)
        value = {"event_id": event_id, self.key_field: self._key_to(entity), "event_type": payload.pop("event_type"),
                 "event_time": meta.timestamp_utc, "source_topic": meta.topic, "source_partition": meta.partition,
                 "source_offset": meta.offset, "event_index": index, "before": self._state_value(before),
                 "after": self._state_value(after)}
        for name, cql_value in payload.items():
            value[name] = None if cql_value is None else self._to[name](cql_value)
        return OutgoingRecord(self.codec.encode(value), str(entity).encode(), self.topic,
                              (("event_type", value["event_type"].encode()),))

    def decode(self, data: bytes | None) -> StreamEvent[E, S]:
        """A stream record's value as a :class:`StreamEvent` (a record that is not one: SerializationError)."""
        value = self.codec.decode(data)
        try:
            entity = self._key_from(value[self.key_field])
            payload = {name: None if (v := value.get(name)) is None else self._from[name](v) for name in self._columns}
            payload["event_type"] = value["event_type"]
            event = self.store.event_from_payload(entity, payload)
            before, after = self._state_of(entity, value.get("before")), self._state_of(entity, value.get("after"))
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(f"an event-stream record of {self.topic} is not an event of "
                                     f"{self.store.name}: {exc}") from exc
        return StreamEvent(value["event_id"], entity, event, value["event_time"], value["source_topic"],
                           value["source_partition"], value["source_offset"], value["event_index"], before, after)
