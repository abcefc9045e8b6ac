"""The source's clocks on a virtual clock: commits every ``commit_interval``, a drain that ends at its
deadline, and a rewound partition held for the backoff's delay; each at the defaults' size, without waiting.
And the poll timeouts a window uses (the fake's polls wait on real time: short ones)."""

from __future__ import annotations

from typing import Any

import pytest

from rxcqrs import run
from rxcqrs.backoff import Backoff
from rxcqrs.exceptions import DrainTimeoutError
from rxcqrs.kafka import ConsumerSettings, KafkaSource, SourceSettings
from rxcqrs.kafka.poller import SETTLING_POLL
from rxcqrs.messages import TopicPartition
from rxcqrs.testing import VirtualClock, fake_consumers
from tests.helpers import Collect, fake_source, filled_broker, wait_until

P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)
CLOCKED = {"poll_timeout": 0.005, "keepalive_interval": 1.0}  # the fake's poll waits on real time


def turns(source: KafkaSource, clock: VirtualClock, seconds: float) -> None:
    """Move the clock and wait until the poll thread has polled after the move (a window or a keep-alive)."""
    def polls() -> int:
        return int(source.metrics.get("keepalive_polls") or 0) + int(source.metrics.get("polls") or 0)

    before = polls()
    clock.advance(seconds)
    wait_until(lambda: polls() > before, 10, "a turn of the poll loop after the move")


def test_done_records_are_committed_once_the_commit_interval_has_passed() -> None:
    broker, clock = filled_broker(2, 5), VirtualClock()
    sink = Collect(hold=True)
    source = fake_source(broker, "t", clock=clock, commit_interval=5.0, commit_every=1_000, **CLOCKED)
    flow = run(source, sink)
    wait_until(lambda: len(sink.items) == 10, 10, "every record in flight")
    for env in sink.items:
        if env.meta.partition == 0:
            env.ack()  # p1 stays in flight: the window is not settled, only the interval can commit p0
    turns(source, clock, 2.0)
    turns(source, clock, 2.0)
    assert broker.committed["g"].get(P0) is None  # 4 s: not yet
    clock.advance(1.5)
    wait_until(lambda: broker.committed["g"].get(P0) == 5, 10, "p0 committed at the interval")
    assert broker.committed["g"].get(P1) is None
    for env in sink.items:
        env.ack()
    flow.stop_and_wait()
    assert dict(broker.committed["g"]) == {P0: 5, P1: 5}


def test_a_drain_ends_at_its_deadline_and_leaves_what_is_in_flight_for_redelivery() -> None:
    broker, clock = filled_broker(1, 6), VirtualClock()
    sink = Collect(hold=True)
    source = fake_source(broker, "t", clock=clock, drain_timeout=60.0, **CLOCKED)
    flow = run(source, sink)
    wait_until(lambda: len(sink.items) == 6, 10, "every record in flight")
    sink.items[0].ack()
    sink.items[1].ack()
    flow.stop()
    wait_until(lambda: source.state == "draining", 10, "draining")
    clock.advance(59.0)
    assert not flow.wait(0.05) and source.state == "draining"  # 59 s: still draining
    clock.advance(2.0)
    with pytest.raises(DrainTimeoutError, match="timed out with 4 records in flight"):
        flow.wait(10)
    assert dict(broker.committed["g"]) == {P0: 2}  # what was done; the rest is delivered again


def test_a_rewound_partition_is_held_for_the_backoffs_delay() -> None:
    broker, clock = filled_broker(1, 3), VirtualClock()
    failures = {"left": 1}

    def fail(env):  # type: ignore[no-untyped-def]
        if env.meta.offset == 1 and failures["left"]:
            failures["left"] -= 1
            return RuntimeError("transient")
        return None

    sink = Collect(fail=fail)
    source = fake_source(broker, "t", clock=clock, failure_policy="rewind",
                         backoff=Backoff(min_delay=10.0, max_delay=300.0, random_factor=0.0), **CLOCKED)
    flow = run(source, sink)
    wait_until(lambda: source.metrics.get("rewinds") == 1, 10, "the rewind")
    wait_until(lambda: broker.committed["g"].get(P0) == 1, 10, "what was done before the failure committed")
    turns(source, clock, 5.0)
    assert sink.offsets().count(1) == 1  # 5 s into a 10 s backoff: not fetched again
    clock.advance(6.0)
    wait_until(lambda: broker.committed["g"].get(P0) == 3, 10, "redelivered after the backoff, and committed")
    flow.stop_and_wait()
    assert sink.offsets() == [0, 1, 2, 1, 2]


def test_at_the_end_of_what_there_is_polls_wait_briefly_while_records_are_in_flight() -> None:
    """A poll cannot be interrupted: at the end of what there is, the ack that settles the window must not
    wait a whole ``poll_timeout`` for its commit; while polls come back full, they keep the full timeout."""
    broker = filled_broker(1, 5)  # polls of 2: 2, 2, then 1 (short: the end of what there is)
    polls: list[tuple[float, int, int]] = []  # a waiting poll: its timeout, records in flight, records returned
    source: KafkaSource | None = None

    def record_polls(consumer: Any) -> None:
        poll = consumer.poll

        def recorded(timeout_ms: int = 0, max_records: int | None = None) -> Any:
            in_flight = source.in_flight() if source else 0
            records = poll(timeout_ms=timeout_ms, max_records=max_records)
            if timeout_ms:
                polls.append((timeout_ms / 1000, in_flight, sum(map(len, records.values()))))
            return records

        consumer.poll = recorded

    sink = Collect(hold=True)
    source = KafkaSource("t", ConsumerSettings(group_id="g", max_poll_records=2),
                         SourceSettings(poll_timeout=0.2, keepalive_interval=5.0, prefetch=True, max_in_flight=100),
                         client_factory=fake_consumers(broker, prepare=record_polls))
    flow = run(source, sink)
    wait_until(lambda: len(sink.items) == 5 and any(t == SETTLING_POLL for t, _n, _got in polls), 10,
               "every record in flight and a poll at the end of them")
    short = next(i for i, (t, _n, _got) in enumerate(polls) if t == SETTLING_POLL)
    assert all(t == 0.2 for t, _n, _got in polls[:short])
    assert any(n and got == 2 for _t, n, got in polls[:short])  # records in flight, polls coming back full
    assert polls[short - 1][2] == 1 and polls[short][1]  # after the one that came back short (not empty)
    for env in sink.items:
        env.ack()
    wait_until(lambda: broker.committed["g"].get(P0) == 5, 10, "the settled window committed")
    wait_until(lambda: polls[-1][:2] == (0.2, 0), 10, "nothing in flight: polls wait poll_timeout again")
    assert all(t == SETTLING_POLL for t, n, _got in polls[short:] if n)
    flow.stop_and_wait()
