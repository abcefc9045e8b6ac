"""requests_of: consecutive items grouped into requests within a count of partitions, rows and bytes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from rxcqrs.cassandra.statement_batches import requests_of, statement_size


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
