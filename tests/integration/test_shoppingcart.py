"""The shopping-cart example end to end on the real servers: the dendrites scenario in both modes, exactness
after an interrupted run (idempotent commands, and rebuild), and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from reactivex import operators as ops

from rxcqrs.examples.shoppingcart.domain import Cart
from rxcqrs.examples.shoppingcart.generator import dendrites_scenario, generate, reference
from rxcqrs.examples.shoppingcart.pipeline import publish_commands, start_pipeline
from rxcqrs.examples.shoppingcart.store import CartStore
from rxcqrs.kafka import ConsumerSettings, KafkaSink, KafkaSource, ProducerSettings, SourceSettings
from rxcqrs.messages import Batch
from rxcqrs.operators import DeadLetters
from tests.helpers import wait_until
from tests.integration.test_source_kafka import committed


class Hold:
    """Passes the first ``after`` records on (a batch whole if it starts among them) and keeps every later one
    in flight, never passed on: an interruption then leaves those uncommitted, for certain. ``held`` counts
    them (read from the test's thread once the source has held some)."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.seen = 0
        self.held = 0

    def passes(self, item: Any) -> bool:
        size = len(item) if isinstance(item, Batch) else 1
        before, self.seen = self.seen, self.seen + size
        if before < self.after:
            return True
        self.held += size
        return False


def run_pipeline(kafka_bootstrap: str, topic: str, group: str, store: CartStore, mode: str, total: int,
                 partitions: int, hold: Hold | None = None, **source: Any) -> Any:
    src = KafkaSource(topic, ConsumerSettings(group_id=group, bootstrap_servers=kafka_bootstrap),
                      SourceSettings(**source))
    if hold is not None:
        src.observable = src.observable.pipe(ops.filter(hold.passes))  # type: ignore[method-assign]
    dead = KafkaSink(producer=ProducerSettings(bootstrap_servers=kafka_bootstrap))
    flow = start_pipeline(src, store, mode=mode, dead_letters=DeadLetters(dead))  # type: ignore[arg-type]
    return flow, src


@pytest.mark.parametrize("mode", ["batched", "parallel", "serial"])
def test_the_dendrites_scenario(mode, topic_factory, kafka_bootstrap, group_id, cassandra_session, keyspace) -> None:  # type: ignore[no-untyped-def]
    topic = topic_factory(3)
    store = CartStore(cassandra_session, keyspace)
    store.create()
    cmds, ids = dendrites_scenario()
    publish_commands(cmds, topic, 3, ProducerSettings(bootstrap_servers=kafka_bootstrap))
    flow, _ = run_pipeline(kafka_bootstrap, topic, group_id, store, mode, 10, 3)
    wait_until(lambda: sum(v or 0 for v in committed(kafka_bootstrap, group_id, topic, 3).values()) == 10, 60,
               "all ten commands committed")
    flow.stop_and_wait()
    cart, _ = store.find(ids["cart"])  # type: ignore[misc]
    assert cart == Cart(ids["o1"], {ids["i1"]: 1, ids["i2"]: 2}, 9)
    events = list(store.log.events(cassandra_session, ids["cart"]))
    assert len(events) == 10
    assert [e.payload["action"] for e in sorted(events, key=lambda e: e.order)] == [c.action for c in cmds]
    removal = [e for e in events if e.payload["action"] == "RemoveItem"]
    assert len(removal) == 2 and all(e.payload["count"] == 1 for e in removal)  # logged as a removal
    assert store.rebuilder(group=group_id, topic=topic).run().rewritten == 0


@pytest.mark.parametrize("mode,idempotent,batches", [("parallel", True, False), ("serial", False, False),
                                                     ("batched", True, True)])
def test_an_interrupted_run_ends_exact(mode, idempotent, batches, topic_factory, kafka_bootstrap, group_id,  # type: ignore[no-untyped-def]
                                       cassandra_session, keyspace) -> None:
    """Stop without draining part way (in-flight work is not committed, so it is delivered again), restart:
    idempotent commands skip the redeliveries; plain commands are repaired by the rebuild. With batches from
    the source, split into records before the first stage, the same holds."""
    topic = topic_factory(4)
    store = CartStore(cassandra_session, keyspace, idempotent=idempotent)
    store.create()
    commands = generate(12, 600, seed=11)
    publish_commands(commands, topic, 4, ProducerSettings(bootstrap_servers=kafka_bootstrap))
    hold = Hold(150)  # with batches the first ones pass whole, however large: wait until some are held
    flow, src = run_pipeline(kafka_bootstrap, topic, group_id, store, mode, 600, 4, max_in_flight=200,
                             commit_interval=0.5, batches=batches, hold=hold)
    wait_until(lambda: src.metrics.get("acked") >= 100 and hold.held > 0, 60, "a quarter done, more held in flight")
    flow.stop(drain=False)
    flow.wait(60)
    first = src.metrics.get("records_in")
    flow, src = run_pipeline(kafka_bootstrap, topic, group_id, store, mode, 600, 4, batches=batches)
    wait_until(lambda: sum(v or 0 for v in committed(kafka_bootstrap, group_id, topic, 4).values()) == 600, 120,
               "everything committed after the restart")
    flow.stop_and_wait()
    assert first + src.metrics.get("records_in") > 600, "some records were delivered twice"
    report = store.rebuilder(group=group_id, topic=topic).run()
    if idempotent:
        assert report.rewritten == 0  # exact without any repair
    expected = reference(commands)
    assert dict(store.all_carts()) == {cid: cart for cid, cart in expected.items() if cart is not None}


def assert_event_stream(events_topic: str, commands: list[Any], partitions: int) -> None:
    """The stream holds the event of every accepted command, per cart in order, keyed by the cart."""
    from rxcqrs.examples.shoppingcart.domain import Rejected, apply, event_of
    from rxcqrs.kafka.admin import read_topic, topic_partitions

    assert topic_partitions(events_topic) == partitions  # created like the command topic
    stream = CartStore(None, "unused", events_topic=events_topic).stream
    assert stream is not None
    published: dict[uuid.UUID, dict[int, Any]] = {}
    for record in read_topic(events_topic):
        event = stream.decode(record.value)
        assert record.key == str(event.entity).encode()
        published.setdefault(event.entity, {}).setdefault(event.position, event.event)
    carts: dict[uuid.UUID, Any] = {}
    expected: dict[uuid.UUID, list[Any]] = {}
    for cmd in commands:
        result = apply(carts.get(cmd.cart_id), cmd)
        if not isinstance(result, Rejected):
            carts[cmd.cart_id] = result
            expected.setdefault(cmd.cart_id, []).append(event_of(cmd))
    assert {c: [e for _p, e in sorted(events.items())] for c, events in published.items()} == expected


def cart_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rxcqrs.examples.shoppingcart", *args], capture_output=True,
                          text=True, timeout=300, env=os.environ.copy())


def test_the_cli_produce_consume_show_duplicates_compensate(topic_factory, group_id, keyspace) -> None:  # type: ignore[no-untyped-def]
    topic = topic_factory(4)
    produced = cart_cli("produce", "--topic", topic, "--carts", "5", "--commands", "200", "--seed", "3",
                        "--partitions", "4")
    assert produced.returncode == 0 and "produced 200 commands for 5 carts" in produced.stdout, produced.stderr
    consumed = cart_cli("consume", "--topic", topic, "--group", group_id, "--keyspace", keyspace, "--mode", "serial",
                        "--stop-when-idle", "2", "--progress-every", "0.5", "--create-schema", "--no-batches",
                        "--events-topic", f"{topic}.events")
    assert consumed.returncode == 0, consumed.stdout + consumed.stderr
    assert f"events to {topic}.events" in consumed.stdout
    assert_event_stream(f"{topic}.events", generate(5, 200, 3), 4)
    assert "idle for 2s" in consumed.stdout and "done: 200 records, 200 acked" in consumed.stdout
    assert "in-flight" in consumed.stdout and "committed" in consumed.stdout  # the progress display
    shown = cart_cli("show", "--keyspace", keyspace)
    assert shown.returncode == 0 and "5 carts in" in shown.stdout
    cart_id = generate(5, 200, 3)[0].cart_id
    one = cart_cli("show", "--keyspace", keyspace, "--cart", str(cart_id))
    assert one.returncode == 0 and f"cart {cart_id}: owner" in one.stdout and "Insert" in one.stdout
    dups = cart_cli("duplicates", "--keyspace", keyspace)
    assert dups.returncode == 0 and "0 events logged more than once" in dups.stdout
    comp = cart_cli("compensate", "--keyspace", keyspace)
    assert comp.returncode == 0 and "5 carts examined, 0 rewritten" in comp.stdout
    bad = cart_cli("show", "--keyspace", keyspace, "--cart", "not-a-uuid")
    assert bad.returncode == 2 and "error" in bad.stderr
    bad_ks = cart_cli("show", "--keyspace", "x; DROP KEYSPACE y")
    assert bad_ks.returncode == 2 and "invalid keyspace" in bad_ks.stderr  # refused at parse time
    assert uuid.UUID(str(cart_id))
