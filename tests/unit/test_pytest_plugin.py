"""The pytest plugin's fast-tier fixtures, as a user's test would use them."""

from __future__ import annotations

from typing import Any

from rxcqrs import run
from rxcqrs.cassandra import CassandraSink
from rxcqrs.kafka import ConsumerSettings, KafkaSource, SourceSettings
from rxcqrs.testing import FakeBroker, fake_consumers
from tests.helpers import wait_until


def test_a_flow_on_the_fake_broker_and_session(fake_broker: FakeBroker, fake_session: Any) -> None:
    fake_broker.create_topic("orders", 2)
    for i in range(10):
        fake_broker.append("orders", str(i).encode(), partition=i % 2)
    source = KafkaSource("orders", ConsumerSettings(group_id="g"), SourceSettings(poll_timeout=0.01),
                         client_factory=fake_consumers(fake_broker))
    flow = run(source, CassandraSink(fake_session))
    wait_until(lambda: source.committer.records_committed() == 10, 10, "all committed")
    flow.stop_and_wait()
    assert len(fake_session.calls) == 10
