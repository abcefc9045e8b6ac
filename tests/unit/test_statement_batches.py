"""requests_of: consecutive items grouped into requests within a count of partitions, rows and bytes; partition_of:
the partition a bound statement writes, told apart as the driver's routing key tells it; statements_size: the sum
of statement_size."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest

import rxcqrs.cassandra.statement_batches as statement_batches
from rxcqrs.cassandra.statement_batches import partition_of, requests_of, statement_size, statements_size


def _item(name: str, *partitions: str, size: int = 10) -> tuple[str, list[Any], None, int]:
    statements = [SimpleNamespace(routing_key=p.encode(), values=[b"x" * size]) for p in partitions]
    return name, statements, None, sum(map(statement_size, statements))


def _names(requests: list[list[tuple[str, list[Any], None, int]]]) -> list[list[str]]:
    return [[name for name, _s, _t, _size in request] for request in requests]


def test_items_share_a_request_up_to_the_partitions() -> None:
    items = [_item("a", "1", "2"), _item("b", "2", "3"), _item("c", "4"), _item("d", "5", "6")]
    assert _names(requests_of(items, partitions=4)) == [["a", "b", "c"], ["d"]]


def test_rows_and_bytes_end_a_request() -> None:
    assert _names(requests_of([_item(n, n) for n in "abcde"], partitions=10, rows=2)) == [["a", "b"], ["c", "d"],
                                                                                         ["e"]]
    one = statement_size(_item("a", "1", size=100)[1][0])
    assert _names(requests_of([_item(n, n, size=100) for n in "abc"], partitions=10, size=2 * one)) == [
        ["a", "b"], ["c"]]


def test_an_item_larger_than_a_request_goes_alone() -> None:
    items = [_item("a", "1"), _item("big", *"23456"), _item("c", "7")]
    assert _names(requests_of(items, partitions=3)) == [["a"], ["big"], ["c"]]


def test_nothing_to_send_is_no_request() -> None:
    assert requests_of([], partitions=10) == []


def _bound(key_indexes: list[int], values: list[bytes | None]) -> Any:
    from cassandra.query import BoundStatement, PreparedStatement

    prepared = PreparedStatement(None, b"id", key_indexes, "INSERT ...", "ks", 5, None, None)
    bound = BoundStatement(prepared)
    bound.values = values
    return bound


@pytest.mark.parametrize("key_indexes", [[0], [0, 2], [1, 0]])
def test_partition_of_tells_bound_statements_apart_exactly_as_their_routing_keys_do(key_indexes: list[int]) -> None:
    rows = [[a, b, c] for a, b, c in itertools.product([b"e1", b"e2"], [b"x", b"y"], [b"\x00\x01", b"\x00\x02"])]
    for first, second in itertools.product(rows, repeat=2):
        same_key = _bound(key_indexes, first).routing_key == _bound(key_indexes, second).routing_key
        assert (partition_of(_bound(key_indexes, first)) == partition_of(_bound(key_indexes, second))) == same_key
    assert partition_of(_bound([], [b"a"])) is None  # no partition key known: what routing_key says too
    assert partition_of(SimpleNamespace(routing_key=b"k")) == b"k"  # not a bound statement: its routing key


def test_a_prepared_statement_that_is_gone_leaves_no_key_getter() -> None:
    import gc

    before = len(statement_batches._key_getters)
    partition_of(_bound([0], [b"e1"]))
    gc.collect()
    assert len(statement_batches._key_getters) == before


def test_statements_size_is_the_sum_of_each_statements_size() -> None:
    from cassandra.query import UNSET_VALUE

    bound = [_bound([0], [b"e1", None, b"xyz"]), _bound([0], [b"", b"abcd"])]
    unset = _bound([0], [b"e1", UNSET_VALUE])
    plain = SimpleNamespace(routing_key=b"k")  # not a bound statement: no values
    for statements in (bound, [*bound, unset], [*bound, plain], []):
        assert statements_size(statements) == sum(map(statement_size, statements))
