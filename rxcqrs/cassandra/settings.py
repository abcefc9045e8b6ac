"""Frozen Cassandra settings and the session factory (token/DC-aware load balancing, one execution profile,
a retry policy that never re-sends a non-idempotent request whose outcome is unknown, rows as named tuples
of cached classes).

Credentials and SSL options are passed through to the driver and masked in ``repr`` and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from rxcqrs.cassandra.identifiers import identifier
from rxcqrs.exceptions import ConfigError, StageError
from rxcqrs.redact import redacted_repr

__all__ = ["CassandraSettings", "connect"]

_LEVELS = ("ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "SERIAL", "LOCAL_SERIAL",
           "LOCAL_ONE")


def _default_port() -> int:
    raw = os.environ.get("RXCQRS_CASSANDRA_PORT", "9042")
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"RXCQRS_CASSANDRA_PORT must be a port number (1-65535), got {raw!r}")
    return int(raw)


def _default_hosts() -> tuple[str, ...]:
    raw = os.environ.get("RXCQRS_CASSANDRA_HOSTS")
    return tuple(h.strip() for h in raw.split(",") if h.strip()) if raw else ("127.0.0.1",)


@dataclass(frozen=True, repr=False)
class CassandraSettings:
    contact_points: Sequence[str] = field(default_factory=_default_hosts)
    port: int = field(default_factory=_default_port)
    keyspace: str | None = None
    local_dc: str = "datacenter1"
    consistency: str = "LOCAL_QUORUM"
    serial_consistency: str = "LOCAL_SERIAL"
    request_timeout: float = 10.0
    connect_timeout: float = 10.0
    #: how long at most between attempts to reconnect to a node that went down (the driver's default is 600 s)
    reconnect_max_delay: float = 10.0
    fetch_size: int = 1000
    #: pinned to avoid the driver's noisy downgrade dance (Cassandra 5.0 speaks v5); None = negotiate
    protocol_version: int | None = 5
    username: str | None = None
    password: str | None = None
    ssl_options: Mapping[str, Any] | None = None
    #: any other ``cassandra.cluster.Cluster`` keyword
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.contact_points, str):
            object.__setattr__(self, "contact_points", tuple(p.strip() for p in self.contact_points.split(",")))
        if not self.contact_points:
            raise ConfigError("at least one Cassandra contact point is required")
        if not 0 < int(self.port) < 65536:
            raise ConfigError(f"Cassandra port must be in 1..65535, got {self.port}")
        if self.keyspace is not None:
            identifier(self.keyspace, "keyspace")
        for name in ("consistency", "serial_consistency"):
            if getattr(self, name).upper() not in _LEVELS:
                raise ConfigError(f"{name} must be one of {_LEVELS}, got {getattr(self, name)!r}")
        if self.serial_consistency.upper() not in ("SERIAL", "LOCAL_SERIAL"):
            raise ConfigError("serial_consistency must be SERIAL or LOCAL_SERIAL")
        if (self.username is None) != (self.password is None):
            raise ConfigError("username and password go together")
        if self.request_timeout <= 0 or self.fetch_size < 1:
            raise ConfigError("request_timeout must be > 0 and fetch_size >= 1")

    __repr__ = redacted_repr

    def with_(self, **changes: Any) -> "CassandraSettings":
        return replace(self, **changes)


def connect(settings: CassandraSettings | None = None) -> Any:
    """A connected ``Session`` (with ``session.cluster`` to shut down). Unreachable -> clear :class:`StageError`."""
    from cassandra import ConsistencyLevel
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy

    s = settings or CassandraSettings()
    from rxcqrs.cassandra.outcomes import OutcomeRetryPolicy
    from rxcqrs.cassandra.rows import cached_named_tuple_factory

    profile = ExecutionProfile(
        row_factory=cached_named_tuple_factory,
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=s.local_dc)),
        retry_policy=OutcomeRetryPolicy(),
        consistency_level=getattr(ConsistencyLevel, s.consistency.upper()),
        serial_consistency_level=getattr(ConsistencyLevel, s.serial_consistency.upper()),
        request_timeout=s.request_timeout)
    options: dict[str, Any] = {"port": s.port, "execution_profiles": {EXEC_PROFILE_DEFAULT: profile},
                               "connect_timeout": s.connect_timeout,
                               "reconnection_policy": ExponentialReconnectionPolicy(0.5, s.reconnect_max_delay)}
    if s.protocol_version is not None:
        options["protocol_version"] = s.protocol_version
    if s.username is not None:
        options["auth_provider"] = PlainTextAuthProvider(username=s.username, password=s.password)
    if s.ssl_options:
        options["ssl_options"] = dict(s.ssl_options)
    options.update(s.extra)
    cluster = Cluster(list(s.contact_points), **options)
    try:
        session = cluster.connect(s.keyspace)
    except Exception as exc:
        _check_local_dc(cluster, s)
        cluster.shutdown()
        raise StageError(f"cannot connect to Cassandra at {','.join(s.contact_points)}:{s.port}"
                         f"{' keyspace ' + s.keyspace if s.keyspace else ''}: {_short(exc)}; is it running? "
                         "(`rxcqrs services up` starts a local one)") from exc
    _check_local_dc(cluster, s)
    session.default_fetch_size = s.fetch_size
    return session


def _check_local_dc(cluster: Any, s: CassandraSettings) -> None:
    """A local data center the cluster does not have sends no request anywhere: say so (and shut down)."""
    centers = {host.datacenter for host in cluster.metadata.all_hosts() if host.datacenter}
    if centers and s.local_dc not in centers:
        cluster.shutdown()
        raise ConfigError(f"Cassandra at {','.join(s.contact_points)}:{s.port} has no node in the local data center "
                          f"{s.local_dc!r} (its data centers: {', '.join(sorted(centers))}); set --local-dc, "
                          "$RXCQRS_CASSANDRA_LOCAL_DC or [cassandra] local_dc")


def _short(error: BaseException) -> str:
    """The driver's NoHostAvailable lists every host's error; one line is enough."""
    errors = getattr(error, "errors", None)
    if isinstance(errors, dict) and errors:
        host, first = next(iter(errors.items()))
        return f"{type(error).__name__} ({host}: {first})"
    return repr(error)
