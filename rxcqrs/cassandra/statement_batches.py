"""Grouping idempotent statements into unlogged batches that stay within Cassandra's batch limits.

Statements of one partition (same routing key) go together, up to ``rows`` statements and about ``size``
bytes of values per batch (Cassandra warns at 5 KiB and refuses at 50 KiB by default). Such a batch is one
request and one mutation per partition: it saves round trips, never atomicity (unlogged), so every statement
in it must be idempotent on its own.
"""

from __future__ import annotations

from typing import Any

__all__ = ["group_statements", "statement_size"]


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
        partition = getattr(statement, "routing_key", None)
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
