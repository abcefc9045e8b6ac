"""The seam between rxcqrs and a Kafka client library: what a source needs from a consumer, what a sink needs
from a producer, and who calls what (see the threading model in :mod:`rxcqrs.kafka`).

Two implementations stand behind it, chosen by ``backend`` in the settings: confluent-kafka / librdkafka
(:mod:`rxcqrs.kafka.confluent`, the default) and kafka-python (:mod:`rxcqrs.kafka.kafka_python`; the
in-memory fake of :mod:`rxcqrs.testing` speaks its API). The contract tests run the same
behaviours against each of them.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol

from rxcqrs.messages import TopicPartition

__all__ = ["Record", "RebalanceHandler", "ConsumerClient", "ProducerClient", "Delivered", "BACKENDS"]

BACKENDS = ("kafka-python", "confluent")


class Record(Protocol):
    """A consumed record, shaped like kafka-python's ``ConsumerRecord``."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: Any


class RebalanceHandler(Protocol):
    """What a consumer client tells about its assignment (the :class:`~rxcqrs.kafka.committer.Committer`).

    kafka-python calls these on its IO thread, confluent-kafka on the poll thread inside ``poll``; either
    way they touch only thread-safe state."""

    def revoked(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Partitions are being taken away: return the offsets to commit for them first."""

    def revoke_committed(self, offsets: dict[TopicPartition, int], error: BaseException | None) -> None:
        """The result of committing what :meth:`revoked` returned."""

    def assigned(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Partitions were added to this member: return where some of them start instead of the group's
        committed offsets (the client applies it before fetching them; an offset <= 0 is the beginning)."""

    def lost(self, tps: list[TopicPartition]) -> None:
        """Partitions were lost without a revoke (the member was dropped): nothing can be committed."""


class ConsumerClient(Protocol):
    """One consumer of a group. Every method is called by the poll thread only, except :meth:`interrupt`."""

    backend: str
    description: str

    def topic_partitions(self, topic: str, timeout: float) -> int | None:
        """How many partitions ``topic`` has (fetching metadata if needed); ``None`` if it does not exist."""

    def subscribe(self, topics: list[str], handler: RebalanceHandler) -> None: ...

    def poll(self, timeout: float, max_records: int) -> dict[TopicPartition, list[Record]]:
        """Records by partition, in offset order; rebalance callbacks may run during the call."""

    def keepalive(self) -> dict[TopicPartition, list[Record]]:
        """A poll that keeps the member in its group while downstream is busy, fetching (almost) nothing:
        whatever it returns is kept and emitted later, in order."""

    def assignment(self) -> set[TopicPartition]: ...
    def paused(self) -> set[TopicPartition]: ...
    def pause(self, tps: Iterable[TopicPartition]) -> None: ...
    def resume(self, tps: Iterable[TopicPartition]) -> None: ...
    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    def position(self, tp: TopicPartition) -> int | None:
        """The offset of the next record this consumer would fetch (past control records)."""

    def commit(self, offsets: dict[TopicPartition, int], timeout: float) -> None:
        """Commit synchronously; raises if the commit failed."""

    def end_offsets(self, tps: list[TopicPartition], timeout: float) -> dict[TopicPartition, int]: ...
    def beginning_offsets(self, tps: list[TopicPartition], timeout: float) -> dict[TopicPartition, int]: ...

    def committed(self, tps: list[TopicPartition], timeout: float) -> dict[TopicPartition, int | None]:
        """What the group committed, for any partition (assigned to this member or not)."""

    def group_size(self, timeout: float) -> int | None:
        """How many members the group has (the liveness check), or ``None`` if the client cannot tell."""

    def interrupt(self) -> None:
        """Called by the liveness watchdog (another thread) when a call has hung: make it return or raise."""

    def close(self, timeout: float) -> None: ...


Delivered = Callable[[BaseException | None], None]


class ProducerClient(Protocol):
    """A producer. ``send`` may be called from any thread; ``on_done`` runs on the client's own thread."""

    backend: str
    description: str

    def send(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]] | None,
             partition: int | None, timestamp_ms: int | None, on_done: Delivered) -> None:
        """Queue a record; ``on_done(None)`` once delivered, ``on_done(error)`` if it failed (may run inside
        ``send`` when the record is refused at once)."""

    def topic_exists(self, topic: str, timeout: float) -> bool: ...
    def flush(self, timeout: float | None = None) -> None: ...
    def close(self, timeout: float | None = None) -> None: ...


def is_retriable(error: BaseException) -> bool:
    """Both clients mark transient errors: kafka-python with ``retriable = True``, confluent-kafka with
    ``KafkaError.retriable()`` (wrapped in ``KafkaException``)."""
    flag = getattr(error, "retriable", False)
    if callable(flag):
        return bool(flag())
    if flag:
        return True
    inner = error.args[0] if getattr(error, "args", None) else None
    check = getattr(inner, "retriable", None)
    return bool(check()) if callable(check) else False
