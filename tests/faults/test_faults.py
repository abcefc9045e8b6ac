"""The fault suite: the shopping-cart consumer against real faults in a server pair of its own.

Every scenario runs in both modes of the example (idempotent commands, the default; and read-modify-write
commands repaired by duplicates + compensation) and then checks, independently of the consumer: every cart
against a fold of the topic itself, committed offsets equal to the end offsets, and the dead letters.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
import zlib
from collections import defaultdict
from typing import Any, Iterator

import pytest

from rxcqrs.examples.shoppingcart.codec import command_codec
from rxcqrs.examples.shoppingcart.domain import Cart, Command, fold
from rxcqrs.examples.shoppingcart.generator import generate
from rxcqrs.examples.shoppingcart.pipeline import publish_commands
from rxcqrs.examples.shoppingcart.store import CartStore
from rxcqrs.kafka import ProducerSettings, committed_offsets, create_topics, end_offsets
from rxcqrs.kafka.admin import read_topic
from rxcqrs.messages import OutgoingRecord
from tests.faults.conftest import CARTS, COMMANDS, PARTITIONS, Consumer, Figures, Servers, names
from tests.helpers import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

MODES = [pytest.param(True, id="idempotent"), pytest.param(False, id="rebuild")]


def pause(seconds: float) -> None:
    """The length of a fault (how long a server stays frozen or down): part of the scenario, not a wait for
    a condition."""
    threading.Event().wait(seconds)


class Scenario:
    """One topic, group and keyspace on the fault servers; the commands produced; the checks at the end."""

    def __init__(self, servers: Servers, name: str, idempotent: bool, poison_every: int = 0) -> None:
        self.servers = servers
        self.name = name
        self.idempotent = idempotent
        self.topic, self.group, self.keyspace = names(name)
        self.started = time.monotonic()
        self.commands = generate(CARTS, COMMANDS, seed=zlib.crc32(name.encode()) % 1000)
        create_topics({self.topic: PARTITIONS, self.topic + ".dlq": 1}, bootstrap_servers=servers.bootstrap)
        self.poison = _poison(self.topic, len(self.commands) // poison_every) if poison_every else []
        publish_commands(self.commands, self.topic, PARTITIONS, ProducerSettings(bootstrap_servers=servers.bootstrap),
                         extra=self.poison)

    def consumer(self, *args: str) -> Consumer:
        mode = "--idempotent" if self.idempotent else "--no-idempotent"
        # a window well below the topic's size, so commits (and redeliveries after a fault) come in steps
        return Consumer.start(self.servers, self.topic, self.group, self.keyspace, "--create-schema", mode,
                              "--drain-timeout", "10", "--window", "400", *args)

    def committed(self) -> int:
        return sum(o or 0 for o in committed_offsets(self.group, self.topic,
                                                     bootstrap_servers=self.servers.bootstrap).values())

    def wait_committed(self, fraction: float, consumer: Consumer, timeout: float = 300) -> None:
        target = int((len(self.commands) + len(self.poison)) * fraction)
        wait_until(lambda: self.committed() >= target or consumer.proc.poll() is not None, timeout,
                   f"{target} records committed")
        assert consumer.proc.poll() is None, f"the consumer ended early:\n{consumer.output[-3000:]}"

    def finish(self, consumer: Consumer, timeout: float = 600) -> None:
        code = consumer.wait(timeout)
        assert code == 0, f"exit {code}:\n{consumer.output[-4000:]}"

    def verify(self, **extra: Any) -> Figures:
        ends = end_offsets(self.topic, bootstrap_servers=self.servers.bootstrap)
        assert committed_offsets(self.group, self.topic, bootstrap_servers=self.servers.bootstrap) == ends
        figures = Figures(self.name, "idempotent" if self.idempotent else "rebuild", commands=len(self.commands),
                          extra=extra)
        session = self.servers.session()
        try:
            store = CartStore(session, self.keyspace, idempotent=self.idempotent)
            figures.duplicates = sum(1 for _ in store.log.duplicates(session))
            figures.unknown_outcomes = sum(1 for _ in store.log.unknown_outcomes(session))
            before = dict(store.all_carts())
            if not self.idempotent or figures.unknown_outcomes:
                figures.compensations = store.rebuilder().run().rewritten
            actual = dict(store.all_carts())
        finally:
            session.cluster.shutdown()
        expected = {cid: cart for cid, cart in fold_topic(self.servers.bootstrap, self.topic).items()
                    if cart is not None}
        wrong = sorted(str(c) for c in set(expected) | set(actual) if expected.get(c) != actual.get(c))
        figures.carts_exact = f"{len(expected) - len(wrong)}/{len(expected)}"
        figures.dead_letters = sum(end_offsets(self.topic + ".dlq", bootstrap_servers=self.servers.bootstrap).values())
        figures.seconds = round(time.monotonic() - self.started, 1)
        if self.idempotent:
            figures.extra["exact_before_compensation"] = before == expected
        figures.save()
        assert not wrong, f"{len(wrong)} carts differ from the fold of the topic, e.g. {wrong[:3]}"
        assert figures.dead_letters == len(self.poison)
        if self.idempotent and not figures.unknown_outcomes:
            assert before == expected, "idempotent commands must be exact without any repair"
        return figures


def _poison(topic: str, count: int) -> list[OutgoingRecord]:
    codec = command_codec()
    out = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            value, key = b"\x00\xffnot avro", str(uuid.uuid4()).encode()
        elif kind == 1:
            valid = codec.encode(Command("SetOwner", uuid.uuid4(), uuid.uuid4(), None))
            value = valid.replace(b"SetOwner", b"Teleport")  # an action the contract does not know
            key = str(uuid.uuid4()).encode()
        else:
            value, key = codec.encode(Command("SetOwner", uuid.uuid4(), uuid.uuid4(), None)), b"not-a-uuid"
        out.append(OutgoingRecord(value, key, topic, partition=i % PARTITIONS))
    return out


def fold_topic(bootstrap: str, topic: str) -> dict[uuid.UUID, Cart | None]:
    """The state every cart must end in, from the topic itself: its records decoded and folded per cart in
    partition order (a cart's commands share a partition); records that do not decode are skipped."""
    codec = command_codec()
    per_cart: dict[uuid.UUID, list[Command]] = defaultdict(list)
    for record in read_topic(topic, bootstrap_servers=bootstrap):
        try:
            uuid.UUID(record.key.decode())
            cmd = codec.decode(record.value)
        except Exception:
            continue
        per_cart[cmd.cart_id].append(cmd)
    return {cid: fold(cmds) for cid, cmds in per_cart.items()}


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


@pytest.mark.parametrize("idempotent", MODES)
def test_the_kafka_broker_killed_and_restarted(thawed: Servers, idempotent: bool) -> None:
    run = Scenario(thawed, "kkill", idempotent)
    consumer = run.consumer("--stop-when-idle", "3")
    run.wait_committed(0.25, consumer)
    thawed.kill("kafka")
    thawed.start("kafka")
    run.finish(consumer)
    run.verify()


@pytest.mark.parametrize("idempotent", MODES)
def test_sigterm_while_cassandra_is_frozen_exits_in_time_and_a_restart_finishes(thawed: Servers,
                                                                                idempotent: bool) -> None:
    run = Scenario(thawed, "termfrozen", idempotent)
    consumer = run.consumer()
    run.wait_committed(0.25, consumer)
    thawed.signal("cassandra", signal.SIGSTOP)
    try:
        pause(2)  # records are in flight against the frozen node
        asked = time.monotonic()
        consumer.proc.send_signal(signal.SIGTERM)
        code = consumer.wait(60)
        took = time.monotonic() - asked
    finally:
        thawed.signal("cassandra", signal.SIGCONT)
    assert code != 0 and took < 10 + 20, f"exit {code} after {took:.1f}s:\n{consumer.output[-3000:]}"
    assert "records not done" in consumer.output or "records in flight" in consumer.output, consumer.output[-3000:]
    run.finish(run.consumer("--stop-when-idle", "3"))
    run.verify(sigterm_exit_s=round(took, 1), sigterm_exit_code=code)


@pytest.mark.parametrize("idempotent", MODES)
def test_one_percent_poison_goes_to_the_dead_letter_topic(thawed: Servers, idempotent: bool) -> None:
    run = Scenario(thawed, "poison", idempotent, poison_every=100)
    run.finish(run.consumer("--stop-when-idle", "3"))
    run.verify(poison=len(run.poison))


@pytest.mark.parametrize("idempotent", MODES)
def test_a_group_of_two_a_third_joins_and_one_leaves(thawed: Servers, idempotent: bool) -> None:
    run = Scenario(thawed, "group", idempotent)
    first, second = run.consumer("--stop-when-idle", "5"), run.consumer("--stop-when-idle", "5")
    run.wait_committed(0.2, first)
    third = run.consumer("--stop-when-idle", "5")
    run.wait_committed(0.5, third)
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait(60) in (0, 3), first.output[-3000:]  # 3: it left records for the others
    run.finish(second)
    run.finish(third)
    run.verify(members=3)


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
