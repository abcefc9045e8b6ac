"""DDL helpers built only from validated identifiers and types, a per-session prepared-statement cache, and
serial reads at the session's serial consistency."""

from __future__ import annotations

import threading
import weakref
from typing import Any, Mapping, Sequence

from rxcqrs.cassandra.identifiers import cql_type, identifier, qualified
from rxcqrs.exceptions import ConfigError

__all__ = ["create_keyspace", "drop_keyspace", "create_table", "prepare", "prepare_serial", "serial_consistency"]

_DDL_TIMEOUT = 60.0


def create_keyspace(session: Any, name: str, replication: int | Mapping[str, int] = 1,
                    durable_writes: bool = True) -> str:
    """``CREATE KEYSPACE IF NOT EXISTS`` with SimpleStrategy (an int) or NetworkTopologyStrategy (dc -> rf)."""
    ks = identifier(name, "keyspace")
    if isinstance(replication, int):
        if replication < 1:
            raise ConfigError("replication factor must be >= 1")
        strategy = f"{{'class': 'SimpleStrategy', 'replication_factor': {int(replication)}}}"
    else:
        dcs = ", ".join(f"'{identifier(dc, 'data centre')}': {int(rf)}" for dc, rf in replication.items())
        strategy = f"{{'class': 'NetworkTopologyStrategy', {dcs}}}"
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {strategy} "
                    f"AND durable_writes = {'true' if durable_writes else 'false'}", timeout=_DDL_TIMEOUT)
    return ks


def drop_keyspace(session: Any, name: str) -> None:
    session.execute(f"DROP KEYSPACE IF EXISTS {identifier(name, 'keyspace')}", timeout=_DDL_TIMEOUT)


def create_table(session: Any, keyspace: str, table: str, columns: Mapping[str, str], partition_key: Sequence[str],
                 clustering: Sequence[tuple[str, str]] = (), static: Sequence[str] = ()) -> str:
    """``CREATE TABLE IF NOT EXISTS``; ``clustering`` is ``[(column, "ASC"|"DESC"), ...]``; ``static``: columns
    of the whole partition (a table with clustering columns only)."""
    cols = {identifier(c, "column"): cql_type(t) for c, t in columns.items()}
    pk = [identifier(c, "column") for c in partition_key]
    ck = [(identifier(c, "column"), order.upper()) for c, order in clustering]
    if not pk:
        raise ConfigError("a table needs a partition key")
    for c in pk + [c for c, _ in ck]:
        if c not in cols:
            raise ConfigError(f"key column {c!r} is not among the columns")
    if any(order not in ("ASC", "DESC") for _, order in ck):
        raise ConfigError("clustering order must be ASC or DESC")
    shared = {identifier(c, "column") for c in static}
    if shared and not ck:
        raise ConfigError("static columns need clustering columns")
    if not shared <= set(cols) or shared & {*pk, *(c for c, _ in ck)}:
        raise ConfigError(f"static columns {sorted(shared)} must be columns outside the primary key")
    key = f"(({', '.join(pk)}){''.join(', ' + c for c, _ in ck)})"
    body = ", ".join(f"{c} {t}{' static' if c in shared else ''}" for c, t in cols.items())
    order = f" WITH CLUSTERING ORDER BY ({', '.join(f'{c} {o}' for c, o in ck)})" if ck else ""
    name = qualified(keyspace, table)
    session.execute(f"CREATE TABLE IF NOT EXISTS {name} ({body}, PRIMARY KEY {key}){order}", timeout=_DDL_TIMEOUT)
    return name


_cache: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def prepare(session: Any, query: str) -> Any:
    """Prepare ``query`` once per session and reuse it (preparing is a blocking round trip)."""
    with _cache_lock:
        per_session = _cache.setdefault(session, {})
        found = per_session.get(query)
    if found is not None:
        return found
    prepared = session.prepare(query)
    with _cache_lock:
        return per_session.setdefault(query, prepared)


def serial_consistency(session: Any) -> Any:
    """The consistency of a serial read on ``session``: its default profile's serial consistency (the
    ``serial_consistency`` setting), ``SERIAL`` if it has none."""
    from cassandra import ConsistencyLevel

    return session.cluster.profile_manager.default.serial_consistency_level or ConsistencyLevel.SERIAL


def prepare_serial(session: Any, query: str) -> Any:
    """``query`` prepared as a serial read (:func:`serial_consistency`): a statement of its own, never the one
    :func:`prepare` shares, whose consistency other readers use."""
    prepared = session.prepare(query)
    prepared.consistency_level = serial_consistency(session)
    return prepared
