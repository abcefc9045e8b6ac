"""The fault suite: the shopping-cart consumer against real faults in a server pair of its own.

Every scenario runs in both modes of the example (idempotent commands, the default; and read-modify-write
commands repaired by duplicates + compensation) and then checks, independently of the consumer: every cart
against a fold of the topic itself, committed offsets equal to the end offsets, and the dead letters. The
Kafka faults (broker killed, group churn) run once more with the second client, kafka-python.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from rxcqrs import OutgoingRecord, run
from rxcqrs.examples.shoppingcart.generator import generate
from rxcqrs.examples.shoppingcart.pipeline import publish_commands
from rxcqrs.kafka import (
    ConsumerSettings,
    KafkaSink,
    KafkaSource,
    ProducerSettings,
    SourceSettings,
    committed_offsets,
    create_topics,
    end_offsets,
)
from rxcqrs.kafka.admin import read_topic
from rxcqrs.operators import map_value
from tests.faults.conftest import CARTS, COMMANDS, PARTITIONS, Figures, Servers, names
from tests.faults.scenario import Scenario, pause, projection_through, zombie
from tests.helpers import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

MODES = [pytest.param(True, id="idempotent"), pytest.param(False, id="rebuild")]
#: the Kafka faults once more with the second client (kafka-python), idempotent
CLIENTS = [pytest.param(True, None, id="idempotent"), pytest.param(False, None, id="rebuild"),
           pytest.param(True, "kafka-python", id="idempotent-kafka-python")]


@pytest.fixture
def thawed(fault_servers: Servers) -> Iterator[Servers]:
    """Whatever a scenario did to the servers, they answer again afterwards."""
    yield fault_servers
    for name in ("cassandra", "kafka"):
        try:
            fault_servers.signal(name, signal.SIGCONT)
        except Exception:
            fault_servers.start(name)


def test_cassandra_keeps_every_acknowledged_row_through_a_sigkill(thawed: Servers) -> None:
    session = thawed.session()
    keyspace = f"durable_{uuid.uuid4().hex[:8]}"
    try:
        session.execute(f"CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', "
                        "'replication_factor': 1}")
        session.execute(f"CREATE TABLE {keyspace}.kv (k int PRIMARY KEY, v int)")
        insert = session.prepare(f"INSERT INTO {keyspace}.kv (k, v) VALUES (?, ?)")
        for k in range(1000):
            session.execute(insert, (k, k))
    finally:
        session.cluster.shutdown()
    thawed.kill("cassandra")
    thawed.start("cassandra")
    session = thawed.session()
    try:
        rows = list(session.execute(f"SELECT k, v FROM {keyspace}.kv"))
        assert sorted((r.k, r.v) for r in rows) == [(k, k) for k in range(1000)]
    finally:
        session.cluster.shutdown()


@pytest.mark.parametrize("idempotent", MODES)
def test_the_consumer_killed_three_times_and_restarted(thawed: Servers, idempotent: bool) -> None:
    run = Scenario(thawed, "kill3", idempotent)
    for step in range(3):
        consumer = run.consumer()
        run.wait_committed(0.2 * (step + 1), consumer)
        consumer.kill()
    run.finish(run.consumer("--stop-when-idle", "3"))
    run.verify(kills=3)


@pytest.mark.parametrize("idempotent", MODES)
def test_cassandra_frozen_for_20_seconds(thawed: Servers, idempotent: bool) -> None:
    run = Scenario(thawed, "cstop", idempotent)
    consumer = run.consumer("--stop-when-idle", "3")
    run.wait_committed(0.25, consumer)
    thawed.signal("cassandra", signal.SIGSTOP)
    pause(20)
    thawed.signal("cassandra", signal.SIGCONT)
    run.finish(consumer)
    run.verify(frozen_s=20)


@pytest.mark.parametrize("idempotent", MODES)
def test_cassandra_killed_and_restarted(thawed: Servers, idempotent: bool) -> None:
    run = Scenario(thawed, "ckill", idempotent)
    consumer = run.consumer("--stop-when-idle", "3")
    run.wait_committed(0.25, consumer)
    thawed.kill("cassandra")
    down = time.monotonic()
    thawed.start("cassandra")
    run.finish(consumer)
    run.verify(cassandra_down_s=round(time.monotonic() - down, 1))


@pytest.mark.parametrize(("idempotent", "client"), CLIENTS)
def test_the_kafka_broker_killed_and_restarted(thawed: Servers, idempotent: bool, client: str | None) -> None:
    run = Scenario(thawed, "kkill", idempotent, client=client)
    consumer = run.consumer("--stop-when-idle", "3")
    run.wait_committed(0.25, consumer)
    thawed.kill("kafka")
    thawed.start("kafka")
    run.finish(consumer)
    run.verify()


@pytest.mark.parametrize("idempotent", MODES)
def test_sigterm_while_cassandra_is_frozen_exits_in_time_and_a_restart_finishes(thawed: Servers,
                                                                                idempotent: bool) -> None:
    run = Scenario(thawed, "termfrozen", idempotent, published=0.3)
    consumer = run.consumer()
    run.wait_committed(0.25, consumer)
    stream = run.trickle(per_second=300)  # the rest keeps coming: a fast consumer would otherwise be done
    thawed.signal("cassandra", signal.SIGSTOP)
    try:
        pause(2)  # records are in flight against the frozen node
        asked = time.monotonic()
        consumer.proc.send_signal(signal.SIGTERM)
        code = consumer.wait(60)
        took = time.monotonic() - asked
    finally:
        thawed.signal("cassandra", signal.SIGCONT)
    assert code != 0 and took < 10 + 5, f"exit {code} after {took:.1f}s:\n{consumer.output[-3000:]}"  # drain + 5 s
    assert "records not done" in consumer.output or "records in flight" in consumer.output, consumer.output[-3000:]
    stream.join(300)
    run.finish(run.consumer("--stop-when-idle", "3"))
    run.verify(sigterm_exit_s=round(took, 1), sigterm_exit_code=code)


@pytest.mark.parametrize("idempotent", MODES)
def test_one_percent_poison_goes_to_the_dead_letter_topic(thawed: Servers, idempotent: bool) -> None:
    run = Scenario(thawed, "poison", idempotent, poison_every=100)
    run.finish(run.consumer("--stop-when-idle", "3"))
    run.verify(poison=len(run.poison))


@pytest.mark.parametrize(("idempotent", "client"), CLIENTS)
def test_a_group_of_two_a_third_joins_and_one_leaves(thawed: Servers, idempotent: bool, client: str | None) -> None:
    run = Scenario(thawed, "group", idempotent, client=client)
    first, second = run.consumer("--stop-when-idle", "5"), run.consumer("--stop-when-idle", "5")
    run.wait_committed(0.2, first)
    third = run.consumer("--stop-when-idle", "5")
    run.wait_committed(0.5, third)
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait(60) in (0, 3), first.output[-3000:]  # 3: it left records for the others
    run.finish(second)
    run.finish(third)
    run.verify(members=3)


@pytest.mark.parametrize("protocol", ["fenced", "conditional"])
@pytest.mark.parametrize("mode", ["batched", "parallel", "serial"])
def test_a_zombie_member_thawed_after_its_partitions_moved_on_changes_nothing(thawed: Servers, mode: str,
                                                                               protocol: str) -> None:
    zombie(thawed, Scenario(thawed, "zombie", True, published=0.2, protocol=protocol, mode=mode))


@pytest.mark.parametrize("fault", ["cassandra", "kafka"])
def test_both_read_models_stay_exact_through_a_server_kill_under_the_projection(thawed: Servers, fault: str) -> None:
    projection_through(thawed, Scenario(thawed, f"views_{fault}", True), fault)


@pytest.mark.parametrize("idempotent", MODES)
def test_a_dropped_table_stops_the_flow_at_once_and_commits_nothing_past_the_failed_record(
        thawed: Servers, idempotent: bool) -> None:
    import re

    run = Scenario(thawed, "dropped", idempotent)
    consumer = run.consumer("--on-failure", "rewind")
    run.wait_committed(0.25, consumer)
    session = thawed.session()
    try:
        session.execute(f"DROP TABLE {run.keyspace}.shopping_cart", timeout=60)
    finally:
        session.cluster.shutdown()
    dropped = time.monotonic()
    publish_commands(generate(CARTS, 200, seed=99), run.topic, PARTITIONS,  # records keep arriving after the drop
                     ProducerSettings(bootstrap_servers=thawed.bootstrap))
    code = consumer.wait(120)
    took = time.monotonic() - dropped
    assert code == 1, consumer.output[-3000:]
    failed = re.search(r"record (\S+)/(\d+)@(\d+) failed: .*(unconfigured table|does not exist)", consumer.output)
    assert failed, consumer.output[-3000:]
    assert "rewinding" not in consumer.output.lower()
    partition, offset = int(failed.group(2)), int(failed.group(3))
    committed = committed_offsets(run.group, run.topic, bootstrap_servers=thawed.bootstrap)
    assert (committed[partition] or 0) <= offset
    refused = run.consumer("--stop-when-idle", "3")
    assert refused.wait(120) == 1 and "lost data" in refused.output, refused.output[-3000:]
    Figures(run.name, "idempotent" if idempotent else "rebuild", commands=len(run.commands),
            seconds=round(time.monotonic() - run.started, 1),
            extra={"stopped_after_s": round(took, 1), "failed_record": failed.group(0)[:200]}).save()


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_a_kafka_to_kafka_copy_in_batches_keeps_every_record_through_a_broker_kill(thawed: Servers,
                                                                                  client: str) -> None:
    """At least once with batches (``SourceSettings(batches=True)``): the broker is killed a quarter of the
    way through a copy and started again; every record of the source topic reaches the target (duplicates are
    allowed and counted) and the group's commits reach the end offsets."""
    topic, group, _ = names("kk-batches")
    target, bootstrap, total = topic + ".out", thawed.bootstrap, COMMANDS * 5
    create_topics({topic: PARTITIONS, target: PARTITIONS}, bootstrap_servers=bootstrap)
    produce = KafkaSink(topic, ProducerSettings(bootstrap_servers=bootstrap))
    for i in range(total):
        produce.on_next(OutgoingRecord(b"%d" % i, partition=i % PARTITIONS))
    produce.on_completed()
    produce.raise_if_failed()
    started = time.monotonic()

    def slow_copy(value: bytes) -> OutgoingRecord:
        time.sleep(0.0005)  # the transform's own work (not a wait for anything), so the kill lands mid-copy
        return OutgoingRecord(value)

    source = KafkaSource(topic, ConsumerSettings(group_id=group, bootstrap_servers=bootstrap, backend=client),  # type: ignore[arg-type]
                         SourceSettings(batches=True, max_in_flight=500, failure_policy="rewind"))
    flow = run(source, map_value(slow_copy),
               KafkaSink(target, ProducerSettings(bootstrap_servers=bootstrap, backend=client)))  # type: ignore[arg-type]
    wait_until(lambda: source.committer.records_committed() >= total // 4 or not flow.running, 120, "a quarter copied")
    assert flow.running, f"the flow ended early: {flow.error!r}"
    thawed.kill("kafka")
    thawed.start("kafka")
    wait_until(lambda: source.committer.records_committed() >= total or not flow.running, 300, "everything committed")
    flow.stop_and_wait(60)
    ends = end_offsets(topic, bootstrap_servers=bootstrap)
    assert committed_offsets(group, topic, bootstrap_servers=bootstrap) == ends
    copied = Counter(record.value for record in read_topic(target, bootstrap_servers=bootstrap))
    missing = total - sum(1 for i in range(total) if b"%d" % i in copied)
    Figures(f"kk-batches-{client}", "batches", commands=total, duplicates=sum(copied.values()) - len(copied),
            seconds=round(time.monotonic() - started, 1), extra={"missing": missing}).save()
    assert missing == 0 and set(copied) <= {b"%d" % i for i in range(total)}


_OFFSET_READS = """
import sys, time
from pathlib import Path
from rxcqrs.kafka.confluent import ConfluentConsumer
from rxcqrs.kafka.settings import ConsumerSettings
from rxcqrs.messages import TopicPartition

bootstrap, topic, group, stop = sys.argv[1:5]
client = ConfluentConsumer.create(ConsumerSettings(group_id=group, bootstrap_servers=bootstrap))
tps = [TopicPartition(topic, p) for p in range(8)]
calls = errors = 0
while not Path(stop).exists():
    for call in (lambda: client.committed(tps, 1.0), lambda: client.group_size(1.0),
                 lambda: client.end_offsets(tps, 1.0), lambda: client.topic_partitions(topic, 1.0)):
        try:
            call()
        except Exception:
            errors += 1
        calls += 1
client.close(5.0)
print(f"survived {calls} calls ({errors} failed)")
"""


def test_the_confluent_clients_offset_reads_survive_broker_restarts(thawed: Servers, tmp_path: Path) -> None:
    """What the poll thread asks Kafka besides records (what a group committed, its size, end offsets,
    metadata), asked without pause by a process of its own while the broker is SIGKILLed and restarted four
    times: it keeps going and ends cleanly. (librdkafka's admin ListConsumerGroupOffsets died of SIGSEGV on a
    coordinator error after a restart, within a few restarts.)"""
    topic, group, _ = names("reads")
    create_topics({topic: 8}, bootstrap_servers=thawed.bootstrap)
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", _OFFSET_READS, thawed.bootstrap, topic, group, str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=thawed.env)
    try:
        for _ in range(4):
            pause(3)  # reads against a running broker, then the outage
            assert reader.poll() is None, reader.communicate()[0][-3000:]
            thawed.kill("kafka")
            pause(2)
            thawed.start("kafka")
        pause(3)
        stop.touch()
        output, _ = reader.communicate(timeout=60)
    finally:
        reader.kill()
    assert reader.returncode == 0, f"exit {reader.returncode}:\n{output[-3000:]}"
    assert "survived" in output, output[-3000:]
