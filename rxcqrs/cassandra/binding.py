"""bind_fast: a prepared statement bound to a sequence of values at about half the driver's cost.

The driver's ``BoundStatement.bind`` (cassandra-driver 3.30) builds a column-encryption descriptor (a named
tuple) for every value even when no encryption policy is set: for an event-log row of 12 columns that is more
than the serialization itself. Here each prepared statement's column serializers are looked up once and the
values serialized directly; anything the fast path does not cover (a dict of values, a column encryption
policy, ``UNSET_VALUE``, a wrong count) goes through the driver's own ``bind``, so the result and the errors
are the driver's. Safe from any thread (the cache only ever gains complete entries).
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Sequence

__all__ = ["bind_fast"]

Serializer = Callable[[Any, int], bytes]
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_ZERO = timedelta(0)
_int64 = struct.Struct(">q").pack


def _timestamp(serialize: Serializer) -> Serializer:
    """A ``timestamp`` column's serializer: the driver's own result for a datetime since the epoch (its
    arithmetic, ``seconds * 1e3 + microseconds / 1e3`` in doubles, which rounds far-future values to the nearest
    millisecond) without its time tuple; anything else goes to the driver's ``serialize``."""

    def fast(value: Any, protocol: int) -> bytes:
        if type(value) is datetime:
            since = value - (_NAIVE_EPOCH if value.tzinfo is None else _EPOCH)
            if since >= _ZERO:
                return _int64(int((since.days * 86400 + since.seconds) * 1e3 + since.microseconds / 1e3))
        return serialize(value, protocol)

    return fast


def _serializer(cql_type: Any) -> Serializer:
    from cassandra.cqltypes import DateType

    return _timestamp(cql_type.serialize) if cql_type is DateType else cql_type.serialize


#: per prepared statement: its column serializers and protocol version, or None (the driver binds it)
_serializers: "weakref.WeakKeyDictionary[Any, tuple[tuple[Serializer, ...], int] | None]" = weakref.WeakKeyDictionary()


def _plan(prepared: Any) -> tuple[tuple[Serializer, ...], int] | None:
    """The column serializers and protocol version of ``prepared``, or None where the fast path cannot go."""
    try:
        return _serializers[prepared]
    except KeyError:
        pass
    meta = prepared.column_metadata
    plan: tuple[tuple[Serializer, ...], int] | None = None
    if getattr(prepared, "column_encryption_policy", None) is None and meta:
        plan = (tuple(_serializer(column.type) for column in meta), prepared.protocol_version)
    _serializers[prepared] = plan
    return plan


def bind_fast(prepared: Any, values: Sequence[Any] | Mapping[str, Any], *, idempotent: bool | None = None) -> Any:
    """``prepared.bind(values)``, serialized without the driver's per-value descriptor; ``idempotent`` sets
    ``is_idempotent`` on the result (None: the prepared statement's)."""
    from cassandra.query import UNSET_VALUE, BoundStatement  # (the driver is imported only when used)

    plan = _plan(prepared)
    if plan is None or isinstance(values, Mapping) or len(values) != len(plan[0]) or UNSET_VALUE in values:
        bound = prepared.bind(values)
    else:
        serializers, protocol = plan
        bound = BoundStatement(prepared)
        try:
            bound.values = [None if value is None else serialize(value, protocol)
                            for serialize, value in zip(serializers, values, strict=True)]
        except Exception:  # let the driver name the column and the types
            bound = prepared.bind(values)
        bound.raw_values = values
    if idempotent is not None:
        bound.is_idempotent = idempotent
    return bound
