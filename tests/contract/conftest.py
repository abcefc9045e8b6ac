"""One harness per Kafka backend, so every contract test runs against the in-memory fake, kafka-python on the
real broker and confluent-kafka on the real broker. A behaviour the fake shows and a real client does not
is a bug in the fake."""

from __future__ import annotations

import re
import uuid
from typing import Any, Iterator

import pytest

from rxcqrs.kafka import (
    ConsumerSettings,
    KafkaSink,
    KafkaSource,
    ProducerSettings,
    SourceSettings,
    committed_offsets,
    create_topics,
    delete_topics,
)
from rxcqrs.messages import OutgoingRecord, TopicPartition
from rxcqrs.testing import FakeBroker, fake_consumers, fake_producer

#: short timings, the same for every backend
FAST = {"poll_timeout": 0.05, "keepalive_interval": 0.1, "commit_interval": 0.1}


class Harness:
    """What a contract test needs from a backend: topics, records, sources, sinks, committed offsets."""

    name: str

    def __init__(self, slug: str) -> None:
        self.slug = slug
        self.group = f"g.{slug}"

    def topic(self, partitions: int = 1, suffix: str = "") -> str:
        raise NotImplementedError

    def produce(self, topic: str, records: list[tuple[int, bytes, bytes | None]]) -> None:
        """``(partition, value, key)`` records, sent in order."""
        raise NotImplementedError

    def source(self, topic: str, group: str | None = None, demand: str = "auto", consumer: dict[str, Any] | None = None,
               **settings: Any) -> KafkaSource:
        raise NotImplementedError

    def sink(self, topic: str | None = None) -> KafkaSink:
        raise NotImplementedError

    def committed(self, topic: str, group: str | None = None) -> dict[int, int | None]:
        raise NotImplementedError

    def records(self, topic: str) -> list[Any]:
        """Every record of ``topic`` as ``(partition, offset, key, value, headers)``."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def fill(self, topic: str, per_partition: int, partitions: int) -> None:
        self.produce(topic, [(p, f"{p}-{i}".encode(), str(uuid.uuid4()).encode())
                             for i in range(per_partition) for p in range(partitions)])


class FakeHarness(Harness):
    name = "fake"

    def __init__(self, slug: str) -> None:
        super().__init__(slug)
        self.broker = FakeBroker()

    def topic(self, partitions: int = 1, suffix: str = "") -> str:
        name = f"t.{self.slug}{suffix}"
        self.broker.create_topic(name, partitions)
        return name

    def produce(self, topic: str, records: list[tuple[int, bytes, bytes | None]]) -> None:
        for partition, value, key in records:
            self.broker.append(topic, value, key=key, partition=partition)

    def source(self, topic: str, group: str | None = None, demand: str = "auto", consumer: dict[str, Any] | None = None,
               **settings: Any) -> KafkaSource:
        return KafkaSource(topic, ConsumerSettings(group_id=group or self.group, backend="kafka-python",
                                                   **(consumer or {})),
                           SourceSettings(**{**FAST, **settings}), demand=demand,  # type: ignore[arg-type]
                           client_factory=fake_consumers(self.broker))

    def sink(self, topic: str | None = None) -> KafkaSink:
        return KafkaSink(topic, fake_producer(self.broker))

    def committed(self, topic: str, group: str | None = None) -> dict[int, int | None]:
        found = self.broker.committed[group or self.group]
        return {p: found.get(TopicPartition(topic, p)) for p in range(len(self.broker.topics[topic]))}

    def records(self, topic: str) -> list[Any]:
        return sorted((r.partition, r.offset, r.key, r.value, list(r.headers)) for r in self.broker.records(topic))


class RealHarness(Harness):
    def __init__(self, slug: str, backend: str, bootstrap: str) -> None:
        super().__init__(slug)
        self.name = backend
        self.bootstrap = bootstrap
        self.made: list[str] = []

    def topic(self, partitions: int = 1, suffix: str = "") -> str:
        name = f"t.{self.slug}{suffix}"
        create_topics({name: partitions}, bootstrap_servers=self.bootstrap)
        self.made.append(name)
        return name

    def produce(self, topic: str, records: list[tuple[int, bytes, bytes | None]]) -> None:
        sink = self.sink(topic)
        for partition, value, key in records:
            sink.on_next(OutgoingRecord(value, key, partition=partition))
        sink.on_completed()
        sink.raise_if_failed()

    def source(self, topic: str, group: str | None = None, demand: str = "auto", consumer: dict[str, Any] | None = None,
               **settings: Any) -> KafkaSource:
        options = {"session_timeout_ms": 6000, **(consumer or {})}
        return KafkaSource(topic, ConsumerSettings(group_id=group or self.group, bootstrap_servers=self.bootstrap,
                                                   backend=self.name, **options),  # type: ignore[arg-type]
                           SourceSettings(**{**FAST, **settings}), demand=demand)  # type: ignore[arg-type]

    def sink(self, topic: str | None = None) -> KafkaSink:
        return KafkaSink(topic, ProducerSettings(bootstrap_servers=self.bootstrap, backend=self.name))  # type: ignore[arg-type]

    def committed(self, topic: str, group: str | None = None) -> dict[int, int | None]:
        return committed_offsets(group or self.group, topic, bootstrap_servers=self.bootstrap)

    def records(self, topic: str) -> list[Any]:
        from kafka import KafkaConsumer
        from kafka import TopicPartition as KafkaTP

        reader = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        try:
            tps = [KafkaTP(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
            reader.assign(tps)
            reader.seek_to_beginning(*tps)
            ends = reader.end_offsets(tps)
            out = []
            while any(reader.position(tp) < ends[tp] for tp in tps):
                for recs in reader.poll(timeout_ms=500).values():
                    out += [(r.partition, r.offset, r.key, r.value, list(r.headers or ())) for r in recs]
            return sorted(out)
        finally:
            reader.close()

    def close(self) -> None:
        if self.made:
            try:
                delete_topics(self.made + [t + ".dlq" for t in self.made], bootstrap_servers=self.bootstrap)
            except Exception:
                pass


@pytest.fixture(params=["fake", "kafka-python", "confluent"])
def kafka(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """The backend under test."""
    slug = re.sub(r"[^a-zA-Z0-9]+", "_", request.node.originalname)[:28].strip("_").lower()
    slug = f"{slug}_{request.param.replace('-', '')}_{uuid.uuid4().hex[:6]}"
    if request.param == "fake":
        harness: Harness = FakeHarness(slug)
    else:
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        harness = RealHarness(slug, request.param, bootstrap)
    yield harness
    harness.close()
