"""The confluent-kafka consumer (the default backend; librdkafka, bundled in its wheels) behind rxcqrs' client
seam; its producer is :mod:`rxcqrs.kafka.confluent_producer`.

librdkafka runs its own threads; the Python API is driven by the caller: rebalance callbacks run on the
poll thread inside ``consume``/``close``, so a revoke may commit synchronously.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, TypeVar

from rxcqrs.exceptions import CommitError, FlowError, GroupMovedOnError
from rxcqrs.kafka.client import RebalanceHandler, Record
from rxcqrs.kafka.settings import ConsumerSettings
from rxcqrs.messages import RecordMetadata, TopicPartition
from rxcqrs.redact import redact_error

__all__ = ["ConfluentConsumer", "reach", "started"]

log = logging.getLogger(__name__)
_client_log = logging.getLogger("confluent_kafka")

_INVALID = -1001  # librdkafka's OFFSET_INVALID
T = TypeVar("T")
_GROUP_MOVED_ON = (27, 22, 25, 82)  # REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID


class _Record(RecordMetadata):
    """A librdkafka ``Message`` in the shape of kafka-python's ``ConsumerRecord``, and its own
    :class:`~rxcqrs.messages.RecordMetadata` (so that the stages make no second object per record)."""

    __slots__ = ("value",)

    def __init__(self, message: Any) -> None:
        kind, timestamp = message.timestamp()
        headers = message.headers()
        # librdkafka: 1 create time, 2 log-append time
        super().__init__(message.topic(), message.partition(), message.offset(), timestamp, 1 if kind == 2 else 0,
                         message.key(), tuple(headers) if headers else ())
        self.value = message.value()


def _ctp(tp: TopicPartition, offset: int | None = None) -> Any:
    from confluent_kafka import TopicPartition as ConfluentTP

    return ConfluentTP(tp.topic, tp.partition) if offset is None else ConfluentTP(tp.topic, tp.partition, offset)


def _tp(ctp: Any) -> TopicPartition:
    return TopicPartition(ctp.topic, ctp.partition)


class ConfluentConsumer:
    backend = "confluent"

    def __init__(self, consumer: Any, description: str = "confluent-kafka consumer",
                 config: dict[str, Any] | None = None) -> None:
        self._consumer = consumer
        self._config = config or {}
        self._paused: set[TopicPartition] = set()
        self._admin: Any = None
        self.description = description

    def _admin_client(self) -> Any:
        """Offsets are read through an admin client of its own: a consumer's ListOffsets request queues
        behind its long-polling fetch (``get_watermark_offsets`` took ~0.5 s per partition).

        After a failed request the client is dropped (:meth:`_admin_call`) and the next one starts afresh: after
        a broker restart librdkafka's admin client kept sending the old leader epoch and got
        ``FENCED_LEADER_EPOCH`` for every ListOffsets from then on (the lag froze, and the liveness check took
        the stale lag for records that never arrive)."""
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient({k: v for k, v in self._config.items()
                                       if k == "bootstrap.servers" or k.startswith(("security.", "sasl.", "ssl."))},
                                      logger=_client_log)
        return self._admin

    def _admin_call(self, request: Callable[[Any], T]) -> T:
        """``request(admin_client)``; on any error the admin client is dropped (fresh metadata next time)."""
        try:
            return request(self._admin_client())
        except Exception:
            self._admin = None
            raise

    @classmethod
    def create(cls, settings: ConsumerSettings) -> "ConfluentConsumer":
        from confluent_kafka import Consumer

        config = settings.to_confluent()
        consumer = started(Consumer, config, settings.bootstrap_timeout_ms, lambda why: FlowError(
            f"cannot create a Kafka consumer for {settings.bootstrap_servers} (group {settings.group_id}): {why}"))
        return cls(consumer, f"confluent-kafka consumer of group {settings.group_id} at {settings.bootstrap_servers}",
                   config)

    def topic_partitions(self, topic: str, timeout: float) -> int | None:
        metadata = self._admin_call(lambda admin: admin.list_topics(topic, timeout=timeout))
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            return None
        return len(found.partitions)

    def subscribe(self, topics: list[str], handler: RebalanceHandler) -> None:
        from confluent_kafka import OFFSET_BEGINNING, KafkaException

        cooperative = self._config.get("partition.assignment.strategy") == "cooperative-sticky"

        def on_assign(consumer: Any, partitions: list[Any]) -> None:
            starts = handler.assigned([_tp(p) for p in partitions])
            if not starts:
                return  # confluent-kafka assigns them at the committed offsets
            for p in partitions:
                start = starts.get(_tp(p))
                if start is not None:
                    p.offset = start if start > 0 else OFFSET_BEGINNING
            if cooperative:
                consumer.incremental_assign(partitions)
            else:
                consumer.assign(partitions)

        def on_revoke(consumer: Any, partitions: list[Any]) -> None:
            tps = [_tp(p) for p in partitions]
            offsets = handler.revoked(tps)
            if not offsets:
                return
            try:
                _check(consumer.commit(offsets=[_ctp(tp, o) for tp, o in offsets.items()], asynchronous=False))
            except (KafkaException, CommitError) as exc:
                handler.revoke_committed(offsets, exc)
            else:
                handler.revoke_committed(offsets, None)

        def on_lost(_consumer: Any, partitions: list[Any]) -> None:
            handler.lost([_tp(p) for p in partitions])

        self._consumer.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)

    def poll(self, timeout: float, max_records: int) -> dict[TopicPartition, list[Record]]:
        from confluent_kafka import KafkaError, KafkaException

        by_partition: dict[tuple[str, int], list[Any]] = {}  # plain tuples: one TopicPartition per partition
        for message in self._consumer.consume(num_messages=max_records, timeout=timeout):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                if error.fatal():
                    raise KafkaException(error)
                log.debug("consumer: %s", error)  # transient (a broker went away, ...): librdkafka retries
                continue
            record = _Record(message)
            where = (record.topic, record.partition)
            records = by_partition.get(where)
            if records is None:
                records = by_partition[where] = []
            records.append(record)
        return {TopicPartition(*where): records for where, records in by_partition.items()}

    def keepalive(self) -> dict[TopicPartition, list[Record]]:
        """Pause every partition, then serve callbacks (librdkafka purges what it prefetched for them and
        fetches again from the last record it handed out after ``resume``)."""
        self.pause([tp for tp in self.assignment() if tp not in self._paused])
        return self.poll(0.0, 1)

    def assignment(self) -> set[TopicPartition]:
        return {_tp(p) for p in self._consumer.assignment()}

    def paused(self) -> set[TopicPartition]:
        """What rxcqrs paused (kept across a revoke: librdkafka may keep a partition paused when it comes back,
        so it is resumed explicitly; resuming one that is not paused is harmless)."""
        return set(self._paused & self.assignment())

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        wanted = list(tps)
        if wanted:
            self._consumer.pause([_ctp(tp) for tp in wanted])
            self._paused.update(wanted)

    def resume(self, tps: Iterable[TopicPartition]) -> None:
        wanted = list(tps)
        if wanted:
            self._consumer.resume([_ctp(tp) for tp in wanted])
            self._paused.difference_update(wanted)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._consumer.seek(_ctp(tp, offset))

    def position(self, tp: TopicPartition) -> int | None:
        found = self._consumer.position([_ctp(tp)])
        offset = found[0].offset if found else _INVALID
        return None if offset < 0 else int(offset)

    def commit(self, offsets: dict[TopicPartition, int], timeout: float) -> None:
        from confluent_kafka import KafkaException

        try:
            result = self._consumer.commit(offsets=[_ctp(tp, o) for tp, o in offsets.items()], asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if getattr(error, "code", lambda: None)() in _GROUP_MOVED_ON:
                raise GroupMovedOnError(f"the group refused the commit: {exc!r}") from exc
            raise
        _check(result)

    def end_offsets(self, tps: list[TopicPartition], timeout: float) -> dict[TopicPartition, int]:
        return self._list_offsets(tps, timeout, latest=True)

    def beginning_offsets(self, tps: list[TopicPartition], timeout: float) -> dict[TopicPartition, int]:
        return self._list_offsets(tps, timeout, latest=False)

    def _list_offsets(self, tps: list[TopicPartition], timeout: float, latest: bool) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        from confluent_kafka import IsolationLevel
        from confluent_kafka.admin import OffsetSpec

        level = (IsolationLevel.READ_COMMITTED if self._config.get("isolation.level") == "read_committed"
                 else IsolationLevel.READ_UNCOMMITTED)
        spec = OffsetSpec.latest() if latest else OffsetSpec.earliest()

        def request(admin: Any) -> dict[TopicPartition, int]:
            futures = admin.list_offsets({_ctp(tp): spec for tp in tps}, isolation_level=level,
                                         request_timeout=timeout)
            return {_tp(ctp): int(future.result(timeout).offset) for ctp, future in futures.items()}

        return self._admin_call(request)

    def committed(self, tps: list[TopicPartition], timeout: float) -> dict[TopicPartition, int | None]:
        """Through the consumer's own group coordinator connection (not queued behind its fetches). Never through
        the admin client: librdkafka's ListConsumerGroupOffsets dereferences the consumer group an admin client
        does not have when the coordinator answers with an error (``rd_kafka_handle_OffsetFetch`` ->
        ``rd_kafka_cgrp_op``), and the process dies of SIGSEGV; a broker restart makes that answer
        (``tests/faults/test_faults.py::test_the_confluent_clients_offset_reads_survive_broker_restarts``)."""
        if not tps:
            return {}
        from confluent_kafka import KafkaException

        found = self._consumer.committed([_ctp(tp) for tp in tps], timeout=timeout)
        failed = [p for p in found if p.error is not None]
        if failed:  # an error is not "nothing committed": never read it as None
            raise KafkaException(failed[0].error)
        return {_tp(p): (None if p.offset < 0 else int(p.offset)) for p in found}

    def group_size(self, timeout: float) -> int | None:
        """How many members the group has (for the liveness check), through the admin client."""
        group = self._config["group.id"]
        found = self._admin_call(lambda admin: admin.describe_consumer_groups([group], request_timeout=timeout)[
            group].result(timeout))
        return len(found.members)

    def interrupt(self) -> None:
        """librdkafka's calls all honour their timeouts: nothing to break."""

    def close(self, timeout: float) -> None:
        self._consumer.close()


def _check(result: Any) -> None:
    """A synchronous commit returns the partitions with a per-partition error set."""
    failed = [p for p in (result or []) if getattr(p, "error", None) is not None]
    if failed:
        raise CommitError(f"commit failed for {[(p.topic, p.partition, str(p.error)) for p in failed]}")


def reach(client: Any, timeout_ms: int) -> None:
    """Fail at creation when no broker answers (librdkafka connects lazily; kafka-python bootstraps at once)."""
    from confluent_kafka import Consumer

    try:
        client.list_topics(timeout=timeout_ms / 1000)
    except Exception:
        if isinstance(client, Consumer):  # leaves no group member behind (a producer has nothing to close)
            client.close()
        raise


def started(client_class: Any, config: dict[str, Any], timeout_ms: int,
            failure: Callable[[str], Exception]) -> Any:
    """A librdkafka client (``Consumer`` or ``Producer``) of ``config`` that reached a broker within
    ``timeout_ms``; else ``failure(why)`` is raised, ``why`` with the config's secrets redacted."""
    try:
        client = client_class(config, logger=_client_log)
        reach(client, timeout_ms)
    except Exception as exc:
        raise failure(redact_error(exc, config)) from None
    return client
