"""Connection settings from one place: a TOML file, the environment, and command-line flags, in rising order.

::

    # rxcqrs.toml (``--config FILE`` or ``$RXCQRS_CONFIG``)
    [kafka]
    bootstrap_servers = "broker1:9092,broker2:9092"
    backend = "confluent"                 # or "kafka-python"
    events_topic = "carts.events"         # publish every decided event of the aggregate here (default: none)
    schema_registry = "http://127.0.0.1:8081/apis/ccompat/v7"  # Confluent wire format (default: raw Avro)
    security_protocol = "SASL_SSL"        # anything else is passed to the client as is
    [cassandra]
    contact_points = "10.0.0.1,10.0.0.2:9142"
    local_dc = "dc1"
    consistency = "LOCAL_QUORUM"
    write_protocol = "fenced"             # the command engine's: "fenced" or "conditional"
    merge_partitions = 10                 # the engine's single-row writes of several entities per request (1: off)
    atomic_batches = true                 # fenced: a batch's rows of every step as one logged request
    username = "app"
    password = "..."                      # masked in every repr and error
    [process]
    gc_threshold = 20000                  # the cyclic GC's young-generation threshold (0: Python's; see gc_tuning)
    [tracing]
    exporter = "otlp"                     # or "console"; OpenTelemetry spans per record (default: off)
    endpoint = "http://collector:4318/v1/traces"  # otlp only (default $OTEL_EXPORTER_OTLP_ENDPOINT)

Environment: ``RXCQRS_KAFKA_BOOTSTRAP``, ``RXCQRS_KAFKA_BACKEND``, ``RXCQRS_CASSANDRA_HOSTS``,
``RXCQRS_CASSANDRA_PORT``, ``RXCQRS_CASSANDRA_LOCAL_DC``, ``RXCQRS_CASSANDRA_CONSISTENCY``,
``RXCQRS_CASSANDRA_SERIAL_CONSISTENCY``, ``RXCQRS_WRITE_PROTOCOL``, ``RXCQRS_MERGE_PARTITIONS``,
``RXCQRS_ATOMIC_BATCHES``, ``RXCQRS_EVENTS_TOPIC``, ``RXCQRS_SCHEMA_REGISTRY``, ``RXCQRS_TRACE``,
``RXCQRS_GC_THRESHOLD``. Flags:
``--bootstrap-servers``,
``--kafka-backend``, ``--contact-points``, ``--local-dc``, ``--consistency``, ``--serial-consistency``,
``--write-protocol``, ``--merge-partitions``, ``--atomic-batches`` / ``--no-atomic-batches``, ``--events-topic``,
``--schema-registry``, ``--trace``, ``--gc-threshold``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from rxcqrs.exceptions import ConfigError
from rxcqrs.redact import redacted_repr

__all__ = ["Config", "load_config", "parse_contact_points"]


def parse_contact_points(value: str, what: str = "contact points") -> tuple[tuple[str, ...], int | None]:
    """``"h1,h2:9142"`` -> hosts and the port (one port for all: the driver connects to every node on it)."""
    hosts, ports = [], set()
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
        host = host or item
        if sep:
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"{what}: {item!r} is not host[:port]")
            ports.add(int(port))
        hosts.append(host)
    if not hosts:
        raise ConfigError(f"{what}: give at least one host[:port]")
    if len(ports) > 1:
        raise ConfigError(f"{what}: every node must use the same port, got {sorted(ports)}")
    return tuple(hosts), (ports.pop() if ports else None)


@dataclass(frozen=True, repr=False)
class Config:
    """Where the servers are and how to talk to them; everything a flow needs beyond its own names."""

    kafka_bootstrap: str | None = None
    kafka_backend: str | None = None
    kafka_options: Mapping[str, Any] = field(default_factory=dict)
    cassandra_hosts: tuple[str, ...] | None = None
    cassandra_port: int | None = None
    cassandra_options: Mapping[str, Any] = field(default_factory=dict)
    #: how the command engine writes state: "fenced" (the default) or "conditional"
    write_protocol: str = "fenced"
    #: partitions one request of the command engine may span (several entities' single-row writes; 1: none)
    merge_partitions: int = 10
    #: fenced writes: every row of an engine batch in one logged request (all or nothing), when it fits
    atomic_batches: bool = True
    #: the aggregate's event stream: every decided event published here before its command's writes
    events_topic: str | None = None
    #: the schema registry's Confluent-compatible URL: commands in the Confluent wire format (None: raw Avro)
    schema_registry: str | None = None
    #: OpenTelemetry tracing: None (off), "console" or "otlp" (to ``trace_endpoint``)
    trace: str | None = None
    trace_endpoint: str | None = None
    #: the consumer process's young-generation GC threshold (None: the application's default;
    #: 0: Python's own; see :mod:`rxcqrs.gc_tuning`)
    gc_threshold: int | None = None
    source: str = "defaults"

    __repr__ = redacted_repr

    def consumer(self, group_id: str, **options: Any) -> Any:
        from rxcqrs.kafka import ConsumerSettings

        return ConsumerSettings(group_id=group_id, **self._kafka(), **options)

    def producer(self, **options: Any) -> Any:
        from rxcqrs.kafka import ProducerSettings

        return ProducerSettings(**self._kafka(), **options)

    def _kafka(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.kafka_bootstrap:
            out["bootstrap_servers"] = self.kafka_bootstrap
        if self.kafka_backend:
            out["backend"] = self.kafka_backend
        if self.kafka_options:
            out["extra"] = dict(self.kafka_options)
        return out

    def cassandra(self, **options: Any) -> Any:
        from rxcqrs.cassandra import CassandraSettings

        known = {f.name for f in fields(CassandraSettings)}
        values: dict[str, Any] = {k: v for k, v in self.cassandra_options.items() if k in known}
        extra = {k: v for k, v in self.cassandra_options.items() if k not in known}
        if extra:
            values["extra"] = {**dict(values.get("extra", {})), **extra}
        if self.cassandra_hosts:
            values["contact_points"] = self.cassandra_hosts
        if self.cassandra_port:
            values["port"] = self.cassandra_port
        values.update(options)
        return CassandraSettings(**values)


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def load_config(path: str | None = None, *, bootstrap_servers: str | None = None, kafka_backend: str | None = None,
                contact_points: str | None = None, consistency: str | None = None,
                serial_consistency: str | None = None, local_dc: str | None = None,
                write_protocol: str | None = None, merge_partitions: int | None = None,
                atomic_batches: bool | None = None, events_topic: str | None = None,
                schema_registry: str | None = None, trace: str | None = None, gc_threshold: int | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """The file (``path`` or ``$RXCQRS_CONFIG``), then the environment, then these explicit values."""
    env = os.environ if environ is None else environ
    file = path or env.get("RXCQRS_CONFIG")
    data = _read_toml(Path(file)) if file else {}
    unknown = set(data) - {"kafka", "cassandra", "tracing", "process"}
    if unknown:
        raise ConfigError(f"config file {file}: unknown tables {sorted(unknown)}; use [kafka], [cassandra], "
                          "[process] and [tracing]")
    process = dict(data.get("process", {}))
    in_file_gc = process.pop("gc_threshold", None)
    if process:
        raise ConfigError(f"config file {file}: [process] takes gc_threshold, got {sorted(process)}")
    gc = _gc_threshold(gc_threshold, env, in_file_gc, file)
    traced = dict(data.get("tracing", {}))
    exporter = trace or env.get("RXCQRS_TRACE") or traced.pop("exporter", None)
    traced.pop("exporter", None)
    if exporter is not None and exporter not in ("console", "otlp"):
        where = ("--trace" if trace else "RXCQRS_TRACE" if env.get("RXCQRS_TRACE")
                 else f"[tracing] exporter in {file}")
        raise ConfigError(f"{where}: the trace exporter must be console or otlp, got {exporter!r}")
    endpoint = traced.pop("endpoint", None)
    if traced or (endpoint is not None and not isinstance(endpoint, str)):
        raise ConfigError(f"config file {file}: [tracing] takes exporter and endpoint (a URL), got "
                          f"{sorted(traced) or ['endpoint = ' + repr(endpoint)]}")
    kafka = dict(data.get("kafka", {}))
    cassandra = dict(data.get("cassandra", {}))
    bootstrap = bootstrap_servers or env.get("RXCQRS_KAFKA_BOOTSTRAP") or kafka.pop("bootstrap_servers", None)
    kafka.pop("bootstrap_servers", None)
    backend = kafka_backend or env.get("RXCQRS_KAFKA_BACKEND") or kafka.pop("backend", None)
    kafka.pop("backend", None)
    events = events_topic or env.get("RXCQRS_EVENTS_TOPIC") or kafka.pop("events_topic", None)
    kafka.pop("events_topic", None)
    if events is not None and (not isinstance(events, str) or not events
                               or not all(c.isalnum() or c in "._-" for c in events) or len(events) > 249):
        where = ("--events-topic" if events_topic else "RXCQRS_EVENTS_TOPIC" if env.get("RXCQRS_EVENTS_TOPIC")
                 else f"[kafka] events_topic in {file}")
        raise ConfigError(f"{where}: {events!r} is not a Kafka topic name (1-249 of [a-zA-Z0-9._-])")
    registry = schema_registry or env.get("RXCQRS_SCHEMA_REGISTRY") or kafka.pop("schema_registry", None)
    kafka.pop("schema_registry", None)
    if registry is not None and (not isinstance(registry, str) or not registry.startswith(("http://", "https://"))):
        where = ("--schema-registry" if schema_registry else "RXCQRS_SCHEMA_REGISTRY"
                 if env.get("RXCQRS_SCHEMA_REGISTRY") else f"[kafka] schema_registry in {file}")
        raise ConfigError(f"{where}: {registry!r} is not an http(s) URL (e.g. http://127.0.0.1:8081/apis/ccompat/v7)")
    hosts: tuple[str, ...] | None = None
    port: int | None = None
    points = contact_points or env.get("RXCQRS_CASSANDRA_HOSTS") or cassandra.pop("contact_points", None)
    cassandra.pop("contact_points", None)
    if points:
        what = "--contact-points" if contact_points else ("RXCQRS_CASSANDRA_HOSTS" if env.get("RXCQRS_CASSANDRA_HOSTS")
                                                         else f"[cassandra] contact_points in {file}")
        hosts, port = parse_contact_points(points if isinstance(points, str) else ",".join(points), what)
    if port is None and env.get("RXCQRS_CASSANDRA_PORT"):
        raw = env["RXCQRS_CASSANDRA_PORT"]
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise ConfigError(f"RXCQRS_CASSANDRA_PORT must be a port number (1-65535), got {raw!r}")
        port = int(raw)
    if port is None and "port" in cassandra:
        port = int(cassandra.pop("port"))
    cassandra.pop("port", None)
    for name, value in (("consistency", consistency or env.get("RXCQRS_CASSANDRA_CONSISTENCY")),
                        ("serial_consistency", serial_consistency or env.get("RXCQRS_CASSANDRA_SERIAL_CONSISTENCY"))):
        if value:
            cassandra[name] = value.upper()
    dc = local_dc or env.get("RXCQRS_CASSANDRA_LOCAL_DC")
    if dc:
        cassandra["local_dc"] = dc
    if backend is not None and backend not in ("kafka-python", "confluent"):
        raise ConfigError(f"the Kafka backend must be kafka-python or confluent, got {backend!r}")
    protocol = write_protocol or env.get("RXCQRS_WRITE_PROTOCOL") or cassandra.pop("write_protocol", None) or "fenced"
    cassandra.pop("write_protocol", None)
    if protocol not in ("fenced", "conditional"):
        where = ("--write-protocol" if write_protocol else "RXCQRS_WRITE_PROTOCOL" if env.get("RXCQRS_WRITE_PROTOCOL")
                 else f"[cassandra] write_protocol in {file}")
        raise ConfigError(f"{where}: the write protocol must be fenced or conditional, got {protocol!r}")
    merge = _merge_partitions(merge_partitions, env, cassandra.pop("merge_partitions", None), file)
    atomic = _atomic_batches(atomic_batches, env, cassandra.pop("atomic_batches", None), file)
    return Config(bootstrap, backend, kafka, hosts, port, cassandra, write_protocol=protocol,
                  merge_partitions=merge, atomic_batches=atomic, events_topic=events, schema_registry=registry,
                  trace=exporter, trace_endpoint=endpoint, gc_threshold=gc, source=file or "defaults")


def _atomic_batches(flag: bool | None, env: Mapping[str, str], in_file: Any, file: str | None) -> bool:
    """The flag, else ``$RXCQRS_ATOMIC_BATCHES``, else ``[cassandra] atomic_batches``, else on."""
    if flag is not None:
        return flag
    raw = env.get("RXCQRS_ATOMIC_BATCHES")
    if raw is not None:
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"RXCQRS_ATOMIC_BATCHES must be true or false, got {raw!r}")
        return raw.lower() in ("true", "1", "yes")
    if in_file is not None:
        if not isinstance(in_file, bool):
            raise ConfigError(f"[cassandra] atomic_batches in {file} must be true or false, got {in_file!r}")
        return in_file
    return True


def _merge_partitions(flag: int | None, env: Mapping[str, str], in_file: Any, file: str | None) -> int:
    """The flag, else ``$RXCQRS_MERGE_PARTITIONS``, else ``[cassandra] merge_partitions``, else 10."""
    for where, value in (("--merge-partitions", flag), ("RXCQRS_MERGE_PARTITIONS", env.get("RXCQRS_MERGE_PARTITIONS")),
                         (f"[cassandra] merge_partitions in {file}", in_file)):
        if value is None:
            continue
        if isinstance(value, bool) or not (isinstance(value, int) or str(value).isdigit()) or int(value) < 1:
            raise ConfigError(f"{where}: the partitions one request may span must be a whole number >= 1 (1: "
                              f"every entity's writes alone), got {value!r}")
        return int(value)
    return 10


def _gc_threshold(flag: int | None, env: Mapping[str, str], in_file: Any, file: str | None) -> int | None:
    """The flag, else ``$RXCQRS_GC_THRESHOLD``, else ``[process] gc_threshold``, else None."""
    for where, value in (("--gc-threshold", flag), ("RXCQRS_GC_THRESHOLD", env.get("RXCQRS_GC_THRESHOLD")),
                         (f"[process] gc_threshold in {file}", in_file)):
        if value is None:
            continue
        if isinstance(value, bool) or not (isinstance(value, int) or str(value).isdigit()) or int(value) < 0:
            raise ConfigError(f"{where}: the GC threshold must be a whole number of objects >= 0 (0: Python's own "
                              f"700), got {value!r}")
        return int(value)
    return None
