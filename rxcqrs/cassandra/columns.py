"""Dataclass fields as CQL columns: the type of each column, and values to and from the driver.

Python -> CQL: ``str`` text, ``int`` bigint, ``float`` double, ``bool`` boolean, ``uuid.UUID`` uuid,
``datetime`` timestamp, ``date`` date, ``Decimal`` decimal, ``bytes`` blob; ``dict`` / ``Mapping[K, V]``
map<k, v>, ``set`` / ``frozenset[T]`` set<t>, ``list`` / ``tuple[T, ...]`` frozen<list<t>> (collections are
always written whole); ``Optional[T]`` is T (every column is nullable). ``Annotated[T, "int"]`` (or the
``column_types`` of the store) picks another CQL type. Other types are refused with the field named.
Cassandra stores an empty collection as null: it reads back as an empty one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import types
import typing
import uuid
from collections import abc
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from rxcqrs.cassandra.identifiers import cql_type, identifier
from rxcqrs.exceptions import ConfigError, IdentifierError

__all__ = ["Column", "columns_of", "conversion_to_cql"]

_SCALARS: dict[Any, str] = {str: "text", int: "bigint", float: "double", bool: "boolean", uuid.UUID: "uuid",
                            dt.datetime: "timestamp", dt.date: "date", decimal.Decimal: "decimal", bytes: "blob"}
_MAPS = (dict, abc.Mapping, abc.MutableMapping)
_SETS = (set, frozenset, abc.Set, abc.MutableSet)
_LISTS = (list, tuple, abc.Sequence, abc.MutableSequence)


@dataclass(frozen=True)
class Column:
    """One field as a column: its CQL type, and how its values go to the driver and come back."""

    name: str
    cql: str
    to_cql: Callable[[Any], Any]
    from_cql: Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


def conversion_to_cql(col: Column) -> Callable[[Any], Any] | None:
    """``col.to_cql``, or None where a value goes to the driver as it is (a hot path skips the call)."""
    return None if col.to_cql is _same else col.to_cql


def _strip_optional(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _scalar(hint: Any, where: str) -> str:
    hint = _strip_optional(hint)
    if typing.get_origin(hint) is typing.Literal:
        kinds = {type(v) for v in typing.get_args(hint)}
        hint = kinds.pop() if len(kinds) == 1 else hint
    found = _SCALARS.get(hint)
    if found is None:
        raise ConfigError(f"{where}: {hint!r} has no CQL column type here (use str, int, float, bool, UUID, datetime, "
                          "date, Decimal, bytes, or a dict/set/list of them; or give the column's CQL type)")
    return found


def column(name: str, hint: Any, where: str, cql: str | None = None) -> Column:
    """The column of field ``name`` annotated ``hint`` (``cql``: the CQL type chosen for it)."""
    try:
        identifier(name, "column")
    except IdentifierError as exc:
        raise IdentifierError(f"{where}: {exc}; rename the field") from None
    if typing.get_origin(hint) is typing.Annotated:
        base, *extra = typing.get_args(hint)
        cql = cql or next((e for e in extra if isinstance(e, str)), None)
        hint = base
    hint = _strip_optional(hint)
    origin = typing.get_origin(hint) or hint
    args = typing.get_args(hint)
    to_cql: Callable[[Any], Any] = _same
    from_cql: Callable[[Any], Any] = _same
    if origin in _MAPS:
        key, value = args if len(args) == 2 else (None, None)
        derived = f"map<{_scalar(key, where)}, {_scalar(value, where)}>" if key is not None else None
        to_cql, from_cql = (lambda v: None if v is None else dict(v)), (lambda v: dict(v or {}))
    elif origin in _SETS:
        derived = f"set<{_scalar(args[0], where)}>" if args else None
        sets: Any = frozenset if origin is frozenset else set
        to_cql, from_cql = (lambda v: None if v is None else set(v)), (lambda v: sets(v or ()))
    elif origin in _LISTS:
        element = args[0] if args else None
        derived = f"frozen<list<{_scalar(element, where)}>>" if element is not None else None
        lists: Any = tuple if origin is tuple else list
        to_cql, from_cql = (lambda v: None if v is None else list(v)), (lambda v: lists(v or ()))
    else:
        derived = _scalar(hint, where) if cql is None else None
    chosen = cql or derived
    if chosen is None:
        raise ConfigError(f"{where}: give the element types of {hint!r} (e.g. dict[str, int])")
    return Column(name, cql_type(chosen), to_cql, from_cql)


def columns_of(cls: type, what: str, overrides: Mapping[str, str] | None = None) -> dict[str, Column]:
    """The columns of a dataclass's fields, in field order (``overrides``: field -> CQL type)."""
    from rxcqrs.decider import type_hints

    if not dataclasses.is_dataclass(cls):
        raise ConfigError(f"the {what} type must be a dataclass, got {cls!r}")
    overrides = overrides or {}
    return {name: column(name, hint, f"{what} {cls.__name__}.{name}", overrides.get(name))
            for name, hint in type_hints(cls).items()}
