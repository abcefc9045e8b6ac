"""The kafka-python backend (pure Python; ``backend="kafka-python"``): ``KafkaConsumer`` and ``KafkaProducer``
behind rxcqrs' client seam.

kafka-python 3 runs its network loop on an IO thread of its own: rebalance listeners run there, where a
blocking consumer call raises, so the listener is ``async`` and awaits ``commit_async``. The in-memory
:class:`~rxcqrs.testing.FakeConsumer` speaks the same API, so the unit tier runs this adapter too.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from rxcqrs.exceptions import DeliveryError, FlowError, GroupMovedOnError
from rxcqrs.kafka.client import Delivered, RebalanceHandler, Record
from rxcqrs.kafka.settings import ConsumerSettings, ProducerSettings
from rxcqrs.messages import TopicPartition
from rxcqrs.redact import redact_error

__all__ = ["KafkaPythonConsumer", "KafkaPythonProducer"]

log = logging.getLogger(__name__)


def _ktp(tp: TopicPartition) -> Any:
    from kafka import TopicPartition as KafkaTP

    return KafkaTP(tp.topic, tp.partition)


def _tp(ktp: Any) -> TopicPartition:
    return TopicPartition(ktp.topic, ktp.partition)


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


def _security(config: dict[str, Any]) -> dict[str, Any]:
    """The options an admin client needs to reach the same cluster as the client (SSL/SASL)."""
    return {k: v for k, v in config.items() if k.startswith(("security_", "sasl_", "ssl_"))}


class KafkaPythonConsumer:
    backend = "kafka-python"

    def __init__(self, consumer: Any, description: str = "kafka-python consumer",
                 config: dict[str, Any] | None = None) -> None:
        self._consumer = consumer
        self._config = config or {}
        self.description = description

    @classmethod
    def create(cls, settings: ConsumerSettings) -> "KafkaPythonConsumer":
        from kafka import KafkaConsumer

        config = settings.to_kafka()
        try:
            consumer = KafkaConsumer(**config)
        except Exception as exc:
            raise FlowError(f"cannot create a Kafka consumer for {settings.bootstrap_servers} (group "
                            f"{settings.group_id}): {redact_error(exc, config)}") from None
        return cls(consumer, f"kafka-python consumer of group {settings.group_id} at {settings.bootstrap_servers}",
                   config)

    def topic_partitions(self, topic: str, timeout: float) -> int | None:
        """Through a separate admin request: making the consumer itself fetch metadata for all topics before
        it joins (``partitions_for_topic``) leaves kafka-python 3.0's cooperative rebalance stuck."""
        if not self._config or "bootstrap_servers" not in self._config or hasattr(self._consumer, "broker"):
            partitions = self._consumer.partitions_for_topic(topic)  # the in-memory fake
            return len(partitions) if partitions else None
        from rxcqrs.kafka.admin import topic_partitions

        return topic_partitions(topic, bootstrap_servers=",".join(self._config["bootstrap_servers"]),
                                request_timeout_ms=_ms(timeout), **_security(self._config))

    def subscribe(self, topics: list[str], handler: RebalanceHandler) -> None:
        self._consumer.subscribe(topics, listener=_listener(handler, self._consumer))

    def poll(self, timeout: float, max_records: int) -> dict[TopicPartition, list[Record]]:
        records = self._consumer.poll(timeout_ms=_ms(timeout), max_records=max_records)
        return {_tp(ktp): recs for ktp, recs in records.items()} if records else {}

    def keepalive(self) -> dict[TopicPartition, list[Record]]:
        """Pause every partition, then poll: kafka-python keeps (parks) what it already fetched for them."""
        assigned = self._consumer.assignment()
        paused = self._consumer.paused()
        to_pause = [k for k in assigned if k not in paused]
        if to_pause:
            self._consumer.pause(*to_pause)
        return self.poll(0.0, 1)

    def assignment(self) -> set[TopicPartition]:
        return {_tp(k) for k in self._consumer.assignment()}

    def paused(self) -> set[TopicPartition]:
        return {_tp(k) for k in self._consumer.paused()}

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        self._consumer.pause(*[_ktp(tp) for tp in tps])

    def resume(self, tps: Iterable[TopicPartition]) -> None:
        self._consumer.resume(*[_ktp(tp) for tp in tps])

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._consumer.seek(_ktp(tp), offset)

    def position(self, tp: TopicPartition) -> int | None:
        try:
            return int(self._consumer.position(_ktp(tp), timeout_ms=0))
        except TypeError:  # the fake takes no timeout
            return int(self._consumer.position(_ktp(tp)))
        except Exception:  # not known yet (no fetch position): the caller treats it as unknown
            return None

    def commit(self, offsets: dict[TopicPartition, int], timeout: float) -> None:
        from kafka.errors import (
            CommitFailedError,
            FencedInstanceIdError,
            IllegalGenerationError,
            RebalanceInProgressError,
            UnknownMemberIdError,
        )

        try:
            self._consumer.commit(_offsets(offsets), timeout_ms=_ms(timeout))
        except (CommitFailedError, FencedInstanceIdError, IllegalGenerationError, RebalanceInProgressError,
                UnknownMemberIdError) as exc:
            raise GroupMovedOnError(f"the group refused the commit: {exc!r}") from exc

    def end_offsets(self, tps: list[TopicPartition], timeout: float) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        return {_tp(k): v for k, v in self._consumer.end_offsets([_ktp(tp) for tp in tps], _ms(timeout)).items()}

    def beginning_offsets(self, tps: list[TopicPartition], timeout: float) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        found = self._consumer.beginning_offsets([_ktp(tp) for tp in tps], _ms(timeout))
        return {_tp(k): v for k, v in found.items()}

    def committed(self, tps: list[TopicPartition], timeout: float) -> dict[TopicPartition, int | None]:
        return {tp: self._consumer.committed(_ktp(tp)) for tp in tps}

    def group_size(self, timeout: float) -> int | None:
        """How many members the group has (for the liveness check), through an admin client."""
        if hasattr(self._consumer, "group_size"):  # the in-memory fake knows its group
            return int(self._consumer.group_size())
        from rxcqrs.kafka.admin import group_size

        return group_size(self._config["group_id"], bootstrap_servers=",".join(self._config["bootstrap_servers"]),
                          request_timeout_ms=_ms(timeout), **_security(self._config))

    def interrupt(self) -> None:
        """Stop kafka-python's network loop: every call waiting on it raises at once (the consumer is dead
        afterwards and the source replaces it)."""
        net = getattr(self._consumer, "_net", None)
        if net is not None and hasattr(net, "stop"):
            net.stop(timeout_ms=2000)
        elif hasattr(self._consumer, "interrupt"):
            self._consumer.interrupt()

    def close(self, timeout: float) -> None:
        self._consumer.close(autocommit=False, timeout_ms=_ms(timeout))


def _offsets(offsets: dict[TopicPartition, int]) -> dict[Any, Any]:
    from kafka.structs import OffsetAndMetadata

    return {_ktp(tp): OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}


def _listener(handler: RebalanceHandler, consumer: Any) -> Any:
    """kafka-python 3 runs the listener on its IO thread, where blocking consumer calls raise: it is async
    and awaits ``commit_async``; the handler touches only thread-safe state."""
    from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener

    class Listener(AsyncConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked: Any) -> None:
            tps = [_tp(k) for k in revoked]
            if not tps:
                return
            offsets = handler.revoked(tps)
            if not offsets:
                return
            try:
                await consumer.commit_async(_offsets(offsets))
            except Exception as exc:  # the group moved on: those records will be redelivered
                handler.revoke_committed(offsets, exc)
            else:
                handler.revoke_committed(offsets, None)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            starts = handler.assigned([_tp(k) for k in assigned])
            for tp, start in starts.items():  # fetch positions only: nothing blocks on the IO thread
                if start > 0:
                    consumer.seek(_ktp(tp), start)
                else:
                    consumer.seek_to_beginning(_ktp(tp))

        async def on_partitions_lost(self, lost: Any) -> None:
            handler.lost([_tp(k) for k in lost])

    return Listener()


class KafkaPythonProducer:
    backend = "kafka-python"

    def __init__(self, producer: Any, description: str = "kafka-python producer",
                 config: dict[str, Any] | None = None) -> None:
        self._producer = producer
        self._config = config or {}
        self.description = description

    @property
    def client(self) -> Any:
        """The ``KafkaProducer`` (or fake) underneath."""
        return self._producer

    @classmethod
    def create(cls, settings: ProducerSettings) -> "KafkaPythonProducer":
        from kafka import KafkaProducer

        config = settings.to_kafka()
        try:
            producer = KafkaProducer(**config)
        except Exception as exc:
            raise DeliveryError(f"cannot create a Kafka producer for {settings.bootstrap_servers}: "
                                f"{redact_error(exc, config)}") from None
        return cls(producer, f"kafka-python producer at {settings.bootstrap_servers}", config)

    def send(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]] | None,
             partition: int | None, timestamp_ms: int | None, on_done: Delivered) -> None:
        try:
            future = self._producer.send(topic, value=value, key=key, headers=headers, partition=partition,
                                         timestamp_ms=timestamp_ms)
        except Exception as exc:  # e.g. metadata not available within max_block_ms, record too large
            on_done(exc)
            return
        future.add_callback(lambda _metadata: on_done(None))
        future.add_errback(on_done)

    def topic_exists(self, topic: str, timeout: float) -> bool:
        """Through an admin metadata request (the producer's own would wait ``max_block_ms`` for a topic that
        does not exist)."""
        if "bootstrap_servers" not in self._config:  # the in-memory fake
            return bool(self._producer.partitions_for(topic))
        from rxcqrs.kafka.admin import topic_partitions

        return topic_partitions(topic, bootstrap_servers=",".join(self._config["bootstrap_servers"]),
                                request_timeout_ms=_ms(timeout), **_security(self._config)) is not None

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        self._producer.close(timeout)
