"""Topic helpers over ``KafkaAdminClient`` (create with partitions, wait until usable, delete) and the reads
that checks and tools need (committed and end offsets, a whole topic).

On a cluster a broker may be gone: kafka-python then fails a metadata request sent to it instead of asking
another, so each read here is retried on a retriable error (another node is tried) until ``RETRY_FOR``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, TypeVar

from rxcqrs.backoff import Backoff, retry_until
from rxcqrs.clock import SYSTEM, Clock
from rxcqrs.exceptions import ConfigError, FlowError
from rxcqrs.kafka.settings import default_bootstrap

__all__ = ["create_topics", "delete_topics", "admin_client", "committed_offsets", "end_offsets", "group_size",
           "partition_leaders", "topic_partitions", "read_topic"]


def admin_client(bootstrap_servers: str | None = None, **options: Any) -> Any:
    from kafka.admin import KafkaAdminClient

    servers = bootstrap_servers or default_bootstrap()
    try:
        return KafkaAdminClient(bootstrap_servers=servers.split(","), client_id="rxcqrs-admin", **options)
    except Exception as exc:
        raise FlowError(f"cannot reach Kafka at {servers}: {exc!r}; is it running? (`rxcqrs services up` starts a "
                        "local one)") from exc


def create_topics(topics: dict[str, int] | Iterable[str], *, bootstrap_servers: str | None = None,
                  replication_factor: int = -1, configs: dict[str, str] | None = None,
                  exist_ok: bool = True) -> None:
    """Create topics (name -> partitions, or names with 1 partition) and wait until their metadata is visible.

    ``replication_factor=-1``: the brokers' ``default.replication.factor`` (1 on the local server, 3 on the
    local cluster and on any production cluster configured that way)."""
    from kafka.errors import TopicAlreadyExistsError

    wanted = dict(topics) if isinstance(topics, dict) else {name: 1 for name in topics}
    for name, partitions in wanted.items():
        if not name or len(name) > 249 or not all(c.isalnum() or c in "._-" for c in name):
            raise ConfigError(f"invalid Kafka topic name {name!r}: use 1-249 of [a-zA-Z0-9._-]")
        if partitions < 1:
            raise ConfigError(f"topic {name!r} needs at least one partition")
    admin = admin_client(bootstrap_servers)
    try:
        for name, partitions in wanted.items():
            spec = {"num_partitions": partitions, "replication_factor": replication_factor,
                    "configs": dict(configs or {})}
            try:
                admin.create_topics({name: spec})
            except TopicAlreadyExistsError:
                if not exist_ok:
                    raise
        admin.wait_for_topics(list(wanted), timeout_ms=30_000)
    finally:
        admin.close()


def delete_topics(names: Iterable[str], *, bootstrap_servers: str | None = None) -> None:
    admin = admin_client(bootstrap_servers)
    try:
        admin.delete_topics(list(names))
    finally:
        admin.close()


RETRY_FOR = 60.0  # seconds: covers a broker's session timeout, after which the cluster stops listing it
_ADMIN_BACKOFF = Backoff(min_delay=0.1, max_delay=2.0, random_factor=0.0)
T = TypeVar("T")


def _retrying(read: Callable[[], T], deadline: float | None = None, clock: Clock = SYSTEM) -> T:
    """``read()``, again after a retriable client error (a dead broker, no leader yet) until the deadline."""
    from kafka.errors import KafkaError, UnknownTopicOrPartitionError

    def transient(exc: Exception) -> bool:
        return isinstance(exc, KafkaError) and bool(exc.retriable) and not isinstance(exc, UnknownTopicOrPartitionError)

    until = deadline if deadline is not None else clock.now() + RETRY_FOR
    return retry_until(lambda _left: read(), until, transient, _ADMIN_BACKOFF, clock)


def _reader(servers: str, group_id: str | None = None) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(bootstrap_servers=servers.split(","), group_id=group_id, enable_auto_commit=False,
                         allow_auto_create_topics=False)


def committed_offsets(group_id: str, topic: str, *, bootstrap_servers: str | None = None) -> dict[int, int | None]:
    """What ``group_id`` committed for each partition of ``topic`` (read by a consumer that never joins)."""
    from kafka import TopicPartition

    def read() -> dict[int, int | None]:
        reader = _reader(bootstrap_servers or default_bootstrap(), group_id)
        try:
            partitions = reader.partitions_for_topic(topic) or set()
            return {p: reader.committed(TopicPartition(topic, p)) for p in sorted(partitions)}
        finally:
            reader.close()

    return _retrying(read)


def end_offsets(topic: str, *, bootstrap_servers: str | None = None) -> dict[int, int]:
    """The end offset (next offset to be written) of each partition of ``topic``; {} if it does not exist."""
    from kafka import TopicPartition

    def read() -> dict[int, int]:
        reader = _reader(bootstrap_servers or default_bootstrap())
        try:
            partitions = sorted(reader.partitions_for_topic(topic) or set())
            ends = reader.end_offsets([TopicPartition(topic, p) for p in partitions], timeout_ms=10_000)
            return {tp.partition: offset for tp, offset in ends.items()}
        finally:
            reader.close()

    return _retrying(read)


def group_size(group_id: str, *, bootstrap_servers: str | None = None, **options: Any) -> int:
    """How many members the consumer group has now."""
    def read() -> int:
        admin = admin_client(bootstrap_servers, **options)
        try:
            found = admin.describe_groups([group_id]).get(group_id) or {}
            return len(found.get("members") or [])
        finally:
            admin.close()

    return _retrying(read)


def _describe_topic(topic: str, bootstrap_servers: str | None, **options: Any) -> Any:
    """The brokers' metadata of ``topic`` (a request that never creates it), retried past a dead broker."""
    def read() -> Any:
        admin = admin_client(bootstrap_servers, **options)
        try:
            return admin.describe_topics([topic])
        finally:
            admin.close()

    return _retrying(read)


def topic_partitions(topic: str, *, bootstrap_servers: str | None = None, **options: Any) -> int | None:
    """How many partitions ``topic`` has, once every partition has a leader; ``None`` if it does not exist
    (or is not ready yet). A metadata request that never creates the topic."""
    found = _describe_topic(topic, bootstrap_servers, **options)
    if not found or found[0].get("error_code") or not found[0].get("partitions"):
        return None
    partitions = found[0]["partitions"]
    if any(p.get("error_code") or p.get("leader_id", -1) < 0 for p in partitions):
        return None
    return len(partitions)


def partition_leaders(topic: str, *, bootstrap_servers: str | None = None) -> dict[int, int]:
    """The broker (node id) leading each partition of ``topic`` (-1: none right now); {} if it does not exist."""
    found = _describe_topic(topic, bootstrap_servers)
    if not found or found[0].get("error_code"):
        return {}
    return {p["partition_index"]: p.get("leader_id", -1) for p in found[0]["partitions"]}


def read_topic(topic: str, *, bootstrap_servers: str | None = None, limits: dict[int, int] | None = None,
               timeout: float = 120.0) -> list[Any]:
    """Every record of ``topic`` (below ``limits[partition]``, if given), in partition and offset order, read
    by a consumer outside any group: for checks and tools, not for flows."""
    from kafka import TopicPartition

    deadline = time.monotonic() + timeout

    def read() -> list[Any]:
        reader = _reader(bootstrap_servers or default_bootstrap())
        try:
            tps = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
            reader.assign(tps)
            reader.seek_to_beginning(*tps)
            ends = reader.end_offsets(tps) if limits is None else {tp: limits.get(tp.partition, 0) for tp in tps}
            records: list[Any] = []
            while any(reader.position(tp) < ends[tp] for tp in tps):
                if time.monotonic() > deadline:
                    raise FlowError(f"reading {topic} did not reach its end offsets within {timeout:g}s")
                for recs in reader.poll(timeout_ms=500).values():
                    records += [r for r in recs if r.offset < ends[TopicPartition(r.topic, r.partition)]]
            return sorted(records, key=lambda r: (r.partition, r.offset))
        finally:
            reader.close()

    return _retrying(read, deadline)
