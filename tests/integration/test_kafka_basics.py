"""The real broker: a 3-partition topic, 1,000 keyed records, a 2-member consumer group."""

from __future__ import annotations

import threading
from collections import Counter

from kafka import KafkaConsumer, KafkaProducer

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
        consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group_id,
                                 auto_offset_reset="earliest", enable_auto_commit=False,
                                 session_timeout_ms=6000, heartbeat_interval_ms=1000)
        # the topic's metadata before joining: kafka-python joins with whatever it knows, and a member that
        # joined knowing no partitions may wait a long time for its share (what rxcqrs' watchdog handles)
        wait_until(lambda: consumer.partitions_for_topic(topic), 30, "the topic's metadata")
        consumer.subscribe([topic])
        try:
            # join first; read only once the group is stable with both members, from the beginning
            while not stable() and not stop.is_set():
                consumer.poll(timeout_ms=100)
                partitions[name] = {tp.partition for tp in consumer.assignment()}
            consumer.seek_to_beginning()
            while not stop.is_set():
                batch = consumer.poll(timeout_ms=200)
                for tp, records in batch.items():
                    seen[name].extend((tp.partition, r.offset, r.value) for r in records)
                if batch:
                    consumer.commit()
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
