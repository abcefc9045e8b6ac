"""The source's liveness checks on the fake and a virtual clock: a consumer that never gets an assignment, or
whose poll hangs, is closed and replaced (same group), the source gives up after a few replacements, and an
idle member of a full group is left alone. The timeouts are the defaults' size (tens of seconds); the test
moves the clock past them instead of waiting."""

from __future__ import annotations

import pytest

from rxcqrs import run
from rxcqrs.exceptions import FlowError
from rxcqrs.kafka import ConsumerSettings, KafkaSource, SourceSettings
from rxcqrs.messages import TopicPartition
from rxcqrs.testing import FakeBroker, FakeConsumer, VirtualClock, fake_consumers
from tests.helpers import Collect, filled_broker, wait_until

QUICK_FAKE = {"poll_timeout": 0.005}  # the fake's poll waits on real time: keep it short
ASSIGNMENT_TIMEOUT = 30.0
STUCK_TIMEOUT = 60.0


def source(broker: FakeBroker, consumers: list[FakeConsumer], fault: str, clock: VirtualClock, faulty: int = 1,
           **settings: object) -> KafkaSource:
    def prepare(consumer: FakeConsumer) -> None:
        if len(consumers) < faulty:  # the first `faulty` consumers misbehave, the next one works
            setattr(consumer, fault, True)

    return KafkaSource("t", ConsumerSettings(group_id="g"), SourceSettings(**{**QUICK_FAKE, **settings}),  # type: ignore[arg-type]
                       client_factory=fake_consumers(broker, consumers, prepare), clock=clock)


def polled(consumers: list[FakeConsumer], n: int) -> bool:
    """The ``n``-th consumer exists and has polled (it is past its subscription, waiting for partitions)."""
    return len(consumers) >= n and consumers[n - 1].polls > 0


def test_a_consumer_that_never_gets_an_assignment_is_replaced() -> None:
    broker, clock = filled_broker(), VirtualClock()
    consumers: list[FakeConsumer] = []
    sink = Collect()
    src = source(broker, consumers, "never_assigned", clock, assignment_timeout=ASSIGNMENT_TIMEOUT,
                 stuck_timeout=10 * ASSIGNMENT_TIMEOUT)
    flow = run(src, sink)
    wait_until(lambda: polled(consumers, 1), 10, "the first consumer polling")
    clock.advance(ASSIGNMENT_TIMEOUT - 1)
    wait_until(lambda: consumers[0].polls > 3, 10, "more polls before the timeout")
    assert src.metrics.get("consumer_restarts") == 0  # not yet
    clock.advance(2)
    wait_until(lambda: broker.committed["g"] == {TopicPartition("t", 0): 20, TopicPartition("t", 1): 20}, 10,
               "everything committed by the replacement")
    flow.stop_and_wait()
    assert len(consumers) == 2 and consumers[0].closed and src.metrics.get("consumer_restarts") == 1
    assert len(sink.items) == 40


def test_a_consumer_whose_poll_hangs_is_interrupted_and_replaced() -> None:
    broker, clock = filled_broker(), VirtualClock()
    consumers: list[FakeConsumer] = []
    sink = Collect()
    src = source(broker, consumers, "hang_polls", clock, stuck_timeout=STUCK_TIMEOUT)
    flow = run(src, sink)
    wait_until(lambda: consumers and consumers[0].hanging.is_set(), 10, "the first consumer's poll hanging")
    clock.advance(STUCK_TIMEOUT - 5)
    assert src.metrics.get("consumer_restarts") == 0 and not sink.items
    clock.advance(10)  # the watchdog looks every second of the clock
    wait_until(lambda: len(sink.items) == 40, 10, "every record through the replacement")
    flow.stop_and_wait()
    assert len(consumers) == 2 and src.metrics.get("consumer_restarts") == 1


def test_the_source_gives_up_after_a_few_replacements_with_a_clear_error() -> None:
    broker, clock = filled_broker(), VirtualClock()
    consumers: list[FakeConsumer] = []
    src = source(broker, consumers, "never_assigned", clock, faulty=10, assignment_timeout=ASSIGNMENT_TIMEOUT,
                 stuck_timeout=10 * ASSIGNMENT_TIMEOUT, max_consumer_restarts=2)
    flow = run(src, Collect())
    for n in (1, 2, 3):
        wait_until(lambda n=n: polled(consumers, n), 10, f"consumer {n} polling")
        clock.advance(ASSIGNMENT_TIMEOUT + 1)
    with pytest.raises(FlowError, match="gave up after replacing the consumer 2 times; last reason: no partition "
                                        "assigned after 30s although the topic has 2 partitions"):
        flow.wait(20)
    assert len(consumers) == 3


def test_an_idle_member_of_a_full_group_is_left_alone() -> None:
    """More members than partitions: having no partition is right, not a reason to replace anything."""
    broker, clock = filled_broker(partitions=1), VirtualClock()
    first_consumers: list[FakeConsumer] = []
    busy = KafkaSource("t", ConsumerSettings(group_id="g"), SourceSettings(**QUICK_FAKE),  # type: ignore[arg-type]
                       client_factory=fake_consumers(broker, first_consumers), clock=clock)
    busy_flow = run(busy, Collect(hold=True))
    wait_until(lambda: busy.assigned(), 10, "the first member owns the partition")
    consumers: list[FakeConsumer] = []
    idle = source(broker, consumers, "never_assigned", clock, faulty=0, assignment_timeout=ASSIGNMENT_TIMEOUT,
                  stuck_timeout=10 * ASSIGNMENT_TIMEOUT)
    idle_flow = run(idle, Collect())
    polls = 0
    for _ in range(3):  # three assignment timeouts pass; each time the group is found full
        polls = idle.metrics.get("polls")
        wait_until(lambda before=polls: idle.metrics.get("polls") > before + 2, 10, "the idle member polling")
        clock.advance(ASSIGNMENT_TIMEOUT + 1)
    wait_until(lambda: idle.metrics.get("polls") > polls + 10, 10, "the idle member still polling")
    assert idle.metrics.get("consumer_restarts") == 0 and len(consumers) == 1
    idle_flow.stop_and_wait()
    busy_flow.stop(drain=False)
    busy_flow.wait_quietly(10)
