"""The real broker: a 3-partition topic, 1,000 keyed records, a 2-member consumer group."""

from __future__ import annotations

import threading
from collections import Counter

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from kafka import KafkaProducer

from tests.helpers import wait_until


def test_two_member_group_sees_every_record_exactly_once(topic_factory, kafka_bootstrap, group_id) -> None:  # type: ignore[no-untyped-def]
    topic = topic_factory(3)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    for i in range(1000):
        producer.send(topic, key=f"key-{i % 37}".encode(), value=str(i).encode())
    producer.flush()
    producer.close()

    seen: dict[str, list[tuple[int, int, bytes]]] = {"a": [], "b": []}
    partitions: dict[str, set[int]] = {"a": set(), "b": set()}
    stop = threading.Event()

    def stable() -> bool:
        a, b = partitions["a"], partitions["b"]
        return bool(a) and bool(b) and not a & b and a | b == {0, 1, 2}

    def member(name: str) -> None:
        # confluent-kafka: heartbeats and fetches run on librdkafka's threads, so a slow, busy machine does not
        # starve them (two kafka-python members in one process once missed their deadline, their IO threads'
        # tasks running 0.8 s each)
        consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group_id,
                             "auto.offset.reset": "earliest", "enable.auto.commit": False,
                             "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000})
        consumer.subscribe([topic])
        try:
            # join first; read only once the group is stable with both members, from the beginning
            while not stable() and not stop.is_set():
                consumer.poll(0.1)  # what it returns now is read again after the seek below
                partitions[name] = {tp.partition for tp in consumer.assignment()}
            for partition in partitions[name]:
                wait_until(lambda p=partition: _seek_to_beginning(consumer, topic, p), 30, "a seek")
            while not stop.is_set():
                batch = [m for m in consumer.consume(500, 0.2) if m.error() is None]
                seen[name].extend((m.partition(), m.offset(), m.value()) for m in batch)
                if batch:
                    consumer.commit(asynchronous=False)
        finally:
            consumer.close()

    threads = [threading.Thread(target=member, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    wait_until(lambda: len(seen["a"]) + len(seen["b"]) >= 1000, 90, "1,000 records")
    stop.set()
    for t in threads:
        t.join(30)
    values = Counter(v for records in seen.values() for _, _, v in records)
    assert set(values) == {str(i).encode() for i in range(1000)}
    assert max(values.values()) == 1, "clean run: no record twice"
    assert partitions["a"] and partitions["b"] and not partitions["a"] & partitions["b"]
    assert partitions["a"] | partitions["b"] == {0, 1, 2}


def _seek_to_beginning(consumer: Consumer, topic: str, partition: int) -> bool:
    """Seek, or False while librdkafka has not started fetching the partition yet (its seek says so)."""
    try:
        consumer.seek(TopicPartition(topic, partition, OFFSET_BEGINNING))
    except KafkaException:
        consumer.poll(0.05)
        return False
    return True
