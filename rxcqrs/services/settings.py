"""Where the local servers live and which ports they use.

One per-user home (``~/.cache/rxcqrs`` or ``$RXCQRS_HOME``) holds the jars, configs, data, logs and
PID/state files, so every checkout and every notebook shares the same jars and the same running servers.

``nodes=3`` (``RXCQRS_NODES``, ``rxcqrs services up --nodes 3``) makes each server a cluster: node n runs on
127.0.0.n (the loopback address of ``host`` plus n - 1) with the same ports, so clients see the
layout of a real cluster. Only Cassandra's JMX port differs per node (JMX binds 127.0.0.1 only).
"""

from __future__ import annotations

import ipaddress
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


_PORTS = ("kafka_port", "kafka_controller_port", "cassandra_port", "cassandra_storage_port", "cassandra_jmx_port",
          "registry_port")


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
    #: the schema registry (Apicurio Registry, Confluent-compatible API): started only when asked for
    registry_port: int = 8081
    kafka_heap: str = "512m"
    cassandra_heap: str = "1g"
    registry_heap: str = "256m"
    kafka_start_timeout: float = 120.0
    cassandra_start_timeout: float = 240.0
    registry_start_timeout: float = 120.0
    stop_timeout: float = 60.0
    #: 1: one server of each kind; 3: a three-node Kafka and a three-node Cassandra on 127.0.0.1-3
    nodes: int = 1
    #: a JDK 17 ``java`` binary; found automatically when ``None``
    java: str | None = None
    #: a JDK 21+ ``java`` binary for the registry; found automatically when ``None``
    registry_java: str | None = None

    def __post_init__(self) -> None:
        for name in _PORTS:
            object.__setattr__(self, name, _port(getattr(self, name), name))
        ports = [self.kafka_port, self.kafka_controller_port, self.cassandra_port,
                 self.cassandra_storage_port, self.registry_port, self.cassandra_jmx_port]
        if len(set(ports)) != len(ports):
            raise ConfigError(f"the six service ports must differ, got {ports}")
        nodes = self.nodes
        if isinstance(nodes, str):
            nodes = int(nodes) if nodes.strip().isdigit() else 0
        if not isinstance(nodes, int) or not 1 <= nodes <= 9:
            raise ConfigError(f"nodes (--nodes, RXCQRS_NODES) must be a whole number from 1 to 9, got {self.nodes!r}")
        object.__setattr__(self, "nodes", nodes)
        if nodes > 1:
            self.node_host(nodes)  # the addresses must exist
            jmx = {self.cassandra_jmx_port + n for n in range(nodes)}
            if jmx & set(ports[:-1]):
                raise ConfigError(f"the Cassandra JMX ports of {nodes} nodes ({sorted(jmx)}) overlap the other "
                                  f"service ports {ports[:-1]}; choose another RXCQRS_CASSANDRA_JMX_PORT")
        object.__setattr__(self, "home", Path(self.home).expanduser().resolve())
        if self.jars is not None:
            object.__setattr__(self, "jars", Path(self.jars).expanduser().resolve())

    @property
    def jar_cache(self) -> Path:
        return self.jars if self.jars is not None else self.home / "jars"

    def node_host(self, node: int) -> str:
        """The address of cluster node ``node`` (1-based); node 0 is the single server on ``host``."""
        if node <= 1:
            return self.host
        try:
            address = ipaddress.IPv4Address(self.host) + (node - 1)
        except (ValueError, ipaddress.AddressValueError):
            raise ConfigError(f"a cluster needs an IPv4 loopback host, got {self.host!r}") from None
        if not address.is_loopback:
            raise ConfigError(f"a {self.nodes}-node cluster needs loopback addresses up to {address}; "
                              f"start from 127.0.0.1")
        return str(address)

    @property
    def node_numbers(self) -> list[int]:
        """0 for the single server, else 1..nodes (each a cluster member with its own directory)."""
        return [0] if self.nodes == 1 else list(range(1, self.nodes + 1))

    @property
    def hosts(self) -> list[str]:
        return [self.node_host(n) for n in self.node_numbers]

    @property
    def kafka_bootstrap(self) -> str:
        """Every broker, comma-separated (what ``--bootstrap-servers`` takes)."""
        return ",".join(f"{host}:{self.kafka_port}" for host in self.hosts)

    @property
    def registry_url(self) -> str:
        """The registry's Confluent-compatible API (what ``--schema-registry`` takes)."""
        return f"http://{self.host}:{self.registry_port}/apis/ccompat/v7"

    @property
    def contact_points(self) -> str:
        """Every Cassandra node, comma-separated (what ``--contact-points`` takes)."""
        return ",".join(f"{host}:{self.cassandra_port}" for host in self.hosts)

    def with_(self, **changes: Any) -> "ServicesSettings":
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "ServicesSettings":
        """Read ``RXCQRS_HOME``, ``RXCQRS_JARS``, ``RXCQRS_NODES``, ``RXCQRS_KAFKA_PORT``, ...,
        ``RXCQRS_REGISTRY_PORT``, ``RXCQRS_REGISTRY_JAVA``, ``RXCQRS_REGISTRY_HEAP``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("RXCQRS_HOME"):
            values["home"] = Path(env["RXCQRS_HOME"])
        if env.get("RXCQRS_JARS"):
            values["jars"] = Path(env["RXCQRS_JARS"])
        if env.get("RXCQRS_JAVA"):
            values["java"] = env["RXCQRS_JAVA"]
        if env.get("RXCQRS_REGISTRY_JAVA"):
            values["registry_java"] = env["RXCQRS_REGISTRY_JAVA"]
        for name in _PORTS:
            key = "RXCQRS_" + name.upper()
            if env.get(key):
                values[name] = env[key]
        if env.get("RXCQRS_NODES"):
            values["nodes"] = env["RXCQRS_NODES"]
        for name in ("kafka_heap", "cassandra_heap", "registry_heap"):
            key = "RXCQRS_" + name.upper()
            if env.get(key):
                values[name] = env[key]
        values.update(overrides)
        return cls(**values)
