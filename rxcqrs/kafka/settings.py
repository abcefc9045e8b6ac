"""Frozen Kafka settings: defaults for the local broker, the client library (``backend``), pass-through of
any other client option in ``extra`` (kafka-python keyword names, or librdkafka property names for the
``"confluent"`` backend).

Secrets (SASL passwords, SSL key passwords, ...) are accepted in ``extra`` and masked in ``repr`` and in
every error rxcqrs builds from a client error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Mapping

from rxcqrs.backoff import Backoff
from rxcqrs.exceptions import ConfigError
from rxcqrs.redact import redacted_repr

__all__ = ["ConsumerSettings", "ProducerSettings", "SourceSettings", "default_bootstrap", "default_backend",
           "Backend"]

FailurePolicy = Literal["stop", "rewind"]
Backend = Literal["kafka-python", "confluent"]
_BACKENDS = ("kafka-python", "confluent")


def default_bootstrap() -> str:
    return os.environ.get("RXCQRS_KAFKA_BOOTSTRAP") or f"127.0.0.1:{os.environ.get('RXCQRS_KAFKA_PORT', '9092')}"


def default_backend() -> Backend:
    """``$RXCQRS_KAFKA_BACKEND`` or confluent (measured faster and more robust here: README, "Two Kafka clients")."""
    value = os.environ.get("RXCQRS_KAFKA_BACKEND") or "confluent"
    if value not in _BACKENDS:
        raise ConfigError(f"RXCQRS_KAFKA_BACKEND must be one of {list(_BACKENDS)}, got {value!r}")
    return value  # type: ignore[return-value]


def _check_backend(value: str) -> None:
    if value not in _BACKENDS:
        raise ConfigError(f"backend must be one of {list(_BACKENDS)}, got {value!r}")


def _check_bootstrap(value: str) -> None:
    for server in value.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"bootstrap_servers must be host:port[,host:port...], got {value!r}")


_OWNED_CONSUMER_KEYS = {"enable_auto_commit", "bootstrap_servers", "group_id", "key_deserializer",
                        "value_deserializer"}


@dataclass(frozen=True, repr=False)
class ConsumerSettings:
    """kafka-python ``KafkaConsumer`` options rxcqrs cares about; ``extra`` passes anything else through."""

    group_id: str
    bootstrap_servers: str = field(default_factory=default_bootstrap)
    client_id: str = "rxcqrs"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_poll_records: int = 500
    #: small per-partition fetches let one poll window hold records of many partitions
    max_partition_fetch_bytes: int = 128 * 1024
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 2_000
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    #: "cooperative" (KIP-429: a rebalance revokes only partitions that move) or "eager" (range assignor);
    #: ``None``: cooperative with confluent-kafka, eager with kafka-python, whose cooperative rebalance (3.0.12)
    #: can loop through generations without ever revoking while the leader's partitions are paused
    rebalance: Literal["cooperative", "eager"] | None = None
    bootstrap_timeout_ms: int = 30_000
    request_timeout_ms: int = 30_000
    #: the client library: "confluent" (default; confluent-kafka, librdkafka) or "kafka-python"
    backend: Backend = field(default_factory=default_backend)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_backend(self.backend)
        if not self.group_id:
            raise ConfigError("a consumer group_id is required: commits are stored per group")
        _check_bootstrap(self.bootstrap_servers)
        if self.max_poll_records < 1:
            raise ConfigError("max_poll_records must be >= 1")
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ConfigError("heartbeat_interval_ms should be at most a third of session_timeout_ms")
        owned = _OWNED_CONSUMER_KEYS & set(self.extra)
        if owned:
            raise ConfigError(f"{sorted(owned)} are managed by rxcqrs and cannot be passed in extra")

    __repr__ = redacted_repr

    def with_(self, **changes: Any) -> "ConsumerSettings":
        return replace(self, **changes)

    def to_kafka(self) -> dict[str, Any]:
        from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
        from kafka.coordinator.assignors.range import RangePartitionAssignor

        assignors = (CooperativeStickyAssignor,) if self.rebalance == "cooperative" else (RangePartitionAssignor,)
        # (None: eager, see ``rebalance``)
        return {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "group_id": self.group_id,
            "client_id": self.client_id,
            "enable_auto_commit": False,
            "auto_offset_reset": self.auto_offset_reset,
            "max_poll_records": self.max_poll_records,
            "max_partition_fetch_bytes": self.max_partition_fetch_bytes,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "isolation_level": self.isolation_level,
            "partition_assignment_strategy": assignors,
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
            "request_timeout_ms": self.request_timeout_ms,
            "allow_auto_create_topics": False,
            **self.extra,
        }

    def to_confluent(self) -> dict[str, Any]:
        """The same settings as librdkafka properties (``extra`` holds librdkafka names here)."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.group_id,
            "client.id": self.client_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": self.auto_offset_reset,
            "max.poll.interval.ms": self.max_poll_interval_ms,
            "max.partition.fetch.bytes": self.max_partition_fetch_bytes,
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": self.heartbeat_interval_ms,
            "isolation.level": self.isolation_level,
            "partition.assignment.strategy": "range" if self.rebalance == "eager" else "cooperative-sticky",
            "allow.auto.create.topics": False,
            "socket.timeout.ms": self.request_timeout_ms,
            **self.extra,
        }


@dataclass(frozen=True, repr=False)
class ProducerSettings:
    """Producer options: every write acknowledged by all in-sync replicas (``acks="all"``), idempotent."""

    bootstrap_servers: str = field(default_factory=default_bootstrap)
    client_id: str = "rxcqrs-producer"
    linger_ms: int = 5
    batch_size: int = 64 * 1024
    compression_type: str | None = None
    delivery_timeout_ms: int = 120_000
    #: "all": a record counts as sent once every in-sync replica has it (on a cluster, min.insync.replicas)
    acks: Literal["all", 1, 0] = "all"
    max_block_ms: int = 60_000
    bootstrap_timeout_ms: int = 30_000
    #: the client library: "confluent" (default; confluent-kafka, librdkafka) or "kafka-python"
    backend: Backend = field(default_factory=default_backend)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_backend(self.backend)
        _check_bootstrap(self.bootstrap_servers)
        owned = {"bootstrap_servers", "key_serializer", "value_serializer"} & set(self.extra)
        if owned:
            raise ConfigError(f"{sorted(owned)} are managed by rxcqrs and cannot be passed in extra")

    __repr__ = redacted_repr

    def with_(self, **changes: Any) -> "ProducerSettings":
        return replace(self, **changes)

    def to_kafka(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "client_id": self.client_id,
            "linger_ms": self.linger_ms,
            "batch_size": self.batch_size,
            "compression_type": self.compression_type,
            "delivery_timeout_ms": self.delivery_timeout_ms,
            "acks": self.acks,
            "max_block_ms": self.max_block_ms,
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
            **self.extra,
        }

    def to_confluent(self) -> dict[str, Any]:
        """The same settings as librdkafka properties (idempotent, ``acks=all``)."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "linger.ms": self.linger_ms,
            "batch.size": self.batch_size,
            "delivery.timeout.ms": self.delivery_timeout_ms,
            "enable.idempotence": self.acks == "all",
            "acks": self.acks,
            **self.extra,
        }
        if self.compression_type:
            config.setdefault("compression.type", self.compression_type)
        return config


@dataclass(frozen=True)
class SourceSettings:
    """How a :class:`~rxcqrs.kafka.KafkaSource` paces, commits and fails.

    ``max_in_flight`` bounds emitted-but-not-settled records (the window). Without ``prefetch`` the next poll
    happens only when every record of the previous poll has been settled by every branch. With ``batches``
    the source emits a partition's polled records as :class:`~rxcqrs.messages.Batch` es (one ticket each):
    stages that take batches handle them whole, and ``run`` splits them into envelopes before any other stage.
    """

    max_in_flight: int = 1000
    prefetch: bool = False
    batches: bool = False
    failure_policy: FailurePolicy = "stop"
    commit_every: int = 1000
    commit_interval: float = 1.0
    #: how long a poll waits for records (at the end of what there is, with records in flight: at most
    #: ``rxcqrs.kafka.poller.SETTLING_POLL``, so their settling is committed soon)
    poll_timeout: float = 0.2
    #: how often a waiting source polls its paused partitions to stay in the group
    keepalive_interval: float = 1.0
    drain_timeout: float = 60.0
    #: how long a revoke waits for in-flight records of the revoked partitions before committing
    revoke_settle_timeout: float = 3.0
    backoff: Backoff = field(default_factory=Backoff)
    #: how long a missing topic is looked for (its metadata) before the source fails
    metadata_timeout: float = 5.0
    #: no assignment this long while the topic has partitions and the group has room: replace the consumer
    assignment_timeout: float = 30.0
    #: a client call (poll, commit, ...) that has not returned this long is stuck: replace the consumer
    stuck_timeout: float = 30.0
    #: how many times a consumer is replaced before the source gives up
    max_consumer_restarts: int = 3
    #: how often the end offsets are read for lag and idleness
    lag_interval: float = 1.0

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ConfigError("max_in_flight must be >= 1")
        if self.drain_timeout < 0 or self.poll_timeout <= 0 or self.keepalive_interval <= 0:
            raise ConfigError("drain_timeout must be >= 0, poll_timeout and keepalive_interval > 0")
        if min(self.assignment_timeout, self.stuck_timeout, self.metadata_timeout, self.lag_interval) <= 0:
            raise ConfigError("assignment_timeout, stuck_timeout, metadata_timeout and lag_interval must be > 0")
        if self.max_consumer_restarts < 0:
            raise ConfigError("max_consumer_restarts must be >= 0")
        if self.failure_policy not in ("stop", "rewind"):
            raise ConfigError(f"failure_policy must be 'stop' or 'rewind', got {self.failure_policy!r}")
        if self.commit_every < 1 or self.commit_interval <= 0:
            raise ConfigError("commit_every must be >= 1 and commit_interval > 0")

    def with_(self, **changes: Any) -> "SourceSettings":
        return replace(self, **changes)
