"""Where the local servers live and which ports they use.

One per-user home (``~/.cache/rxcqrs`` or ``$RXCQRS_HOME``) holds the jars, configs, data, logs and
PID/state files, so every checkout and every notebook shares the same jars and the same running servers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from rxcqrs.exceptions import ConfigError

__all__ = ["ServicesSettings", "default_home"]


def default_home() -> Path:
    """``$RXCQRS_HOME``, else ``$XDG_CACHE_HOME/rxcqrs``, else ``~/.cache/rxcqrs``."""
    if os.environ.get("RXCQRS_HOME"):
        return Path(os.environ["RXCQRS_HOME"]).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(cache).expanduser() / "rxcqrs").resolve()


def _port(value: Any, name: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a port number, got {value!r}") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name} must be in 1..65535, got {port}")
    return port


@dataclass(frozen=True)
class ServicesSettings:
    """Everything ``rxcqrs services`` needs; build with :meth:`from_env` to honour ``RXCQRS_*``."""

    home: Path = field(default_factory=default_home)
    #: where the jars are cached; defaults to ``<home>/jars`` (tests point a throwaway home at shared jars)
    jars: Path | None = None
    host: str = "127.0.0.1"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    cassandra_port: int = 9042
    cassandra_storage_port: int = 7000
    cassandra_jmx_port: int = 7199
    kafka_heap: str = "512m"
    cassandra_heap: str = "1g"
    kafka_start_timeout: float = 120.0
    cassandra_start_timeout: float = 240.0
    stop_timeout: float = 60.0
    #: a JDK 17 ``java`` binary; found automatically when ``None``
    java: str | None = None

    def __post_init__(self) -> None:
        for name in ("kafka_port", "kafka_controller_port", "cassandra_port", "cassandra_storage_port",
                     "cassandra_jmx_port"):
            object.__setattr__(self, name, _port(getattr(self, name), name))
        ports = [self.kafka_port, self.kafka_controller_port, self.cassandra_port,
                 self.cassandra_storage_port, self.cassandra_jmx_port]
        if len(set(ports)) != len(ports):
            raise ConfigError(f"the five service ports must differ, got {ports}")
        object.__setattr__(self, "home", Path(self.home).expanduser().resolve())
        if self.jars is not None:
            object.__setattr__(self, "jars", Path(self.jars).expanduser().resolve())

    @property
    def jar_cache(self) -> Path:
        return self.jars if self.jars is not None else self.home / "jars"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    def with_(self, **changes: Any) -> "ServicesSettings":
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "ServicesSettings":
        """Read ``RXCQRS_HOME``, ``RXCQRS_JARS``, ``RXCQRS_KAFKA_PORT``, ``RXCQRS_CASSANDRA_PORT``, ... ."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("RXCQRS_HOME"):
            values["home"] = Path(env["RXCQRS_HOME"])
        if env.get("RXCQRS_JARS"):
            values["jars"] = Path(env["RXCQRS_JARS"])
        if env.get("RXCQRS_JAVA"):
            values["java"] = env["RXCQRS_JAVA"]
        for name in ("kafka_port", "kafka_controller_port", "cassandra_port", "cassandra_storage_port",
                     "cassandra_jmx_port"):
            key = "RXCQRS_" + name.upper()
            if env.get(key):
                values[name] = env[key]
        for name in ("kafka_heap", "cassandra_heap"):
            key = "RXCQRS_" + name.upper()
            if env.get(key):
                values[name] = env[key]
        values.update(overrides)
        return cls(**values)
