"""Start-up liveness on the real broker, with both clients: a topic created, filled and consumed at once,
50 rounds (``RXCQRS_LIVENESS_ROUNDS``), every record every time."""

from __future__ import annotations

import os
import uuid

import pytest

from rxcqrs import run
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
from rxcqrs.messages import OutgoingRecord
from tests.helpers import Collect, wait_until

ROUNDS = int(os.environ.get("RXCQRS_LIVENESS_ROUNDS", "50"))


@pytest.mark.parametrize("backend", ["kafka-python", "confluent"])
def test_create_produce_and_consume_at_once_every_round(backend: str, kafka_bootstrap: str) -> None:
    restarts = 0
    for round_ in range(ROUNDS):
        topic, group = f"live.{backend}.{uuid.uuid4().hex[:8]}", f"g.live.{uuid.uuid4().hex[:8]}"
        create_topics({topic: 4}, bootstrap_servers=kafka_bootstrap)
        try:
            producer = KafkaSink(topic, ProducerSettings(bootstrap_servers=kafka_bootstrap, backend=backend))  # type: ignore[arg-type]
            for i in range(100):
                producer.on_next(OutgoingRecord(str(i).encode(), partition=i % 4))
            producer.on_completed()
            sink = Collect()
            source = KafkaSource(topic, ConsumerSettings(group_id=group, bootstrap_servers=kafka_bootstrap,
                                                         backend=backend),  # type: ignore[arg-type]
                                 SourceSettings(commit_interval=0.1))
            flow = run(source, sink)
            done = {p: 25 for p in range(4)}
            wait_until(lambda g=group, t=topic, d=done: committed_offsets(g, t, bootstrap_servers=kafka_bootstrap) == d,
                       120, f"round {round_}: every record committed")
            flow.stop_and_wait()
            assert sorted(int(v) for v in sink.values()) == list(range(100)), f"round {round_}"
            restarts += source.metrics.get("consumer_restarts")
        finally:
            delete_topics([topic], bootstrap_servers=kafka_bootstrap)
    print(f"\nLIVENESS {backend}: {ROUNDS} rounds, {restarts} consumers replaced by the watchdog")
