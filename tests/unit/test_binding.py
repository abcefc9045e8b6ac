"""bind_fast, time_uuid and uuid_of_int: the driver's (and the stdlib's) own results, cheaper (hypothesis:
any values, same result)."""

from __future__ import annotations

import pickle
import threading
import uuid
from datetime import datetime, timedelta, timezone

from cassandra.cqltypes import DateType, Int32Type, LongType, TimeUUIDType, UUIDType, VarcharType
from cassandra.protocol import ColumnMetadata
from cassandra.query import UNSET_VALUE, PreparedStatement
from cassandra.util import unix_time_from_uuid1
from hypothesis import given, settings
from hypothesis import strategies as st

from rxcqrs.cassandra.binding import bind_fast
from rxcqrs.cassandra.timeuuid import time_uuid, uuid_of_int

TYPES = [UUIDType, Int32Type, DateType, TimeUUIDType, VarcharType, LongType]


def prepared(routing: list[int] | None = (0,)) -> PreparedStatement:  # type: ignore[assignment]
    columns = [ColumnMetadata("ks", "t", f"c{i}", t) for i, t in enumerate(TYPES)]
    return PreparedStatement(columns, b"id", list(routing) if routing else None, "INSERT ...", "ks", 4, [], None)


times = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(timezone.utc)),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                 timezones=st.just(timezone(timedelta(hours=-7)))),
    st.integers(min_value=-2**62, max_value=2**62))
rows = st.tuples(st.uuids() | st.none(), st.integers(-2**31, 2**31 - 1) | st.none(), times | st.none(),
                 st.uuids(version=1) | st.none(), st.text() | st.none(), st.integers(-2**63, 2**63 - 1) | st.none())


@settings(max_examples=400, deadline=None)
@given(rows)
def test_bind_fast_serializes_as_the_driver_does(values: tuple) -> None:
    statement = prepared()
    fast, driver = bind_fast(statement, list(values)), statement.bind(list(values))
    assert fast.values == driver.values
    assert fast.raw_values == list(values)
    assert fast.keyspace == driver.keyspace and fast.consistency_level == driver.consistency_level
    if values[0] is not None:
        assert fast.routing_key == driver.routing_key


def test_bind_fast_leaves_what_it_does_not_cover_to_the_driver() -> None:
    statement = prepared()
    values = [uuid.uuid4(), 1, datetime.now(timezone.utc), time_uuid(), "x", 2]
    by_name = {f"c{i}": v for i, v in enumerate(values)}
    assert bind_fast(statement, by_name).values == statement.bind(by_name).values
    short = values[:4]  # fewer values: the rest unset (protocol v4)
    assert bind_fast(statement, short).values == statement.bind(short).values
    unset = values[:4] + [UNSET_VALUE, 2]
    assert bind_fast(statement, unset).values == statement.bind(unset).values


def test_a_column_type_whose_serializer_takes_unset_values_leaves_unset_to_the_driver() -> None:
    class Lenient(VarcharType):  # a serializer that would write UNSET_VALUE as a value
        @staticmethod
        def serialize(value: object, protocol_version: int) -> bytes:
            return str(value).encode()

    columns = [ColumnMetadata("ks", "t", "c0", UUIDType), ColumnMetadata("ks", "t", "c1", Lenient)]
    statement = PreparedStatement(columns, b"id", [0], "INSERT ...", "ks", 4, [], None)
    values = [uuid.uuid4(), UNSET_VALUE]
    assert bind_fast(statement, values).values == statement.bind(values).values == [values[0].bytes, UNSET_VALUE]
    assert bind_fast(statement, [values[0], "x"]).values == [values[0].bytes, b"x"]


def test_a_wrong_type_gets_the_drivers_error_naming_the_column() -> None:
    statement = prepared()
    bad = [uuid.uuid4(), "not an int", None, None, None, None]
    try:
        bind_fast(statement, bad)
    except TypeError as exc:
        assert 'column "c1"' in str(exc)
    else:
        raise AssertionError("a str bound to an int column must fail")


def test_idempotent_flag_is_set_when_asked() -> None:
    statement = prepared()
    values = [uuid.uuid4(), 1, None, None, None, None]
    assert bind_fast(statement, values, idempotent=True).is_idempotent is True
    assert bind_fast(statement, values).is_idempotent == statement.bind(values).is_idempotent


def test_time_uuids_are_version_1_now_and_never_repeat_across_threads() -> None:
    made: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def make(out: list[uuid.UUID]) -> None:
        out.extend(time_uuid() for _ in range(20_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [u for out in made for u in out]
    assert len(set(every)) == len(every)
    for out in made:  # each thread sees them strictly increasing in time
        assert all(a.time < b.time for a, b in zip(out, out[1:], strict=False))
    u = time_uuid()
    assert u.version == 1 and u.variant == uuid.RFC_4122
    assert abs(unix_time_from_uuid1(u) - datetime.now(timezone.utc).timestamp()) < 5


@given(st.integers(min_value=0, max_value=(1 << 128) - 1))
def test_uuid_of_int_is_the_uuid_of_that_int(value: int) -> None:
    made, expected = uuid_of_int(value), uuid.UUID(int=value)
    assert made == expected and hash(made) == hash(expected) and str(made) == str(expected)
    assert made.bytes == expected.bytes and made.version == expected.version and made.is_safe == expected.is_safe
    assert pickle.loads(pickle.dumps(made)) == expected
