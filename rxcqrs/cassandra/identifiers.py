"""CQL identifiers are validated before they reach any CQL text: values always travel as bound parameters,
but keyspace, table and column names cannot, so a malformed or malicious name must be refused here."""

from __future__ import annotations

import re

from rxcqrs.exceptions import IdentifierError

__all__ = ["identifier", "qualified", "cql_type"]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}\Z")
# reserved CQL keywords: unquoted they are syntax, so they are refused as names
_RESERVED = frozenset("""add allow alter and apply asc authorize batch begin by columnfamily create delete desc
describe drop entries execute from full grant if in index infinity insert into is keyspace limit materialized
modify nan norecursive not null of on or order primary rename replace revoke schema select set table to token
truncate unlogged unset update use using view where with""".split())
_TYPE = re.compile(
    r"(ascii|bigint|blob|boolean|counter|date|decimal|double|duration|float|inet|int|smallint|text|time|timestamp"
    r"|timeuuid|tinyint|uuid|varchar|varint)\Z")


def identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` lower-cased if it is a safe unquoted CQL identifier, else raise :class:`IdentifierError`."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise IdentifierError(f"invalid {what} {name!r}: use a letter then up to 47 letters, digits or underscores")
    lowered = name.lower()
    if lowered in _RESERVED:
        raise IdentifierError(f"invalid {what} {name!r}: it is a reserved CQL keyword")
    return lowered


def qualified(keyspace: str, table: str) -> str:
    return f"{identifier(keyspace, 'keyspace')}.{identifier(table, 'table')}"


def cql_type(text: str) -> str:
    """Validate a CQL column type: a native type, or list/set/map/frozen/tuple of them."""
    cleaned = re.sub(r"\s+", "", text.lower())

    def check(t: str) -> None:
        match = re.fullmatch(r"(list|set|frozen)<(.+)>", t)
        if match:
            check(match.group(2))
            return
        match = re.fullmatch(r"(map|tuple)<(.+)>", t)
        if match:
            depth, parts, cur = 0, [], ""
            for ch in match.group(2):
                if ch == "," and depth == 0:
                    parts.append(cur)
                    cur = ""
                    continue
                depth += ch == "<"
                depth -= ch == ">"
                cur += ch
            parts.append(cur)
            if match.group(1) == "map" and len(parts) != 2:
                raise IdentifierError(f"invalid CQL type {text!r}: map needs two types")
            for part in parts:
                check(part)
            return
        if not _TYPE.match(t):
            raise IdentifierError(f"invalid CQL type {text!r}")

    check(cleaned)
    return cleaned
