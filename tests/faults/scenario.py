"""What every fault scenario shares: a topic, group and keyspace of its own on the fault servers, the commands
produced, the consumer started with the scenario's options, and the independent checks at the end: every cart
against a fold of the topic itself, committed offsets equal to the end offsets, and the dead letters.
"""

from __future__ import annotations

import threading
import time
import uuid
import zlib
from collections import defaultdict
from typing import Any

from rxcqrs.examples.shoppingcart.codec import command_codec
from rxcqrs.examples.shoppingcart.domain import Cart, Command, fold
from rxcqrs.examples.shoppingcart.generator import generate
from rxcqrs.examples.shoppingcart.pipeline import publish_commands
from rxcqrs.examples.shoppingcart.store import CartStore
from rxcqrs.kafka import ProducerSettings, committed_offsets, create_topics, end_offsets
from rxcqrs.kafka.admin import group_size, read_topic
from rxcqrs.messages import OutgoingRecord
from tests.faults.conftest import CARTS, COMMANDS, PARTITIONS, Consumer, Figures, Servers, names
from tests.helpers import free_ports, wait_until

__all__ = ["Scenario", "fold_topic", "pause", "projection_through", "zombie"]


def pause(seconds: float) -> None:
    """The length of a fault (how long a server stays frozen or down): part of the scenario, not a wait for
    a condition."""
    threading.Event().wait(seconds)


class Scenario:
    """One topic, group and keyspace on the fault servers; the commands produced; the checks at the end."""

    def __init__(self, servers: Servers, name: str, idempotent: bool, poison_every: int = 0,
                 published: float = 1.0, client: str | None = None, protocol: str = "fenced",
                 mode: str = "batched") -> None:
        """``published``: the share of the commands produced now; :meth:`publish_rest` produces the rest.
        ``client``: the consumers' Kafka client (``--kafka-backend``; None: the default); ``protocol``: their
        write protocol; ``mode``: their pipeline (``--mode``)."""
        self.servers = servers
        self.name = name if client is None else f"{name}-{client}"
        if protocol != "fenced":
            self.name += f"-{protocol}"
        if mode != "batched":
            self.name += f"-{mode}"
        self.idempotent = idempotent
        self.client = client
        self.protocol = protocol
        self.mode = mode
        self.topic, self.group, self.keyspace = names(name)
        self.started = time.monotonic()
        self.commands = generate(CARTS, COMMANDS, seed=zlib.crc32(name.encode()) % 1000)
        create_topics({self.topic: PARTITIONS, self.topic + ".dlq": 1}, bootstrap_servers=servers.bootstrap)
        self.poison = _poison(self.topic, len(self.commands) // poison_every) if poison_every else []
        self.published = published
        self._unpublished = int(len(self.commands) * published)
        publish_commands(self.commands[:self._unpublished], self.topic, PARTITIONS,
                         ProducerSettings(bootstrap_servers=servers.bootstrap), extra=self.poison)

    def publish_rest(self, upto: float = 1.0) -> None:
        """Produce the commands not produced yet, up to the share ``upto`` of them (with acks=all: they are on
        a quorum of replicas)."""
        end = int(len(self.commands) * upto)
        publish_commands(self.commands[self._unpublished:end], self.topic, PARTITIONS,
                         ProducerSettings(bootstrap_servers=self.servers.bootstrap))
        self._unpublished = max(self._unpublished, end)

    def trickle(self, per_second: int = 1000) -> threading.Thread:
        """Produce the commands not produced yet at about ``per_second`` on a thread of its own (a steady
        stream, so consumers always have records in flight); join the thread to wait for the last."""
        import uuid as uuids

        from rxcqrs.examples.shoppingcart.generator import partition_for
        from rxcqrs.kafka import KafkaSink

        rest, self._unpublished = self.commands[self._unpublished:], len(self.commands)
        codec = command_codec()

        def produce() -> None:
            sink = KafkaSink(self.topic, ProducerSettings(bootstrap_servers=self.servers.bootstrap))
            step = max(1, per_second // 40)
            for i, cmd in enumerate(rest):
                sink.on_next(OutgoingRecord(codec.encode(cmd), str(uuids.uuid4()).encode(), self.topic,
                                            partition=partition_for(cmd.cart_id, PARTITIONS)))
                if i % step == step - 1:
                    pause(0.025)  # the stream's pace (the workload's shape, not a wait for anything)
            sink.on_completed()
            sink.raise_if_failed()

        thread = threading.Thread(target=produce, name="trickle", daemon=True)
        thread.start()
        return thread

    def consumer(self, *args: str) -> Consumer:
        mode = "--idempotent" if self.idempotent else "--no-idempotent"
        replication = ["--replication", str(min(self.servers.settings.nodes, 3))]
        # a window well below the topic's size, so commits (and redeliveries after a fault) come in steps
        client = ["--kafka-backend", self.client] if self.client else []
        return Consumer.start(self.servers, self.topic, self.group, self.keyspace, "--create-schema", mode,
                              "--drain-timeout", "10", "--window", "400", "--write-protocol", self.protocol,
                              "--mode", self.mode, *replication, *client, *args)

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
        committed = committed_offsets(self.group, self.topic, bootstrap_servers=self.servers.bootstrap)
        assert {p: committed.get(p) or 0 for p in ends} == ends, f"committed {committed} != end offsets {ends}"
        figures = Figures(self.name, "idempotent" if self.idempotent else "rebuild", commands=len(self.commands),
                          extra={"protocol": self.protocol, "pipeline": self.mode, **extra})
        session = self.servers.session()
        try:
            store = CartStore(session, self.keyspace, idempotent=self.idempotent,
                              write_protocol=self.protocol)  # type: ignore[arg-type]
            figures.duplicates = sum(1 for _ in store.log.duplicates(session))
            figures.unknown_outcomes = sum(1 for _ in store.log.unknown_outcomes(session))
            before = dict(store.all_carts())
            if not self.idempotent or figures.unknown_outcomes:
                figures.compensations = store.rebuilder(group=self.group, topic=self.topic).run().rewritten
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
        shown = {c: {"expected": expected.get(c), "before compensation": before.get(c), "after": actual.get(c)}
                 for c in (uuid.UUID(w) for w in wrong[:2])}
        assert not wrong, f"{len(wrong)} carts differ from the fold of the topic, e.g. {shown}"
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


def zombie(servers: Servers, run: Scenario) -> None:
    """Two consumers in one group; one is frozen (SIGSTOP) past its session timeout with records in flight and
    carts cached, while the other takes its partitions over and progresses; then it thaws (SIGCONT) with its
    stale cache and in-flight work, and both finish. Every cart must be exact without repair, and the
    commits at the end offsets (:meth:`Scenario.verify`)."""
    import os
    import signal

    from rxcqrs.kafka import ConsumerSettings

    session_timeout = ConsumerSettings(group_id="x").session_timeout_ms / 1000
    assert run.published <= 0.4, "the rest is published as a stream once the group is stable"
    metrics_port = free_ports(1)[0]
    # no --stop-when-idle: a member done with the first share before the other joined would leave; both are
    # stopped with SIGTERM (a drain) once every record is committed
    bootstrap = servers.bootstrap
    first = run.consumer("--metrics-port", str(metrics_port))
    # the second starts once the first is in the group, so its schema is made (concurrent schema changes on a
    # multi-node Cassandra can disagree: INCOMPATIBLE_SCHEMA)
    wait_until(lambda: group_size(run.group, bootstrap_servers=bootstrap) >= 1
               or first.proc.poll() is not None, 120, "the first member in the group")
    assert first.proc.poll() is None, f"the first member ended early:\n{first.output[-3000:]}"
    second = run.consumer()

    def every_partition_past(mark: dict[int, int | None]) -> bool:
        now = committed_offsets(run.group, run.topic, bootstrap_servers=bootstrap)
        ends = end_offsets(run.topic, bootstrap_servers=bootstrap)
        return all((now[p] or 0) > (mark[p] or 0) or (now[p] or 0) >= ends[p] for p in ends)

    def ended() -> bool:
        return first.proc.poll() is not None or second.proc.poll() is not None

    def both_running() -> None:
        assert not ended(), f"a member ended early\n-- the first:\n{first.output[-3000:]}\n-- the other:\n" \
                            f"{second.output[-3000:]}"

    # a stable group: both members in it, every partition being worked on
    wait_until(lambda: group_size(run.group, bootstrap_servers=bootstrap) == 2 or ended(), 120,
               "both members in the group")
    both_running()
    joined = committed_offsets(run.group, run.topic, bootstrap_servers=bootstrap)
    wait_until(lambda: every_partition_past(joined), 120, "every partition worked on")
    stream = run.trickle(per_second=150)  # the rest as a steady stream (~10 s), so the member has work coming in
    run.wait_committed(run.published + 0.1, first)
    # freeze it the moment it has records in flight (its own figures, read from its metrics endpoint), or, if
    # no sample catches one within a few seconds (a fast engine settles a trickle in milliseconds), while the
    # stream still flows: the member then thaws to records already fetched for partitions it lost
    give_up = time.monotonic() + 3

    def sampled() -> tuple[int] | None:
        n = _in_flight(metrics_port)
        return (n,) if n or time.monotonic() > give_up else None

    (in_flight_when_frozen,) = wait_until(sampled, 30, "records in flight, or a few seconds of trying")
    assert stream.is_alive(), "the stream ended before the freeze: the zombie would have nothing coming in"
    os.killpg(first.proc.pid, signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        frozen_at = run.committed()
        pause(session_timeout + 2)  # the length of the freeze: past the member's session timeout
        taken_over = committed_offsets(run.group, run.topic, bootstrap_servers=bootstrap)
        wait_until(lambda: every_partition_past(taken_over) or second.proc.poll() is not None, 300,
                   "the other member progressing on every partition")
        assert second.proc.poll() is None, second.output[-3000:]
    finally:
        os.killpg(first.proc.pid, signal.SIGCONT)
    stream.join(300)
    thawed_after = round(time.monotonic() - frozen, 1)
    wait_until(lambda: run.committed() >= sum(end_offsets(run.topic, bootstrap_servers=bootstrap).values())
               or ended(), 300, "every record committed")
    both_running()
    for member in (first, second):  # a drain: the zombie still settles what it had in flight
        member.terminate()
    run.finish(second)
    run.finish(first)
    try:
        figures = run.verify(frozen_s=thawed_after, committed_when_frozen=frozen_at,
                             zombie_in_flight_when_frozen=in_flight_when_frozen)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n-- the zombie:\n{first.output[-3000:]}\n-- the other:\n"
                             f"{second.output[-3000:]}") from None
    assert figures.unknown_outcomes == 0


def _in_flight(port: int) -> int:
    """A consumer's records in flight, read from its Prometheus endpoint (``--metrics-port``)."""
    import re
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            found = re.search(r"^rxcqrs_in_flight (\S+)$", answer.read().decode(), re.MULTILINE)
    except OSError:  # not serving yet, or a slow answer: the caller's wait asks again until its deadline
        return 0
    return int(float(found.group(1))) if found else 0


def projection_through(servers: Servers, run: Scenario, fault: str) -> Figures:
    """The query side through a fault: the command side publishes the event stream and is SIGKILLed once on the
    way (its redelivery puts repeats on the stream); then the projection runs, ``fault`` ("cassandra" or
    "kafka") is SIGKILLed and restarted while it works, and it finishes. Both read models must equal what the
    fold of the command topic gives, without repair."""
    from rxcqrs.examples.shoppingcart.read_models import cart_views, expected_views, stored_views

    events = f"{run.topic}.events"
    first = run.consumer("--events-topic", events)
    run.wait_committed(0.3, first)
    first.kill()
    run.finish(run.consumer("--events-topic", events, "--stop-when-idle", "3"))
    total = sum(end_offsets(events, bootstrap_servers=servers.bootstrap).values())
    group = f"{run.group}.views"

    def projected() -> int:
        return sum(o or 0 for o in committed_offsets(group, events, bootstrap_servers=servers.bootstrap).values())

    projector = Consumer.start(servers, events, group, run.keyspace, "--create-schema", "--stop-when-idle", "5",
                               "--drain-timeout", "10", command="project")
    wait_until(lambda: projected() >= total // 4 or projector.proc.poll() is not None, 300,
               "a quarter of the stream projected")
    assert projector.proc.poll() is None, projector.output[-3000:]
    servers.kill(fault)
    servers.start(fault)
    run.finish(projector)
    assert projected() == total, f"{projected()} of {total} events committed"
    figures = run.verify(events=total, fault=fault)
    session = servers.session()
    try:
        owners, totals = stored_views(cart_views(session, run.keyspace, events), run.keyspace)
    finally:
        session.cluster.shutdown()
    live = [(cid, cart) for cid, cart in fold_topic(servers.bootstrap, run.topic).items() if cart is not None]
    want_owners, want_totals = expected_views(live)
    assert owners == want_owners, "carts_by_owner differs from the fold of the topic"
    assert totals == want_totals, "item_totals differs from the fold of the topic"
    return figures
