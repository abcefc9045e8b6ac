"""The source's liveness watchdog on the fake: a consumer that never gets an assignment, or whose poll
hangs, is closed and replaced (same group), and the source gives up after a few replacements."""

from __future__ import annotations

import pytest

from rxcqrs import run
from rxcqrs.exceptions import FlowError
from rxcqrs.kafka import ConsumerSettings, KafkaSource, SourceSettings
from rxcqrs.messages import TopicPartition
from rxcqrs.testing import FakeBroker, FakeConsumer, fake_consumers
from tests.helpers import Collect, wait_until

FAST = {"poll_timeout": 0.01, "keepalive_interval": 0.05, "commit_interval": 0.05, "lag_interval": 0.05}


def filled(partitions: int = 2, per_partition: int = 20) -> FakeBroker:
    broker = FakeBroker()
    broker.create_topic("t", partitions)
    for p in range(partitions):
        for i in range(per_partition):
            broker.append("t", f"{p}-{i}".encode(), partition=p)
    return broker


def source(broker: FakeBroker, consumers: list[FakeConsumer], fault: str, faulty: int = 1,
           **settings: object) -> KafkaSource:
    def prepare(consumer: FakeConsumer) -> None:
        if len(consumers) < faulty:  # the first `faulty` consumers misbehave, the next one works
            setattr(consumer, fault, True)

    return KafkaSource("t", ConsumerSettings(group_id="g"), SourceSettings(**{**FAST, **settings}),  # type: ignore[arg-type]
                       client_factory=fake_consumers(broker, consumers, prepare))


def test_a_consumer_that_never_gets_an_assignment_is_replaced() -> None:
    broker = filled()
    consumers: list[FakeConsumer] = []
    sink = Collect()
    src = source(broker, consumers, "never_assigned", assignment_timeout=0.3)
    flow = run(src, sink)
    wait_until(lambda: broker.committed["g"] == {TopicPartition("t", 0): 20, TopicPartition("t", 1): 20}, 10,
               "everything committed by the replacement")
    flow.stop_and_wait()
    assert len(consumers) == 2 and consumers[0].closed and src.metrics.get("consumer_restarts") == 1
    assert len(sink.items) == 40


def test_a_consumer_whose_poll_hangs_is_interrupted_and_replaced() -> None:
    broker = filled()
    consumers: list[FakeConsumer] = []
    sink = Collect()
    src = source(broker, consumers, "hang_polls", stuck_timeout=0.3)
    flow = run(src, sink)
    wait_until(lambda: len(sink.items) == 40, 10, "every record through the replacement")
    flow.stop_and_wait()
    assert len(consumers) == 2 and src.metrics.get("consumer_restarts") == 1


def test_the_source_gives_up_after_a_few_replacements_with_a_clear_error() -> None:
    broker = filled()
    consumers: list[FakeConsumer] = []
    src = source(broker, consumers, "never_assigned", faulty=10, assignment_timeout=0.2, max_consumer_restarts=2)
    flow = run(src, Collect())
    with pytest.raises(FlowError, match="gave up after replacing the consumer 2 times; last reason: no partition "
                                        "assigned after 0.2s although the topic has 2 partitions"):
        flow.wait(20)
    assert len(consumers) == 3


def test_an_idle_member_of_a_full_group_is_left_alone() -> None:
    """More members than partitions: having no partition is right, not a reason to replace anything."""
    broker = filled(partitions=1)
    first_consumers: list[FakeConsumer] = []
    busy = KafkaSource("t", ConsumerSettings(group_id="g"), SourceSettings(**FAST),  # type: ignore[arg-type]
                       client_factory=fake_consumers(broker, first_consumers))
    busy_flow = run(busy, Collect(hold=True))
    wait_until(lambda: busy.assigned(), 10, "the first member owns the partition")
    consumers: list[FakeConsumer] = []
    idle = source(broker, consumers, "never_assigned", faulty=0, assignment_timeout=0.2)
    idle_flow = run(idle, Collect())
    wait_until(lambda: idle.metrics.get("polls") > 100, 10, "the idle member keeps polling (past the timeout)")
    assert idle.metrics.get("consumer_restarts") == 0 and len(consumers) == 1
    idle_flow.stop_and_wait()
    busy_flow.stop(drain=False)
    busy_flow.wait_quietly(10)
