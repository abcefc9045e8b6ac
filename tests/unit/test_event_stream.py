"""An aggregate's event stream: the Avro schema derived from its event types, records that decode to the same
events, keys and positions, and a record that is not one of its events refused in one line."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxcqrs import Decider
from rxcqrs.cassandra.decider_store import DeciderStore, event_id
from rxcqrs.cassandra.event_stream import EventStream
from rxcqrs.exceptions import ConfigError, SerializationError
from rxcqrs.messages import RecordMetadata


@dataclass(frozen=True)
class Open:
    shop: uuid.UUID
    name: str


@dataclass(frozen=True)
class Stocked:
    shop: uuid.UUID
    counts: Mapping[uuid.UUID, int] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()
    prices: tuple[decimal.Decimal, ...] = ()
    at: dt.datetime | None = None
    open: bool | None = None
    ratio: float | None = None


@dataclass(frozen=True)
class Shop:
    name: str


shops = Decider("shop", command=Open, state=Shop, event=(Open, Stocked), key="shop",
                decide=lambda s, c: c, evolve=lambda s, e: Shop(e.name) if isinstance(e, Open) else s)
STREAM: EventStream[Any, Any] = EventStream(DeciderStore(None, "ks", shops), "shop.events")


def meta(partition: int, offset: int) -> RecordMetadata:
    return RecordMetadata("shop.commands", partition, offset, 1_700_000_000_123, 0, None)


def test_the_schema_names_every_field_and_parses() -> None:
    schema = STREAM.schema()
    fastavro.parse_schema(schema)
    names = [f["name"] for f in schema["fields"]]
    assert schema["name"] == "ShopEvent" and names[:8] == [
        "event_id", "shop", "event_type", "event_time", "source_topic", "source_partition", "source_offset",
        "event_index"]
    assert set(names[8:-2]) == {"name", "counts", "tags", "prices", "at", "open", "ratio"}
    assert names[-2:] == ["before", "after"]
    assert all(f["type"][0] == "null" and f["default"] is None for f in schema["fields"][8:])


uuids = st.uuids()
stocked = st.builds(Stocked, uuids, st.dictionaries(uuids, st.integers(-2**63, 2**63 - 1), max_size=4),
                    st.frozensets(st.text(max_size=5), max_size=4),
                    st.lists(st.decimals(allow_nan=False, allow_infinity=False, places=2), max_size=3).map(tuple),
                    st.none() | st.datetimes(dt.datetime(1970, 1, 2), dt.datetime(2100, 1, 1)).map(
                        lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000, tzinfo=dt.timezone.utc)),
                    st.none() | st.booleans(), st.none() | st.floats(allow_nan=False))


@given(stocked, st.integers(0, 100), st.integers(0, 2**40), st.integers(0, 5))
def test_a_record_decodes_to_the_same_event_entity_and_position(event: Stocked, partition: int, offset: int,
                                                                 index: int) -> None:
    record = STREAM.record(event.shop, event_id(meta(partition, offset), index), index, event, meta(partition, offset),
                           None if index % 2 else Shop("before"), Shop("after"))
    assert record.key == str(event.shop).encode() and record.topic == "shop.events"
    back = STREAM.decode(record.value)
    assert back.event == event and back.entity == event.shop and back.event_index == index
    assert (back.source_partition, back.source_offset) == (partition, offset)
    assert back.event_id == event_id(meta(partition, offset), index)
    assert back.position == (offset << 16) | index
    assert back.before == (None if index % 2 else Shop("before")) and back.after == Shop("after")


def test_positions_order_an_entitys_events() -> None:
    shop = uuid.uuid4()
    positions = []
    for offset, index in [(3, 0), (3, 1), (4, 0), (10, 0)]:
        event = Open(shop, "x")
        positions.append(STREAM.decode(STREAM.record(shop, event_id(meta(0, offset), index), index, event,
                                                     meta(0, offset)).value).position)
    assert positions == sorted(positions) and len(set(positions)) == 4


@pytest.mark.parametrize("data", [b"", b"\x00\x01garbage", None])
def test_a_record_that_is_not_an_event_is_one_line(data: Any) -> None:
    with pytest.raises(SerializationError) as raised:
        STREAM.decode(data)
    assert "\n" not in str(raised.value)


def test_a_topic_is_required_and_an_unmapped_type_is_named() -> None:
    with pytest.raises(ConfigError, match="needs a topic"):
        EventStream(DeciderStore(None, "ks", shops), "")
    from rxcqrs.cassandra.event_stream import avro_type

    with pytest.raises(ConfigError, match="a duration column has no Avro type"):
        avro_type("duration")
    assert avro_type("frozen<map<uuid, frozen<list<int>>>>") == {"type": "map", "values": {"type": "array",
                                                                                          "items": "int"}}


def test_a_projection_without_totals_refuses_a_truncate_that_could_not_replay() -> None:
    """Only totals views store offsets; an entity-only projection would truncate and resume at the group's
    Kafka offsets, leaving its views empty: refused in one line, nothing executed."""
    from rxcqrs.cassandra.projection import EntityView, Projection

    class NoSession:
        def execute(self, *args: Any, **kwargs: Any) -> None:
            raise AssertionError("nothing may be executed")

    names = EntityView("shop_names", {"shop": "uuid", "name": "text"}, ["shop"],
                       lambda shop, state: [] if state is None else [{"shop": shop, "name": state.name}])
    with pytest.raises(ConfigError, match="rebuild into fresh tables with a new consumer group") as raised:
        Projection(NoSession(), "ks", "shop_views", STREAM, [names]).truncate()
    assert "\n" not in str(raised.value)
