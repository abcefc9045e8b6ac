"""Frozen Kafka settings: defaults for the local broker, pass-through of any other kafka-python option.

Secrets (SASL passwords, SSL key passwords, ...) are accepted in ``extra`` and masked in ``repr``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Mapping

from rxcqrs.backoff import Backoff
from rxcqrs.exceptions import ConfigError
from rxcqrs.redact import redacted_repr

__all__ = ["ConsumerSettings", "ProducerSettings", "SourceSettings", "default_bootstrap"]

FailurePolicy = Literal["stop", "rewind"]


def default_bootstrap() -> str:
    return os.environ.get("RXCQRS_KAFKA_BOOTSTRAP") or f"127.0.0.1:{os.environ.get('RXCQRS_KAFKA_PORT', '9092')}"


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
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 2_000
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    #: "cooperative" (KIP-429: a rebalance revokes only partitions that move) or "eager" (range assignor)
    rebalance: Literal["cooperative", "eager"] = "cooperative"
    bootstrap_timeout_ms: int = 30_000
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
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
        return {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "group_id": self.group_id,
            "client_id": self.client_id,
            "enable_auto_commit": False,
            "auto_offset_reset": self.auto_offset_reset,
            "max_poll_records": self.max_poll_records,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "isolation_level": self.isolation_level,
            "partition_assignment_strategy": assignors,
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
            **self.extra,
        }


@dataclass(frozen=True, repr=False)
class ProducerSettings:
    """kafka-python ``KafkaProducer`` options; idempotent, acks=all by default (3.x defaults)."""

    bootstrap_servers: str = field(default_factory=default_bootstrap)
    client_id: str = "rxcqrs-producer"
    linger_ms: int = 5
    batch_size: int = 64 * 1024
    compression_type: str | None = None
    delivery_timeout_ms: int = 120_000
    max_block_ms: int = 60_000
    bootstrap_timeout_ms: int = 30_000
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
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
            "max_block_ms": self.max_block_ms,
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
            **self.extra,
        }


@dataclass(frozen=True)
class SourceSettings:
    """How a :class:`~rxcqrs.kafka.KafkaSource` paces, commits and fails.

    ``max_in_flight`` bounds emitted-but-not-settled records (the window). Without ``prefetch`` the next poll
    happens only when every record of the previous poll has been settled by every branch.
    """

    max_in_flight: int = 1000
    prefetch: bool = False
    failure_policy: FailurePolicy = "stop"
    commit_every: int = 1000
    commit_interval: float = 1.0
    poll_timeout: float = 0.2
    #: how often a waiting source polls its paused partitions to stay in the group
    keepalive_interval: float = 1.0
    drain_timeout: float = 60.0
    #: how long a revoke waits for in-flight records of the revoked partitions before committing
    revoke_settle_timeout: float = 3.0
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ConfigError("max_in_flight must be >= 1")
        if self.failure_policy not in ("stop", "rewind"):
            raise ConfigError(f"failure_policy must be 'stop' or 'rewind', got {self.failure_policy!r}")
        if self.commit_every < 1 or self.commit_interval <= 0:
            raise ConfigError("commit_every must be >= 1 and commit_interval > 0")

    def with_(self, **changes: Any) -> "SourceSettings":
        return replace(self, **changes)
