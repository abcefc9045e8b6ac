"""Grouping idempotent statements into batches that stay within Cassandra's batch limits.

Statements of one partition (same routing key) go together, up to ``rows`` statements and about ``size``
bytes of values per batch (Cassandra warns at 5 KiB and refuses at 50 KiB by default). Such a batch is one
request and one mutation per partition: it saves round trips, never atomicity (unlogged), so every statement
in it must be idempotent on its own.
"""

from __future__ import annotations

import weakref
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any, Callable, TypeVar

__all__ = ["group_statements", "partition_of", "requests_of", "statement_size", "statements_size"]

T = TypeVar("T")
#: what waits to be sent: its owner, its statements (bound, single-row), what to do once they are written and
#: their size (the sum of their :func:`statement_size`, measured once by the caller)
Item = tuple[T, list[Any], Any, int]


def group_statements(statements: list[Any], rows: int = 100, size: int = 40_000) -> list[Any]:
    """``statements`` as unlogged batches per partition; a group of one is sent as that statement, and a
    statement that is not a bound one (it cannot join a batch) goes alone."""
    if len(statements) < 2:
        return list(statements)
    from cassandra.query import BatchStatement, BatchType, BoundStatement

    groups: list[list[Any]] = []
    open_groups: dict[Any, tuple[list[Any], int]] = {}
    for statement in statements:
        if not isinstance(statement, BoundStatement):
            groups.append([statement])
            continue
        cost = statement_size(statement)
        partition = partition_of(statement)
        group, weight = open_groups.get(partition, (None, 0))
        if group is None or len(group) >= rows or weight + cost > size:
            group, weight = [], 0
            groups.append(group)
        group.append(statement)
        open_groups[partition] = (group, weight + cost)
    out = []
    for group in groups:
        if len(group) == 1:
            out.append(group[0])
            continue
        batch = BatchStatement(BatchType.UNLOGGED)
        for statement in group:
            batch.add(statement)
        batch.is_idempotent = True
        out.append(batch)
    return out


def statement_size(statement: Any) -> int:
    """Roughly the bytes a bound statement sends (its serialized values)."""
    values = getattr(statement, "values", None) or ()
    try:
        return 64 + sum(map(len, filter(None, values)))  # serialized values: bytes, or None (null)
    except TypeError:  # a value the driver did not serialize (e.g. UNSET_VALUE)
        return 64 + sum(len(v) if isinstance(v, (bytes, bytearray)) else 16 for v in values)


def statements_size(statements: list[Any]) -> int:
    """The sum of the statements' :func:`statement_size` (of bound ones: made of their values at once)."""
    try:
        return 64 * len(statements) + sum(map(len, filter(None, chain.from_iterable(map(_values, statements)))))
    except (TypeError, AttributeError):  # a value the driver did not serialize, or a statement that is not bound
        return sum(map(statement_size, statements))


_values = attrgetter("values")


def partition_of(statement: Any) -> Any:
    """What tells the partition a statement writes apart from others: a bound statement's serialized partition
    key values (one value, or a tuple of them), else its ``routing_key``. Cheaper than a bound statement's
    ``routing_key``, which packs a composite key into one value (the driver needs that only for the first
    statement of a batch)."""
    prepared = getattr(statement, "prepared_statement", None)
    if prepared is None:
        return statement.routing_key
    key_of = _key_getters.get(id(prepared))
    if key_of is None:
        indexes = prepared.routing_key_indexes
        key_of = _key_getters[id(prepared)] = itemgetter(*indexes) if indexes else _no_key
        weakref.finalize(prepared, _key_getters.pop, id(prepared), None)  # before its id can be another's
    return key_of(statement.values)


def _no_key(_values: Any) -> None:
    return None


#: per prepared statement (by id, while it lives): what picks its partition key's values out of a bound
#: statement's (a plain dict: looked up for every statement of a hot path)
_key_getters: dict[int, Callable[[Any], Any]] = {}


def requests_of(items: list[Item[T]], partitions: int, rows: int = 100, size: int = 40_000) -> list[list[Item[T]]]:
    """Consecutive ``items`` grouped into requests of up to ``partitions`` partitions, ``rows`` statements and
    about ``size`` bytes (an item larger than that is a request of its own)."""
    out: list[list[Item[T]]] = []
    chunk: list[Item[T]] = []
    keys: set[Any] = set()
    count = weight = 0
    for item in items:
        mine = set(map(partition_of, item[1]))
        cost = item[3]
        if chunk and (len(keys | mine) > partitions or count + len(item[1]) > rows or weight + cost > size):
            out.append(chunk)
            chunk, keys, count, weight = [], set(), 0, 0
        chunk.append(item)
        keys |= mine
        count += len(item[1])
        weight += cost
    if chunk:
        out.append(chunk)
    return out
