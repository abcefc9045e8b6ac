"""The query side on real Kafka and Cassandra: the carts' event stream projected into carts_by_owner
(idempotent rows) and item_totals (offsets with the read model), exact with repeats on the stream and after
the projection's process is SIGKILLed three times."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from rxcqrs.examples.shoppingcart.generator import generate, reference
from rxcqrs.examples.shoppingcart.pipeline import publish_commands, start_pipeline
from rxcqrs.examples.shoppingcart.read_models import cart_views, expected_views, stored_views
from rxcqrs.examples.shoppingcart.store import CartStore
from rxcqrs.flow import run
from rxcqrs.kafka import ConsumerSettings, KafkaSink, KafkaSource, ProducerSettings, create_topics
from rxcqrs.kafka.admin import committed_offsets, end_offsets, read_topic
from rxcqrs.messages import OutgoingRecord
from rxcqrs.operators import DeadLetters
from tests.helpers import freeze_while_taken_over, wait_until


def command_side(kafka_bootstrap: str, topic: str, group: str, session: Any, keyspace: str, commands: list[Any],
                 partitions: int) -> str:
    """Run the cart commands through the batched engine, publishing the stream; return the stream's topic."""
    events = f"{topic}.events"
    create_topics({events: partitions}, bootstrap_servers=kafka_bootstrap)
    store = CartStore(session, keyspace, events_topic=events)
    store.create()
    publish_commands(commands, topic, partitions, ProducerSettings(bootstrap_servers=kafka_bootstrap))
    source = KafkaSource(topic, ConsumerSettings(group_id=group, bootstrap_servers=kafka_bootstrap))
    dead = KafkaSink(producer=ProducerSettings(bootstrap_servers=kafka_bootstrap))
    flow = start_pipeline(source, store, dead_letters=DeadLetters(dead),
                          producer=ProducerSettings(bootstrap_servers=kafka_bootstrap))
    ends = end_offsets(topic, bootstrap_servers=kafka_bootstrap)
    wait_until(lambda: committed_offsets(group, topic, bootstrap_servers=kafka_bootstrap) == ends, 120,
               "the commands committed")
    flow.stop_and_wait()
    return events


def streamed(topic_factory: Any, kafka_bootstrap: str, group_id: str, session: Any, keyspace: str, carts: int,
             count: int, seed: int, partitions: int = 4) -> tuple[str, list[Any], str]:
    """Commands on a topic of their own, run through the command side: the topic, the commands, the stream."""
    topic = topic_factory(partitions)
    commands = generate(carts, count, seed=seed)
    return topic, commands, command_side(kafka_bootstrap, topic, group_id, session, keyspace, commands, partitions)


def repeat_on_the_stream(kafka_bootstrap: str, events: str, count: int) -> int:
    """Publish the stream's first ``count`` records again (what a crash of the command side before its state
    write does: the same events, ids and source offsets, later on the stream)."""
    records = read_topic(events, bootstrap_servers=kafka_bootstrap)[:count]
    sink = KafkaSink(events, ProducerSettings(bootstrap_servers=kafka_bootstrap))
    for record in records:
        sink.on_next(OutgoingRecord(record.value, record.key, events, partition=record.partition))
    sink.on_completed()
    return len(records)


def projector_env(kafka_bootstrap: str, services_settings: Any) -> dict[str, str]:
    return {**os.environ, "RXCQRS_KAFKA_BOOTSTRAP": kafka_bootstrap, "RXCQRS_CASSANDRA_HOSTS": services_settings.host,
            "RXCQRS_CASSANDRA_PORT": str(services_settings.cassandra_port)}


def project_command(events: str, keyspace: str, group: str, *more: str) -> list[str]:
    """``rxcqrs cart project`` of ``events`` into ``keyspace`` as ``group``."""
    return [sys.executable, "-m", "rxcqrs.cli", "cart", "project", "--events-topic", events, "--keyspace", keyspace,
            "--group", group, *more]


def assert_views_exact(session: Any, keyspace: str, events: str, commands: list[Any]) -> None:
    live = [(cid, cart) for cid, cart in reference(commands).items() if cart is not None]
    expected_owners, expected_totals = expected_views(live)
    owners, totals = stored_views(cart_views(session, keyspace, events), keyspace)
    assert owners == expected_owners
    assert totals == expected_totals


def test_both_read_models_are_exact_with_repeats_on_the_stream_and_poison_dead_lettered(
        topic_factory: Any, kafka_bootstrap: str, group_id: str, cassandra_session: Any, keyspace: str) -> None:
    topic, commands, events = streamed(topic_factory, kafka_bootstrap, group_id, cassandra_session, keyspace,
                                       40, 3000, 5)
    assert repeat_on_the_stream(kafka_bootstrap, events, 400) == 400
    producer = ProducerSettings(bootstrap_servers=kafka_bootstrap)
    garbage = KafkaSink(events, producer)  # a record on the stream that is not an event: dead-lettered
    garbage.on_next(OutgoingRecord(b"\x07not an event", b"k", events, partition=1))
    garbage.on_completed()
    create_topics([f"{events}.dlq"], bootstrap_servers=kafka_bootstrap)
    views = cart_views(cassandra_session, keyspace, events)
    views.create_schema()
    group = f"{group_id}.views"
    source = KafkaSource(events, ConsumerSettings(group_id=group, bootstrap_servers=kafka_bootstrap))
    sink = views.sink(dead_letters=DeadLetters(KafkaSink(producer=producer)))
    flow = run(source, sink)
    ends = end_offsets(events, bootstrap_servers=kafka_bootstrap)
    wait_until(lambda: committed_offsets(group, events, bootstrap_servers=kafka_bootstrap) == ends, 120,
               "the stream projected")
    flow.stop_and_wait()
    assert sink.skipped >= 400, "the repeats were applied"
    assert_views_exact(cassandra_session, keyspace, events, commands)
    (dead,) = read_topic(f"{events}.dlq", bootstrap_servers=kafka_bootstrap)
    assert dead.value == b"\x07not an event" and dict(dead.headers)["rxcqrs.error.cause"] == b"SerializationError"
    assert source.metrics.get("dead_lettered") == 1


class PartialBatches:
    """A session whose first ``failures`` totals writes land and then time out (unknown outcome), alternately:
    half the view rows of a batch of copies (whole Cassandra partitions of it, the others not), and a stream
    partition's whole state (its conditional batch: one partition, all or nothing). Everything else goes to
    ``session``."""

    def __init__(self, session: Any, failures: int) -> None:
        self._session = session
        self.left = failures
        self.landed: list[str] = []
        self._queries: dict[bytes, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def prepare(self, query: str) -> Any:
        prepared = self._session.prepare(query)
        self._queries[prepared.query_id] = query
        return prepared

    def execute_async(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        from cassandra import WriteTimeout
        from cassandra.query import BatchStatement, BatchType

        entries = getattr(statement, "_statements_and_parameters", None)
        if not self.left or not isinstance(statement, BatchStatement) or not entries:
            return self._session.execute_async(statement, *args, **kwargs)
        state = all("_state " in self._queries.get(e[1], "") for e in entries)  # the stream partition's state
        if state != (self.left % 2 == 1):  # half the rows first, then a state
            return self._session.execute_async(statement, *args, **kwargs)
        self.left -= 1
        if state:
            self._session.execute(statement)
            self.landed.append("the state, its answer lost")
        else:
            part = BatchStatement(BatchType.UNLOGGED)
            part._statements_and_parameters = entries[::2]
            self._session.execute(part)
            self.landed.append("half the rows")
        return _Failed(WriteTimeout("injected: a write applied, its answer lost", write_type=0))


class _Failed:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def result(self) -> Any:
        raise self.error


def test_totals_batches_applied_in_part_then_timed_out_end_exact(topic_factory: Any, kafka_bootstrap: str,
                                                                 group_id: str, cassandra_session: Any,
                                                                 keyspace: str) -> None:
    """Four writes of the totals report a timeout: twice the view rows land in part (whole Cassandra partitions of
    them), twice the stream partition's state lands and its answer is lost. The retries claim the partition again
    and read its state (all or nothing), so nothing counts twice, and the rows the lost part left behind are
    written again."""
    topic, commands, events = streamed(topic_factory, kafka_bootstrap, group_id, cassandra_session, keyspace,
                                       20, 800, 3, partitions=2)
    session = PartialBatches(cassandra_session, failures=4)
    views = cart_views(session, keyspace, events)
    views.create_schema()
    group = f"{group_id}.views"
    source = KafkaSource(events, ConsumerSettings(group_id=group, bootstrap_servers=kafka_bootstrap))
    flow = run(source, views.sink())
    ends = end_offsets(events, bootstrap_servers=kafka_bootstrap)
    wait_until(lambda: committed_offsets(group, events, bootstrap_servers=kafka_bootstrap) == ends, 120,
               "the stream projected")
    flow.stop_and_wait()
    assert session.landed == ["half the rows", "the state, its answer lost"] * 2
    assert_views_exact(cassandra_session, keyspace, events, commands)


def test_the_read_models_stay_exact_through_three_projection_kills(topic_factory: Any, kafka_bootstrap: str,
                                                                   group_id: str, cassandra_session: Any,
                                                                   keyspace: str, services_settings: Any) -> None:
    topic, commands, events = streamed(topic_factory, kafka_bootstrap, group_id, cassandra_session, keyspace,
                                       60, 6000, 9)
    repeat_on_the_stream(kafka_bootstrap, events, 500)
    group = f"{group_id}.views"
    env = projector_env(kafka_bootstrap, services_settings)
    command = project_command(events, keyspace, group, "--create-schema")
    ends = end_offsets(events, bootstrap_servers=kafka_bootstrap)
    total = sum(ends.values())

    def progress() -> int:
        return sum(v or 0 for v in committed_offsets(group, events, bootstrap_servers=kafka_bootstrap).values())

    kills = 0
    for threshold in (total // 10, total // 3, total * 2 // 3):
        projector = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda t=threshold, p=projector: progress() >= t or p.poll() is not None,  # type: ignore[misc]
                       180, f"the projection committing {threshold} events")
            assert projector.poll() is None, projector.stderr.read() if projector.stderr else ""
            if progress() < total:
                projector.send_signal(signal.SIGKILL)  # rows written past the committed offsets
                kills += 1
        finally:
            projector.kill()
            projector.wait(30)
    assert kills == 3
    finished = subprocess.run([*command, "--stop-when-idle", "2"], env=env, capture_output=True, text=True,
                              timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert committed_offsets(group, events, bootstrap_servers=kafka_bootstrap) == ends
    assert_views_exact(cassandra_session, keyspace, events, commands)


def test_a_rebuild_into_fresh_tables_equals_the_incremental_read_models(topic_factory: Any, kafka_bootstrap: str,
                                                                        group_id: str, cassandra_session: Any,
                                                                        keyspace: str, services_settings: Any) -> None:
    """``cart project`` with a new keyspace and group reads the stream from its beginning: the same rows; so
    does ``--replay`` (truncate) in the first keyspace and group."""
    import uuid

    topic, commands, events = streamed(topic_factory, kafka_bootstrap, group_id, cassandra_session, keyspace,
                                       30, 1500, 3, 3)
    env = projector_env(kafka_bootstrap, services_settings)
    fresh = f"rebuilt_{uuid.uuid4().hex[:10]}"
    try:
        for target, group in ((keyspace, f"{group_id}.views"), (fresh, f"{group_id}.rebuild")):
            done = subprocess.run(project_command(events, target, group, "--create-schema", "--stop-when-idle", "2",
                                                  "--progress-every", "0.5"),
                                  env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0 and "committed" in done.stdout, done.stdout + done.stderr
        incremental = stored_views(cart_views(cassandra_session, keyspace, events), keyspace)
        assert stored_views(cart_views(cassandra_session, fresh, events), fresh) == incremental
        assert_views_exact(cassandra_session, fresh, events, commands)
        # truncate and replay in the same group, whose Kafka offsets are at the end: the totals resume at their
        # stored offsets (none left: the beginning), not at the group's
        group = f"{group_id}.views"
        assert committed_offsets(group, events, bootstrap_servers=kafka_bootstrap) == \
            end_offsets(events, bootstrap_servers=kafka_bootstrap)
        done = subprocess.run(project_command(events, keyspace, group, "--replay", "--stop-when-idle", "2"),
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "from its beginning" in done.stdout, done.stdout + done.stderr
        assert stored_views(cart_views(cassandra_session, keyspace, events), keyspace) == incremental
    finally:
        cassandra_session.execute(f"DROP KEYSPACE IF EXISTS {fresh}", timeout=120)


def test_a_frozen_projection_thawed_after_its_partitions_moved_on_changes_nothing(
        topic_factory: Any, kafka_bootstrap: str, group_id: str, cassandra_session: Any, keyspace: str,
        services_settings: Any) -> None:
    """Two projection processes in one group while the command side streams events in; one is frozen
    (SIGSTOP) past its session timeout, the other takes its partitions over and progresses, then it thaws
    (SIGCONT) with its cached totals and its work in flight. Both read models exact, without repair."""
    import threading

    from rxcqrs.kafka.admin import group_size

    topic = topic_factory(4)
    commands = generate(80, 8000, seed=13)
    events = f"{topic}.events"
    create_topics({events: 4}, bootstrap_servers=kafka_bootstrap)
    store = CartStore(cassandra_session, keyspace, events_topic=events)
    store.create()
    cart_views(cassandra_session, keyspace, events).create_schema()
    producer = ProducerSettings(bootstrap_servers=kafka_bootstrap)
    publish_commands(commands[:1000], topic, 4, producer)
    source = KafkaSource(topic, ConsumerSettings(group_id=group_id, bootstrap_servers=kafka_bootstrap))
    dead = KafkaSink(producer=producer)
    flow = start_pipeline(source, store, dead_letters=DeadLetters(dead), producer=producer)
    env = projector_env(kafka_bootstrap, services_settings)
    group = f"{group_id}.views"
    projectors = [subprocess.Popen(project_command(events, keyspace, group), env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True) for _ in range(2)]

    def projected() -> dict[int, int | None]:
        return committed_offsets(group, events, bootstrap_servers=kafka_bootstrap)

    def alive() -> bool:
        return all(p.poll() is None for p in projectors)

    def every_partition_past(mark: dict[int, int | None]) -> bool:
        now, ends = projected(), end_offsets(events, bootstrap_servers=kafka_bootstrap)
        return all((now[p] or 0) > (mark[p] or 0) or (now[p] or 0) >= ends[p] for p in ends)

    stream = threading.Thread(target=lambda: [publish_commands(commands[i:i + 100], topic, 4, producer)
                                              for i in range(1000, len(commands), 100)])
    try:
        wait_until(lambda: group_size(group, bootstrap_servers=kafka_bootstrap) == 2 or not alive(), 120,
                   "both projection members in the group")
        stream.start()  # commands keep coming, so events keep coming and the members have work in flight
        wait_until(lambda: sum(v or 0 for v in projected().values()) >= 1500 or not alive(), 120,
                   "the stream being projected")
        freeze_while_taken_over(*projectors, projected, every_partition_past)
        stream.join(300)
        ends = end_offsets(topic, bootstrap_servers=kafka_bootstrap)
        wait_until(lambda: committed_offsets(group_id, topic, bootstrap_servers=kafka_bootstrap) == ends, 300,
                   "every command committed")
        stream_ends = end_offsets(events, bootstrap_servers=kafka_bootstrap)
        wait_until(lambda: projected() == stream_ends or not alive(), 300, "every event projected")
        assert alive(), [p.stderr.read() for p in projectors if p.poll() is not None and p.stderr]
    finally:
        flow.stop_and_wait()
        for p in projectors:
            p.kill()
            p.wait(30)
    assert_views_exact(cassandra_session, keyspace, events, commands)


def test_a_zombie_totals_write_after_the_new_owner_read_the_state_is_refused(cassandra_session: Any,
                                                                              keyspace: str) -> None:
    """A member builds its writes of a turn, then stalls; the partition's new owner claims it and projects part
    of the same records, reading the state; the old member's writes then arrive and are refused (not merely
    outranked: the new owner already read the state, and would count what the zombie wrote twice). The new
    owner's totals are the fold of the records."""
    import datetime
    import uuid
    from types import SimpleNamespace

    from rxcqrs.cassandra.event_stream import StreamEvent
    from rxcqrs.cassandra.projection import Projection, ProjectionSink, TotalsView
    from rxcqrs.exceptions import StageError
    from rxcqrs.messages import RecordMetadata, TopicPartition

    tp = TopicPartition("stream", 0)
    view = TotalsView("bucket_totals", {"bucket": "int"}, ["n"], lambda e: {(e.entity % 3,): {"n": e.after}})
    projection = Projection(cassandra_session, keyspace, "zombie", SimpleNamespace(), [view])  # type: ignore[arg-type]
    projection.create_schema()
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)

    def records(offsets: range) -> tuple[list[Any], list[Any]]:
        envs = [SimpleNamespace(meta=RecordMetadata(tp.topic, tp.partition, o, 0), ack=lambda: None,
                                nack=lambda _e: None) for o in offsets]
        events = [StreamEvent(uuid.uuid4(), o, "added", when, "commands", 0, o, 0, None, o + 1) for o in offsets]
        return envs, events

    old, new = (ProjectionSink(projection, group="g") for _ in range(2))
    try:
        old._project_once(tp, *records(range(0, 10)))
        part, stalled = old._build(tp, *records(range(10, 20)))  # built, not yet sent
        new._project_once(tp, *records(range(10, 14)))  # claims the partition (a newer epoch) and reads its state
        try:
            old._write([stalled], records(range(10, 11))[0][0])
            raise AssertionError("the zombie's state write was applied")
        except StageError as exc:
            assert "owned by a newer member" in str(exc)
        new._project_once(tp, *records(range(14, 20)))  # reads the buckets the zombie's batch changed
    finally:
        old.close()
        new.close()
    expected: dict[tuple[int], dict[str, int]] = {}
    for o in range(20):
        expected.setdefault((o % 3,), {"n": 0})["n"] += o + 1
    assert projection.all_totals(view) == expected
