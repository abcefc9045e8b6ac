"""The source/sink/committer contract, written once and run against every backend (see conftest.py):
demand, window, one record at a time, commit gating, stop and rewind policies, permanent errors, revoke and
assign, dead letters, stop-drain, missing topics, lag and idleness."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import Any

import pytest

from rxcqrs import run
from rxcqrs.backoff import Backoff
from rxcqrs.exceptions import FlowError, PermanentStageError, RetriesExhaustedError, TopicNotFoundError
from rxcqrs.messages import Batch, Envelope, OutgoingRecord, TopicPartition
from rxcqrs.operators import DeadLetters, decode, map_value
from tests.contract.conftest import Harness
from tests.helpers import Collect, tap_batches, wait_until

pytestmark = pytest.mark.contract


def test_every_record_once_in_partition_order_and_committed_to_the_end(kafka: Harness) -> None:
    topic = kafka.topic(3)
    kafka.fill(topic, 40, 3)
    sink = Collect()
    source = kafka.source(topic)
    flow = run(source, sink)
    wait_until(lambda: kafka.committed(topic) == {0: 40, 1: 40, 2: 40}, 60, "everything committed")
    flow.stop_and_wait()
    for p in range(3):
        assert sink.offsets(p) == list(range(40))
    assert source.metrics.get("acked") == 120 and source.committer.records_committed() == 120
    assert source.left_behind == 0


def test_manual_demand_emits_exactly_what_was_requested(kafka: Harness) -> None:
    topic = kafka.topic(1)
    kafka.fill(topic, 20, 1)
    sink = Collect()
    source = kafka.source(topic, demand="manual")
    flow = run(source, sink)
    source.request(3)
    wait_until(lambda: len(sink.items) == 3, 60, "3 records")
    turns = source.metrics.get("keepalive_polls")
    wait_until(lambda: source.metrics.get("keepalive_polls") >= turns + 3, 30, "idle loop turns")
    assert len(sink.items) == 3
    source.request(2)
    wait_until(lambda: len(sink.items) == 5, 30, "5 records")
    flow.stop_and_wait()
    assert sink.offsets() == [0, 1, 2, 3, 4]
    assert kafka.committed(topic) == {0: 5}


def test_the_window_bounds_in_flight_and_the_next_poll_waits_for_the_last_to_settle(kafka: Harness) -> None:
    topic = kafka.topic(2)
    kafka.fill(topic, 30, 2)
    sink = Collect(hold=True)
    source = kafka.source(topic, max_in_flight=5)
    flow = run(source, sink)
    wait_until(lambda: len(sink.items) == 5, 60, "a full window")
    turns = source.metrics.get("keepalive_polls")
    wait_until(lambda: source.metrics.get("keepalive_polls") >= turns + 3, 30, "keepalive polls")
    assert len(sink.items) == 5 and source.in_flight() == 5
    for env in sink.items[:4]:
        env.ack()
    turns = source.metrics.get("keepalive_polls")
    wait_until(lambda: source.metrics.get("keepalive_polls") >= turns + 3, 30, "more loop turns")
    assert len(sink.items) == 5  # one record of the window is still open: no new poll
    sink.hold = False
    sink.items[4].ack()
    wait_until(lambda: len(sink.items) >= 10, 30, "the next window")
    for env in list(sink.items):
        env.ack()
    wait_until(lambda: kafka.committed(topic) == {0: 30, 1: 30}, 60, "everything")
    flow.stop_and_wait()


def test_records_arrive_one_at_a_time_on_one_thread(kafka: Harness) -> None:
    topic = kafka.topic(2)
    kafka.fill(topic, 25, 2)
    seen: list[str] = []
    depth = {"now": 0, "max": 0}

    class Watching(Collect):
        def on_next(self, env: Any) -> None:
            depth["now"] += 1
            depth["max"] = max(depth["max"], depth["now"])
            seen.append(threading.current_thread().name)
            super().on_next(env)
            depth["now"] -= 1

    sink = Watching()
    flow = run(kafka.source(topic), sink)
    wait_until(lambda: len(sink.items) == 50, 60, "everything")
    flow.stop_and_wait()
    assert depth["max"] == 1 and len(set(seen)) == 1 and seen[0].startswith("rxcqrs-poll-")


def test_a_commit_never_passes_a_record_that_is_not_done(kafka: Harness) -> None:
    topic = kafka.topic(1)
    kafka.fill(topic, 5, 1)
    sink = Collect(hold=True)
    source = kafka.source(topic)
    flow = run(source, sink)
    wait_until(lambda: len(sink.items) == 5, 60)
    for env in sink.items[1:]:
        env.ack()
    turns = source.metrics.get("keepalive_polls")
    wait_until(lambda: source.metrics.get("keepalive_polls") >= turns + 5, 30)
    assert kafka.committed(topic) == {0: None}
    sink.items[0].ack()
    wait_until(lambda: kafka.committed(topic) == {0: 5}, 30, "the commit once the gap closed")
    flow.stop_and_wait()


def test_the_stop_policy_commits_the_watermark_and_fails_naming_the_record(kafka: Harness) -> None:
    topic = kafka.topic(1)
    kafka.fill(topic, 10, 1)
    boom = RuntimeError("service down")
    flow = run(kafka.source(topic), Collect(fail=lambda env: boom if env.meta.offset == 4 else None))
    with pytest.raises(FlowError) as info:
        flow.wait(60)
    assert info.value.__cause__ is boom and f"{topic}/0@4" in str(info.value)
    assert kafka.committed(topic) == {0: 4}
    again = Collect()  # a restart resumes at the failed record
    flow = run(kafka.source(topic), again)
    wait_until(lambda: kafka.committed(topic) == {0: 10}, 60)
    flow.stop_and_wait()
    assert again.offsets() == list(range(4, 10))


def test_the_rewind_policy_redelivers_from_the_failed_record(kafka: Harness) -> None:
    topic = kafka.topic(2)
    kafka.fill(topic, 10, 2)
    left = {"failures": 2}

    def fail(env: Any) -> BaseException | None:
        if env.meta.partition == 0 and env.meta.offset == 3 and left["failures"] > 0:
            left["failures"] -= 1
            return RuntimeError("transient")
        return None

    sink = Collect(fail=fail)
    source = kafka.source(topic, failure_policy="rewind", backoff=Backoff(0.01, 1.0, 0.0))
    flow = run(source, sink)
    wait_until(lambda: kafka.committed(topic) == {0: 10, 1: 10}, 60, "everything committed")
    flow.stop_and_wait()
    p0 = sink.offsets(0)
    assert p0.count(3) == 3 and sorted(set(p0)) == list(range(10))
    assert sink.offsets(1) == list(range(10)) and source.metrics.get("rewinds") == 2


class ReverseSettler(Collect):
    """Holds what arrives and settles it a moment later, highest offset first (like parallel workers where
    the later record finishes first): offset 2 always fails, offset 4 fails on every other visit. So the
    first failure the gate sees alternates between 4 and 2, while nothing is ever committed past 2."""

    def __init__(self) -> None:
        super().__init__(hold=True)
        self.visits: Counter[int] = Counter()
        self.pending: list[Any] = []

    def on_next(self, env: Any) -> None:
        super().on_next(env)
        with self._lock:
            self.pending.append(env)
            first = len(self.pending) == 1
        if first:
            threading.Timer(0.2, self.settle).start()

    def settle(self) -> None:
        with self._lock:
            batch, self.pending = self.pending, []
        for env in sorted(batch, key=lambda e: -e.meta.offset):
            offset = env.meta.offset
            self.visits[offset] += 1
            if offset == 2 or (offset == 4 and self.visits[4] % 2 == 1):
                env.nack(RuntimeError(f"failed at {offset}"))
            else:
                env.ack()


def test_rewinds_that_make_no_progress_end_even_when_the_failing_offset_moves(kafka: Harness) -> None:
    topic = kafka.topic(1)
    kafka.fill(topic, 6, 1)
    sink = ReverseSettler()
    source = kafka.source(topic, failure_policy="rewind", backoff=Backoff(0.01, 0.16, 0.0), max_in_flight=3)
    flow = run(source, sink)
    with pytest.raises(RetriesExhaustedError, match="without progress"):
        flow.wait(60)
    assert kafka.committed(topic) == {0: 2} and source.metrics.get("rewinds") == 4  # 0.01 .. 0.08, then 0.16: give up
    assert sink.visits[2] == 5


def test_a_permanent_error_stops_at_once_whatever_the_policy(kafka: Harness) -> None:
    topic = kafka.topic(1)
    kafka.fill(topic, 8, 1)
    sink = Collect(fail=lambda env: PermanentStageError("table dropped") if env.meta.offset == 5 else None)
    source = kafka.source(topic, failure_policy="rewind", backoff=Backoff(0.01, 1.0, 0.0))
    flow = run(source, sink)
    with pytest.raises(FlowError, match=f"{topic}/0@5 failed: table dropped"):
        flow.wait(60)
    assert source.metrics.get("rewinds") == 0 and sink.offsets().count(5) == 1
    assert kafka.committed(topic) == {0: 5}


def test_a_member_joining_takes_partitions_and_nothing_is_lost(kafka: Harness) -> None:
    """A holds its records; B joins; A's revoke waits briefly, commits nothing it has not finished, and B
    gets those partitions from the last commit. Then A finishes: every record was processed, all committed."""
    topic = kafka.topic(4)
    kafka.fill(topic, 50, 4)
    a, b = Collect(hold=True), Collect()
    first = kafka.source(topic, max_in_flight=20, revoke_settle_timeout=0.5)
    flow_a = run(first, a)
    wait_until(lambda: len(a.items) == 20, 60, "A has a full window in flight")
    second = kafka.source(topic)
    flow_b = run(second, b)
    wait_until(lambda: len(b.items) > 0, 60, "B got partitions and records")
    a.hold = False
    for env in list(a.items):
        env.ack()  # late acks for partitions A lost are ignored: B delivers those records again
    wait_until(lambda: kafka.committed(topic) == {p: 50 for p in range(4)}, 120, "all committed")
    flow_a.stop_and_wait()
    flow_b.stop_and_wait()
    seen = {(e.meta.partition, e.meta.offset) for e in a.items + b.items}
    assert seen == {(p, o) for p in range(4) for o in range(50)}
    assert first.metrics.get("revoked") >= 1 and second.metrics.get("assigned") >= 1


def test_start_positions_given_on_assignment_beat_the_committed_offsets(kafka: Harness) -> None:
    """Offsets kept outside Kafka: a group that committed everything starts partition 0 at 7, partition 1
    from the beginning and partition 2 at its end (committed, though nothing follows), as its start positions
    say; partition 3 (left out) at its committed offset; a failing provider leaves them at the committed
    offsets. The lag counts from the start positions."""
    topic = kafka.topic(4)
    kafka.fill(topic, 10, 4)
    first = kafka.source(topic)
    flow = run(first, Collect())
    wait_until(lambda: kafka.committed(topic) == {p: 10 for p in range(4)}, 60, "everything committed")
    flow.stop_and_wait()
    asked: list[list[int]] = []

    def positions(tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        asked.append(sorted(tp.partition for tp in tps))
        return {tp: {0: 7, 1: 0, 2: 12}[tp.partition] for tp in tps if tp.partition < 3}

    def broken(tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        raise RuntimeError("the offsets' store is down")

    kafka.fill(topic, 2, 4)
    sink = Collect()
    again = kafka.source(topic, lag_interval=0.1)
    again.start_at(positions)
    again.start_at(broken)
    flow = run(again, sink)
    wait_until(lambda: len(sink.items) == 5 + 12 + 2, 60, "the records from the start positions on")
    wait_until(lambda: kafka.committed(topic) == {p: 12 for p in range(4)}, 60, "committed to the end")
    wait_until(lambda: again.idle_seconds() > 0, 60, "nothing left, the lag 0")
    flow.stop_and_wait()
    assert sink.offsets(0) == [7, 8, 9, 10, 11] and sink.offsets(1) == list(range(12))
    assert sink.offsets(2) == [] and sink.offsets(3) == [10, 11]
    assert asked == [[0, 1, 2, 3]] and again.metrics.get("start_failures") == 1
    assert again.committer.records_committed() == 5 + 12 + 2


def test_poison_goes_to_the_dead_letter_topic_and_the_stream_goes_on(kafka: Harness) -> None:
    topic = kafka.topic(1)
    kafka.topic(1, suffix=".dlq")
    good = str(uuid.uuid4()).encode()
    kafka.produce(topic, [(0, b"1", good), (0, b"not a number", good), (0, b"2", b"not-a-uuid"), (0, b"4", good)])
    sink = Collect()
    source = kafka.source(topic)
    flow = run(source, decode(int, require_uuid_key=True, dead_letters=DeadLetters(kafka.sink())), sink)
    wait_until(lambda: kafka.committed(topic) == {0: 4}, 60, "all four committed")
    flow.stop_and_wait()
    assert sink.values() == [1, 4] and source.metrics.get("dead_lettered") == 2
    dead = kafka.records(topic + ".dlq")
    assert [(key, value) for _p, _o, key, value, _h in dead] == [(good, b"not a number"), (b"not-a-uuid", b"2")]
    headers = dict(dead[0][4])
    assert headers["rxcqrs.source.topic"] == topic.encode() and headers["rxcqrs.source.offset"] == b"1"


def test_stop_drains_in_flight_records_then_commits_and_completes(kafka: Harness) -> None:
    topic = kafka.topic(1)
    kafka.fill(topic, 6, 1)
    sink = Collect(hold=True)
    source = kafka.source(topic)
    flow = run(source, sink)
    wait_until(lambda: len(sink.items) == 6, 60)
    flow.stop()
    assert not flow.wait(0.3)  # still draining: six records in flight
    threading.Timer(0.2, lambda: [e.ack() for e in sink.items]).start()
    assert flow.wait(30)
    assert kafka.committed(topic) == {0: 6} and sink.completed.is_set() and not sink.errors


def test_a_drain_that_runs_out_of_time_fails_saying_how_many_records_are_left(kafka: Harness) -> None:
    topic = kafka.topic(1)
    kafka.fill(topic, 6, 1)
    sink = Collect(hold=True)
    source = kafka.source(topic)
    flow = run(source, sink)
    wait_until(lambda: len(sink.items) == 6, 60)
    sink.items[0].ack()
    flow.stop(timeout=0.5)
    with pytest.raises(FlowError, match="timed out with 5 records in flight"):
        flow.wait(30)
    assert kafka.committed(topic) == {0: 1} and source.left_behind == 5


def test_a_missing_topic_fails_at_once_naming_it(kafka: Harness) -> None:
    flow = run(kafka.source(f"missing.{uuid.uuid4().hex}", metadata_timeout=1.0), Collect())
    with pytest.raises(TopicNotFoundError, match="does not exist"):
        flow.wait(30)
    with pytest.raises(TopicNotFoundError):
        kafka.sink(f"missing.{uuid.uuid4().hex}").on_next(b"x")


def test_lag_counts_every_assigned_partition_and_idle_means_nothing_left(kafka: Harness) -> None:
    topic = kafka.topic(4)
    kafka.fill(topic, 30, 4)
    sink = Collect(hold=True)
    source = kafka.source(topic, max_in_flight=10, lag_interval=0.1)
    flow = run(source, sink)
    wait_until(lambda: len(sink.items) == 10 and sum(source.lag().values()) == 120, 60,
               "lag over all four partitions, fetched or not")
    assert source.idle_seconds() == 0 and source.backlog() == 120
    sink.hold = False
    for env in list(sink.items):
        env.ack()
    wait_until(lambda: source.idle_seconds() > 0.3, 60, "idle: nothing in flight, nothing left")
    assert kafka.committed(topic) == {p: 30 for p in range(4)} and source.backlog() == 0
    flow.stop_and_wait()


# -- batches (SourceSettings(batches=True)) ---------------------------------------------------------------
def test_batches_copy_every_record_to_a_kafka_sink_and_commit_to_the_end(kafka: Harness) -> None:
    topic, out = kafka.topic(3), kafka.topic(3, ".out")
    kafka.fill(topic, 50, 3)
    seen: list[Any] = []
    source = kafka.source(topic, batches=True, max_in_flight=40)
    sink = kafka.sink(out)
    flow = run(source, tap_batches(seen), map_value(lambda v: OutgoingRecord(v + b"!")), sink)
    wait_until(lambda: kafka.committed(topic) == {0: 50, 1: 50, 2: 50}, 60, "everything committed")
    flow.stop_and_wait()
    assert seen and all(isinstance(b, Batch) for b in seen), "the source emitted batches"
    assert max(len(b) for b in seen) > 1 and max(len(b) for b in seen) <= 40
    copied = Counter(value for _p, _o, _k, value, _h in kafka.records(out))
    assert copied == Counter(f"{p}-{i}!".encode() for p in range(3) for i in range(50))
    assert source.metrics.get("acked") == 150 and source.committer.records_committed() == 150
    assert sink.sent == 150 and source.left_behind == 0


def test_batches_reach_a_stage_that_does_not_take_them_as_single_records_in_order(kafka: Harness) -> None:
    topic = kafka.topic(2)
    kafka.fill(topic, 30, 2)
    sink = Collect()
    source = kafka.source(topic, batches=True)
    flow = run(source, map_value(lambda v: v.upper()), sink)  # Collect does not take batches
    wait_until(lambda: kafka.committed(topic) == {0: 30, 1: 30}, 60, "everything committed")
    flow.stop_and_wait()
    assert all(type(e) is Envelope for e in sink.items)
    for p in range(2):
        assert sink.offsets(p) == list(range(30))
        assert [e.value for e in sink.items if e.meta.partition == p] == [f"{p}-{i}".upper().encode()
                                                                          for i in range(30)]


def test_a_failing_record_of_a_batch_is_nacked_alone_and_the_commit_stays_before_it(kafka: Harness) -> None:
    topic = kafka.topic(1)
    kafka.fill(topic, 20, 1)
    sink = Collect()

    def upper(value: bytes) -> bytes:
        if value == b"0-7":
            raise ValueError("not this one")
        return value.upper()

    source = kafka.source(topic, batches=True)
    flow = run(source, map_value(upper), sink)
    with pytest.raises(FlowError) as info:
        flow.wait(60)
    assert f"{topic}/0@7" in str(info.value) and "not this one" in str(info.value)
    assert 7 not in sink.offsets() and source.metrics.get("map_value_errors") == 1
    assert (kafka.committed(topic)[0] or 0) <= 7  # never past the failed record
