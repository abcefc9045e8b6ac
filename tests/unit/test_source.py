"""KafkaSource on the in-memory fake: demand, window, poll pacing, commits, failure policies, rebalances."""

from __future__ import annotations

import threading

import pytest

from rxcqrs import run
from rxcqrs.backoff import Backoff
from rxcqrs.exceptions import FlowError, RetriesExhaustedError
from rxcqrs.messages import TopicPartition
from rxcqrs.operators import broadcast, map_value
from rxcqrs.testing import FakeBroker, FakeConsumer, fake_consumers
from tests.helpers import Collect, fake_source, wait_until


def fill(broker: FakeBroker, topic: str, partitions: int, per_partition: int) -> None:
    broker.create_topic(topic, partitions)
    for p in range(partitions):
        for i in range(per_partition):
            broker.append(topic, f"{p}-{i}".encode(), key=str(i).encode(), partition=p)


def committed(broker: FakeBroker, group: str = "g") -> dict[TopicPartition, int]:
    return dict(broker.committed[group])


def test_every_record_once_in_partition_order_and_committed_to_the_end() -> None:
    broker = FakeBroker()
    fill(broker, "t", 3, 40)
    sink = Collect()
    source = fake_source(broker, "t", max_poll_records=7)
    flow = run(source, sink)
    wait_until(lambda: committed(broker) == {TopicPartition("t", p): 40 for p in range(3)}, what="commits")
    flow.stop_and_wait()
    for p in range(3):
        assert sink.offsets(p) == list(range(40))
    assert len(sink.items) == 120
    assert source.metrics.get("acked") == 120


def test_manual_demand_emits_exactly_what_was_requested() -> None:
    broker = FakeBroker()
    fill(broker, "t", 1, 20)
    sink = Collect()
    source = fake_source(broker, "t", demand="manual")
    flow = run(source, sink)
    source.request(3)
    wait_until(lambda: len(sink.items) == 3, what="3 records")
    # give the poll thread plenty of loop turns: it must not emit beyond demand
    polls = source.metrics.get("keepalive_polls")
    wait_until(lambda: source.metrics.get("keepalive_polls") >= polls + 3, what="idle loop turns")
    assert len(sink.items) == 3
    source.request(2)
    wait_until(lambda: len(sink.items) == 5, what="5 records")
    flow.stop_and_wait()
    assert sink.offsets() == [0, 1, 2, 3, 4]
    assert committed(broker) == {TopicPartition("t", 0): 5}


def test_request_from_inside_on_next_does_not_recurse() -> None:
    broker = FakeBroker()
    fill(broker, "t", 1, 50)
    source = fake_source(broker, "t", demand="manual")
    depth = {"now": 0, "max": 0}

    class Requesting(Collect):
        """Acks, then asks for one more record from inside on_next (as a pull-based sink would)."""

        def on_next(self, env):  # type: ignore[no-untyped-def]
            depth["now"] += 1
            depth["max"] = max(depth["max"], depth["now"])
            super().on_next(env)
            source.request(1)
            depth["now"] -= 1

    sink = Requesting()
    flow = run(source, map_value(lambda v: v), sink)
    source.request(1)
    wait_until(lambda: len(sink.items) == 50, what="all 50 via one request each")
    flow.stop_and_wait()
    assert depth["max"] == 1  # request() only adds credit: the poll thread emits the next record later


def test_window_bounds_in_flight_and_no_poll_until_the_batch_is_settled() -> None:
    broker = FakeBroker()
    fill(broker, "t", 2, 30)
    sink = Collect(hold=True)
    source = fake_source(broker, "t", max_in_flight=5)
    flow = run(source, sink)
    wait_until(lambda: len(sink.items) == 5, what="a full window")
    polls = source.metrics.get("polls")
    keepalives = source.metrics.get("keepalive_polls")
    wait_until(lambda: source.metrics.get("keepalive_polls") >= keepalives + 3, what="keepalive polls")
    assert len(sink.items) == 5 and source.metrics.get("polls") == polls  # waiting: paused polls only
    assert source.in_flight() == 5
    for env in list(sink.items):
        env.ack()
    wait_until(lambda: len(sink.items) == 10, what="the next window")
    sink.hold = False
    for env in list(sink.items[5:]):
        env.ack()
    wait_until(lambda: len(sink.items) == 60, what="everything")
    flow.stop_and_wait()


def test_records_of_one_poll_are_interleaved_across_partitions() -> None:
    """So a sink that keeps per-partition order can work on every partition at once."""
    broker = FakeBroker()
    fill(broker, "t", 3, 4)
    sink = Collect()
    flow = run(fake_source(broker, "t"), sink)
    wait_until(lambda: len(sink.items) == 12)
    flow.stop_and_wait()
    assert [e.meta.partition for e in sink.items[:6]] == [0, 1, 2, 0, 1, 2]


def test_next_poll_waits_for_every_record_of_the_previous_poll() -> None:
    broker = FakeBroker()
    fill(broker, "t", 1, 10)
    sink = Collect(hold=True)
    source = fake_source(broker, "t", max_poll_records=4)
    flow = run(source, sink)
    wait_until(lambda: len(sink.items) == 4, what="first poll's 4 records")
    for env in sink.items[:3]:
        env.ack()
    keepalives = source.metrics.get("keepalive_polls")
    wait_until(lambda: source.metrics.get("keepalive_polls") >= keepalives + 3, what="loop turns")
    assert len(sink.items) == 4  # one record of the poll is still open: no new poll
    assert committed(broker) == {TopicPartition("t", 0): 3}
    sink.items[3].ack()
    wait_until(lambda: len(sink.items) == 8, what="second poll")
    sink.hold = False
    for env in sink.items[4:]:
        env.ack()
    wait_until(lambda: len(sink.items) == 10)
    flow.stop_and_wait()


def test_prefetch_polls_while_records_are_in_flight() -> None:
    broker = FakeBroker()
    fill(broker, "t", 1, 10)
    sink = Collect(hold=True)
    source = fake_source(broker, "t", max_poll_records=4, prefetch=True, max_in_flight=8)
    flow = run(source, sink)
    wait_until(lambda: len(sink.items) == 8, what="two polls' worth in flight")
    for env in sink.items:
        env.ack()
    sink.hold = False
    wait_until(lambda: committed(broker) == {TopicPartition("t", 0): 10})
    flow.stop_and_wait()


def test_commit_never_passes_an_unacked_record() -> None:
    broker = FakeBroker()
    fill(broker, "t", 1, 5)
    sink = Collect(hold=True)
    source = fake_source(broker, "t")
    flow = run(source, sink)
    wait_until(lambda: len(sink.items) == 5)
    for env in sink.items[1:]:
        env.ack()
    keepalives = source.metrics.get("keepalive_polls")
    wait_until(lambda: source.metrics.get("keepalive_polls") >= keepalives + 3)
    assert committed(broker) == {}
    sink.items[0].ack()
    wait_until(lambda: committed(broker) == {TopicPartition("t", 0): 5}, what="commit after the gap closed")
    flow.stop_and_wait()


def test_an_empty_poll_never_stalls_the_stream() -> None:
    broker = FakeBroker()
    broker.create_topic("t", 1)
    sink = Collect()
    source = fake_source(broker, "t")
    flow = run(source, sink)
    wait_until(lambda: source.metrics.get("empty_polls") >= 3, what="empty polls")
    broker.append("t", b"late", partition=0)
    wait_until(lambda: len(sink.items) == 1, what="the late record")
    flow.stop_and_wait()


def test_stop_drains_in_flight_work_then_commits_and_closes() -> None:
    broker = FakeBroker()
    fill(broker, "t", 1, 6)
    consumers: list[FakeConsumer] = []
    sink = Collect(hold=True)
    from rxcqrs.kafka import ConsumerSettings, KafkaSource, SourceSettings

    source = KafkaSource("t", ConsumerSettings(group_id="g"), SourceSettings(poll_timeout=0.01,
                         keepalive_interval=0.05), client_factory=fake_consumers(broker, consumers))
    flow = run(source, sink)
    wait_until(lambda: len(sink.items) == 6)
    flow.stop()
    assert not flow.wait(0.2)  # still draining: six records in flight
    timer = threading.Timer(0.1, lambda: [e.ack() for e in sink.items])
    timer.start()
    assert flow.wait(10)
    assert committed(broker) == {TopicPartition("t", 0): 6}
    assert consumers[0].closed and sink.completed.is_set() and not sink.errors


def test_stop_policy_commits_the_watermark_and_fails_with_the_error() -> None:
    broker = FakeBroker()
    fill(broker, "t", 1, 10)
    boom = RuntimeError("service down")
    sink = Collect(fail=lambda env: boom if env.meta.offset == 4 else None)
    source = fake_source(broker, "t")
    flow = run(source, sink)
    with pytest.raises(FlowError) as info:
        flow.wait(10)
    assert info.value.__cause__ is boom
    assert "t/0@4" in str(info.value)
    assert committed(broker) == {TopicPartition("t", 0): 4}
    # a restart resumes from the last commit
    sink2 = Collect()
    flow2 = run(fake_source(broker, "t"), sink2)
    wait_until(lambda: committed(broker) == {TopicPartition("t", 0): 10})
    flow2.stop_and_wait()
    assert sink2.offsets() == list(range(4, 10))


def test_rewind_policy_redelivers_from_the_failed_offset_with_backoff() -> None:
    broker = FakeBroker()
    fill(broker, "t", 2, 10)
    failures = {"left": 2}

    def fail(env):  # type: ignore[no-untyped-def]
        if env.meta.partition == 0 and env.meta.offset == 3 and failures["left"] > 0:
            failures["left"] -= 1
            return RuntimeError("transient")
        return None

    sink = Collect(fail=fail)
    source = fake_source(broker, "t", failure_policy="rewind", backoff=Backoff(0.01, 1.0, 0.0))
    flow = run(source, sink)
    wait_until(lambda: committed(broker) == {TopicPartition("t", 0): 10, TopicPartition("t", 1): 10})
    flow.stop_and_wait()
    p0 = sink.offsets(0)
    assert p0.count(3) == 3 and sorted(set(p0)) == list(range(10))
    assert sink.offsets(1) == list(range(10))  # the other partition was never rewound
    assert source.metrics.get("rewinds") == 2


def test_rewind_gives_up_when_the_backoff_reaches_its_maximum() -> None:
    broker = FakeBroker()
    fill(broker, "t", 1, 3)
    sink = Collect(fail=lambda env: RuntimeError("permanent") if env.meta.offset == 1 else None)
    source = fake_source(broker, "t", failure_policy="rewind", backoff=Backoff(0.01, 0.04, 0.0))
    flow = run(source, sink)
    with pytest.raises(RetriesExhaustedError):
        flow.wait(10)
    assert committed(broker) == {TopicPartition("t", 0): 1}
    assert sink.offsets().count(1) == 3  # first try + 2 rewinds (delays 0.01, 0.02; 0.04 is the max)


def test_broadcast_commits_only_when_every_branch_acked() -> None:
    broker = FakeBroker()
    fill(broker, "t", 1, 3)
    fast, slow = Collect(), Collect(hold=True)
    flow = run(fake_source(broker, "t"), broadcast(fast, slow))
    wait_until(lambda: len(slow.items) == 3 and len(fast.items) == 3)
    keep = broker.commit_log[:]
    assert committed(broker) == {} and keep == []
    slow.items[0].ack()
    wait_until(lambda: committed(broker) == {TopicPartition("t", 0): 1})
    for env in slow.items[1:]:
        env.ack()
    wait_until(lambda: committed(broker) == {TopicPartition("t", 0): 3})
    flow.stop_and_wait()
    assert fast.completed.is_set() and slow.completed.is_set()


def test_an_exception_in_one_branch_is_a_nack_not_an_error_of_the_other_branch() -> None:
    broker = FakeBroker()
    fill(broker, "t", 1, 6)
    raised = {"n": 0}

    class Exploding(Collect):
        def on_next(self, env):  # type: ignore[no-untyped-def]
            if env.meta.offset == 2 and raised["n"] == 0:
                raised["n"] += 1
                raise ValueError("bug in the command observer")
            super().on_next(env)

    commands, events = Exploding(), Collect()
    source = fake_source(broker, "t", failure_policy="rewind", backoff=Backoff(0.01, 1, 0))
    flow = run(source, broadcast(commands, events))
    wait_until(lambda: committed(broker) == {TopicPartition("t", 0): 6})
    flow.stop_and_wait()
    assert events.errors == [] and commands.errors == []
    assert sorted(set(events.offsets())) == list(range(6))
    assert source.metrics.get("branch_errors") == 1


def test_a_second_subscription_is_refused() -> None:
    broker = FakeBroker()
    broker.create_topic("t")
    source = fake_source(broker, "t")
    first = run(source, Collect())
    second = Collect()
    source.observable.subscribe(second)
    assert second.errors and "subscribed once" in str(second.errors[0])
    first.stop_and_wait()


def test_rebalance_with_a_joining_member_loses_nothing() -> None:
    broker = FakeBroker()
    fill(broker, "t", 4, 50)
    a, b = Collect(hold=True), Collect()
    source_a = fake_source(broker, "t", max_poll_records=5, revoke_settle_timeout=5.0)
    flow_a = run(source_a, a)
    wait_until(lambda: len(a.items) == 5, what="A's first poll in flight")
    source_b = fake_source(broker, "t", max_poll_records=5)
    flow_b = run(source_b, b)
    # A's revoke waits for its in-flight records before it commits: release them a little later
    threading.Timer(0.2, lambda: ([e.ack() for e in list(a.items)], setattr(a, "hold", False))).start()
    wait_until(lambda: committed(broker) == {TopicPartition("t", p): 50 for p in range(4)}, what="all committed")
    flow_a.stop_and_wait()
    flow_b.stop_and_wait()
    seen = {(e.meta.partition, e.meta.offset) for e in a.items + b.items}
    assert seen == {(p, o) for p in range(4) for o in range(50)}
    assert b.items and source_a.metrics.get("revoked") >= 2
    # nothing A had in flight at the revoke was processed twice: it settled before the commit
    assert len(a.items) + len(b.items) == 200


def test_a_spy_counts_what_passes_and_how_it_ended() -> None:
    from rxcqrs.operators import spy

    broker = FakeBroker()
    fill(broker, "t", 1, 6)
    watch = spy("after decode")
    sink = Collect(fail=lambda env: RuntimeError("no") if env.meta.offset == 5 else None)
    flow = run(fake_source(broker, "t"), watch, sink)
    with pytest.raises(FlowError):
        flow.wait(10)
    snapshot = watch.metrics.snapshot()
    assert (snapshot["pushed"], snapshot["acked"], snapshot["nacked"], snapshot["errors"]) == (6, 5, 1, 1)


def test_records_read_again_from_a_lower_start_position_are_counted_once() -> None:
    """Offsets kept outside Kafka may start a partition again below what this source committed (a member
    that joined and left): the re-read records are committed again, but counted once."""
    broker = FakeBroker()
    fill(broker, "t", 2, 10)
    sink = Collect()
    source = fake_source(broker, "t")
    source.start_at(lambda tps: {tp: 0 for tp in tps})  # always from the beginning
    flow = run(source, sink)
    wait_until(lambda: committed(broker) == {TopicPartition("t", p): 10 for p in range(2)}, what="all committed")
    wait_until(lambda: source.committer.records_committed() == 20, what="20 counted")
    other = fake_source(broker, "t")
    other_flow = run(other, Collect())
    wait_until(lambda: source.metrics.get("revoked") >= 1, what="a partition moved to the other member")
    other_flow.stop_and_wait()
    wait_until(lambda: source.metrics.get("assigned") >= 3 and len(sink.items) >= 30, what="read again from 0")
    for p in range(2):
        broker.append("t", b"new", partition=p)
    wait_until(lambda: committed(broker) == {TopicPartition("t", p): 11 for p in range(2)}, what="the new ones")
    flow.stop_and_wait()
    assert source.committer.records_committed() == 22


def test_wait_committed_returns_at_the_commit_that_reaches_the_count_and_false_at_its_deadline() -> None:
    broker = FakeBroker()
    broker.create_topic("t", 1)
    source = fake_source(broker, "t")
    flow = run(source, Collect())
    assert source.wait_committed(1, timeout=0.05) is False  # nothing to commit yet: the deadline
    woken = threading.Event()
    waiter = threading.Thread(target=lambda: source.wait_committed(5, timeout=30) and woken.set())
    waiter.start()
    for i in range(5):
        broker.append("t", f"{i}".encode(), partition=0)
    waiter.join(30)
    assert woken.is_set() and source.records_committed() == 5
    assert source.wait_committed(5, timeout=0) is True
    flow.stop_and_wait()
