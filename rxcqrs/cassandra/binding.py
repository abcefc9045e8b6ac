"""bind_fast: a prepared statement bound to a sequence of values at about half the driver's cost.

The driver's ``BoundStatement.bind`` (cassandra-driver 3.30) builds a column-encryption descriptor (a named
tuple) for every value even when no encryption policy is set: for an event-log row of 12 columns that is more
than the serialization itself. Here each prepared statement's column serializers are looked up once and the
values serialized directly; anything the fast path does not cover (a dict of values, a column encryption
policy, ``UNSET_VALUE``, a wrong count) goes through the driver's own ``bind``, so the result and the errors
are the driver's. A :class:`Binder` keeps one statement's serializers for a hot path. Safe from any thread
(the cache only ever gains complete entries).
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Sequence

__all__ = ["Binder", "bind_fast", "binder"]

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


def _refuses_unset(serialize: Serializer, protocol: int) -> bool:
    """Whether ``serialize`` raises on ``UNSET_VALUE`` (then a value left unset falls back to the driver)."""
    from cassandra.query import UNSET_VALUE

    try:
        serialize(UNSET_VALUE, protocol)
    except Exception:
        return True
    return False


class Binder:
    """:func:`bind_fast` for one prepared statement, its column serializers looked up once: what a hot path
    keeps for a statement it binds again and again."""

    __slots__ = ("prepared", "_serializers", "_protocol", "_check_unset", "_bound")

    def __init__(self, prepared: Any) -> None:
        from cassandra.query import BoundStatement

        self.prepared = prepared
        self._bound = BoundStatement
        meta = prepared.column_metadata
        self._serializers: tuple[Serializer, ...] | None = None
        self._protocol = prepared.protocol_version
        self._check_unset = False
        if getattr(prepared, "column_encryption_policy", None) is None and meta:
            self._serializers = tuple(_serializer(column.type) for column in meta)
            # every driver serializer refuses UNSET_VALUE (so the driver binds it); one that took it would
            # serialize it as a value
            self._check_unset = not all(_refuses_unset(s, self._protocol) for s in self._serializers)

    def bind(self, values: Sequence[Any] | Mapping[str, Any], idempotent: bool | None = None) -> Any:
        """``prepared.bind(values)``; ``idempotent`` sets ``is_idempotent`` (None: the prepared statement's)."""
        serializers = self._serializers
        if serializers is None or (type(values) is not list and type(values) is not tuple
                                   and isinstance(values, Mapping)) or len(values) != len(serializers) \
                or (self._check_unset and _unset_in(values)):
            bound = self.prepared.bind(values)
        else:
            protocol = self._protocol
            bound = self._bound(self.prepared)
            try:
                bound.values = [None if value is None else serialize(value, protocol)
                                for serialize, value in zip(serializers, values, strict=True)]
            except Exception:  # let the driver name the column and the types (and bind what is unset)
                bound = self.prepared.bind(values)
            bound.raw_values = values
        if idempotent is not None:
            bound.is_idempotent = idempotent
        return bound


def _unset_in(values: Sequence[Any]) -> bool:
    from cassandra.query import UNSET_VALUE

    return UNSET_VALUE in values


#: per prepared statement: its binder
_binders: "weakref.WeakKeyDictionary[Any, Binder]" = weakref.WeakKeyDictionary()


def binder(prepared: Any) -> Binder:
    """The :class:`Binder` of ``prepared`` (one per prepared statement, made on first use)."""
    found = _binders.get(prepared)
    if found is None:
        found = _binders.setdefault(prepared, Binder(prepared))
    return found


def bind_fast(prepared: Any, values: Sequence[Any] | Mapping[str, Any], *, idempotent: bool | None = None) -> Any:
    """``prepared.bind(values)``, serialized without the driver's per-value descriptor; ``idempotent`` sets
    ``is_idempotent`` on the result (None: the prepared statement's)."""
    return binder(prepared).bind(values, idempotent)
