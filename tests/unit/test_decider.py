"""A Decider defined by the domain alone: its checks (one clear line each), its fold, the columns derived from
its types, and the ids of decided events."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from dataclasses import dataclass, field, make_dataclass
from typing import AbstractSet, Annotated, Any, Mapping, Optional, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxcqrs import Decider, Reject
from rxcqrs.cassandra.columns import columns_of
from rxcqrs.cassandra.decider_store import event_id
from rxcqrs.exceptions import ConfigError, RxCqrsError
from rxcqrs.messages import RecordMetadata
from tests.counters import TOTALS as counters
from tests.counters import Add, Added, Total, decide, evolve


def test_decided_is_a_list_of_events_or_a_rejection() -> None:
    assert counters.decided(None, Add("a", 5)) == [Added(5)]
    assert counters.decided(None, Add("a", 700)) == [Added(700), Added(1)]
    assert counters.decided(None, Add("a", 0)) == []
    assert counters.decided(None, Add("a", -1)) == Reject("negative")
    assert counters.run([Add("a", 5), Add("a", -1), Add("a", 210), Add("a", 0)]) == Total(216)
    assert counters.fold([Added(2), Added(3)], Total(1)) == Total(6)


@pytest.mark.parametrize("change, message", [
    ({"key": "missing"}, "the key 'missing' is not a field of Add"),
    ({"state": int}, "the state type must be a dataclass"),
    ({"event": (Added, "x")}, "the event type must be a dataclass"),
])
def test_a_wrong_definition_is_one_clear_line(change: dict[str, Any], message: str) -> None:
    options: dict[str, Any] = {"command": Add, "state": Total, "event": Added, "key": "entity", "decide": decide,
                               "evolve": evolve, **change}
    with pytest.raises(ConfigError, match=message) as raised:
        Decider("totals", **options)
    assert "\n" not in str(raised.value) and isinstance(raised.value, RxCqrsError)


def test_decide_returning_something_else_is_named() -> None:
    wrong = Decider("totals", command=Add, state=Total, event=Added, key="entity",
                    decide=lambda s, c: "oops", evolve=evolve)
    with pytest.raises(ConfigError, match="decide returned 'oops', which is not one of the event types"):
        wrong.decided(None, Add("a", 1))


def test_two_event_types_with_one_name_are_refused() -> None:
    other = type("Added", (), {"__annotations__": {"amount": int}})
    with pytest.raises(ConfigError, match="two event types share a name"):
        Decider("totals", command=Add, state=Total, event=(Added, dataclass(other)), key="entity", decide=decide,
                evolve=evolve)


@dataclass
class Everything:
    text: str
    number: int
    ratio: float
    flag: bool
    ident: uuid.UUID
    when: dt.datetime
    day: dt.date
    money: decimal.Decimal
    raw: bytes
    maybe: Optional[int]
    union: int | None
    counts: dict[str, int]
    tags: frozenset[str]
    sequence: tuple[int, ...]
    names: list[str]
    small: Annotated[int, "int"]
    mapping: Mapping[str, int]
    abstract: AbstractSet[int]
    seq: Sequence[str]
    chosen: int = 0
    extra: dict[uuid.UUID, int] = field(default_factory=dict)
    typed: Mapping[uuid.UUID, int] = field(default_factory=dict)


def test_every_supported_field_type_has_its_column() -> None:
    columns = columns_of(Everything, "state", {"chosen": "smallint", "typed": "map<uuid, int>"})
    assert {name: c.cql for name, c in columns.items()} == {
        "text": "text", "number": "bigint", "ratio": "double", "flag": "boolean", "ident": "uuid",
        "when": "timestamp", "day": "date", "money": "decimal", "raw": "blob", "maybe": "bigint", "union": "bigint",
        "counts": "map<text,bigint>", "tags": "set<text>", "sequence": "frozen<list<bigint>>",
        "names": "frozen<list<text>>", "small": "int", "mapping": "map<text,bigint>", "abstract": "set<bigint>",
        "seq": "frozen<list<text>>", "chosen": "smallint", "extra": "map<uuid,bigint>", "typed": "map<uuid,int>"}
    # empty collections are stored as null and read back as empty ones of the field's kind
    assert columns["tags"].from_cql(None) == frozenset() and isinstance(columns["tags"].from_cql({"a"}), frozenset)
    assert columns["sequence"].from_cql([1, 2]) == (1, 2) and columns["names"].from_cql(None) == []
    assert columns["counts"].to_cql({"a": 1}) == {"a": 1} and columns["counts"].from_cql(None) == {}
    # a chosen CQL type keeps the conversions of the field's kind
    assert columns["typed"].from_cql(None) == {} and columns["mapping"].from_cql(None) == {}


def test_a_field_without_a_column_type_names_the_field() -> None:
    @dataclass
    class Nested:
        inner: Total

    with pytest.raises(ConfigError, match=r"state Nested.inner: .*Total.* has no CQL column type"):
        columns_of(Nested, "state")

    @dataclass
    class Bare:
        items: dict  # type: ignore[type-arg]

    with pytest.raises(ConfigError, match=r"state Bare.items: give the element types"):
        columns_of(Bare, "state")

    @dataclass
    class Keyword:
        order: int

    with pytest.raises(RxCqrsError, match=r"state Keyword.order: invalid column 'order': it is a reserved CQL keyword; "
                                          "rename the field"):
        columns_of(Keyword, "state")


def meta(partition: int, offset: int, topic: str = "t") -> RecordMetadata:
    return RecordMetadata(topic, partition, offset, 0)


@given(st.integers(0, 50), st.integers(0, 2**40), st.integers(0, 2**16 - 2))
def test_event_ids_are_stable_distinct_and_ordered_within_a_command(partition: int, offset: int, index: int) -> None:
    first = event_id(meta(partition, offset), index)
    assert first == event_id(meta(partition, offset), index)  # every delivery decides the same ids
    assert first.version == 8 and first.variant == uuid.RFC_4122
    assert first < event_id(meta(partition, offset), index + 1)  # replay order among one command's events
    assert first != event_id(meta(partition, offset + 1), index)
    assert first != event_id(meta(partition + 1, offset), index)
    assert first != event_id(meta(partition, offset, "other"), index)


def test_too_many_events_for_one_command_are_refused() -> None:
    with pytest.raises(ConfigError, match="more than 65536 events"):
        event_id(meta(0, 1), 1 << 16)


def test_fields_named_like_the_storage_bookkeeping_are_refused_naming_them() -> None:
    from rxcqrs.cassandra.decider_store import DeciderStore

    Seq = make_dataclass("Seq", [("seq", int)], frozen=True)
    Timed = make_dataclass("Timed", [("event_time", int)], frozen=True)

    with pytest.raises(ConfigError, match=r"state Seq.seq: 'seq' is a column rxcqrs keeps for itself"):
        DeciderStore(None, "ks", Decider("c", command=Add, state=Seq, event=Added, key="entity", decide=decide,
                                         evolve=evolve))
    with pytest.raises(ConfigError, match=r"event Timed.event_time: 'event_time' is a column the event log keeps"):
        DeciderStore(None, "ks", Decider("c", command=Add, state=Total, event=Timed, key="entity", decide=decide,
                                         evolve=evolve))
    store = DeciderStore(None, "ks", counters)
    assert store.tables["totals"] == {"entity": "text", "total": "bigint", "deleted": "boolean", "seq": "bigint",
                                      "applied": "map<int,bigint>"}
    assert store.payload(Added(3)) == {"event_type": "Added", "amount": 3}
