"""``make demo`` / ``rxcqrs demo``: the whole mission on the local servers, with a real crash in the middle.

1. produce ~10,000 shopping-cart commands over 100 carts (plus a few poison records);
2. run the parallel pipeline in a child process, with its live progress display;
3. kill that process (SIGKILL) part way, while records are in flight, and start it again: the records that
   were processed but not committed are delivered again;
4. query the event log for events logged more than once, and compensate (rebuild the carts that disagree
   with the fold of their distinct logged events);
5. check every cart against the reference: the same command stream folded in memory;
6. the query side: the batched engine (idempotent) publishes the carts' event stream, a projection folds it
   into carts_by_owner and item_totals, is killed (SIGKILL) part way and restarted; both read models are
   checked against the reference.

Exit 0 only if every cart and both read models match.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import IO, Any

__all__ = ["main"]

CARTS = 100
COMMANDS = 10_000
PARTITIONS = 8
SEED = 2026
CRASH_AT = 0.4  # fraction of the commands committed before the crash


def _consumer(topic: str, group: str, keyspace: str, idle: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "rxcqrs.examples.shoppingcart", "consume", "--topic", topic,
                             "--group", group, "--keyspace", keyspace, "--mode", "parallel", "--create-schema",
                             "--no-idempotent", "--stop-when-idle", str(idle)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)


def _projector(events: str, group: str, keyspace: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "rxcqrs.examples.shoppingcart", "project", "--events-topic", events,
                             "--group", group, "--keyspace", keyspace, "--create-schema", "--stop-when-idle", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)


def _relay(stream: IO[str], prefix: str) -> threading.Thread:
    def pump() -> None:
        for line in stream:
            print(f"{prefix}{line.rstrip()}", flush=True)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def _committed(topic: str, group: str) -> int:
    from rxcqrs.kafka import committed_offsets

    return sum(offset or 0 for offset in committed_offsets(group, topic).values())


def _poison(topic: str) -> list[Any]:
    from rxcqrs.examples.shoppingcart.codec import command_codec
    from rxcqrs.examples.shoppingcart.domain import Command
    from rxcqrs.messages import OutgoingRecord

    bad_action = command_codec().encode(Command("Checkout", uuid.uuid4(), uuid.uuid4(), None)).replace(
        b"Checkout", b"Teleport")
    valid = command_codec().encode(Command("SetOwner", uuid.uuid4(), uuid.uuid4(), None))
    return [OutgoingRecord(b"\x00\xffnot avro", str(uuid.uuid4()).encode(), topic, partition=0),
            OutgoingRecord(bad_action, str(uuid.uuid4()).encode(), topic, partition=1),
            OutgoingRecord(valid, b"not-a-uuid", topic, partition=2)]


def _tidy(keep: str) -> None:
    """Remove the topics and keyspaces of earlier demos (this run's stay, for inspection)."""
    from rxcqrs.cassandra import CassandraSettings, connect
    from rxcqrs.kafka import delete_topics
    from rxcqrs.kafka.admin import admin_client

    admin = admin_client()
    try:
        old_topics = [t for t in admin.list_topics() if t.startswith("demo.") and not t.startswith(f"demo.{keep}")]
    finally:
        admin.close()
    if old_topics:
        delete_topics(old_topics)
    session = connect(CassandraSettings())
    try:
        rows = session.execute("SELECT keyspace_name FROM system_schema.keyspaces")
        old = [r.keyspace_name for r in rows
               if r.keyspace_name.startswith("demo_") and r.keyspace_name != f"demo_{keep}"]
        for name in old:
            session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=120)
    finally:
        session.cluster.shutdown()
    if old_topics or old:
        print(f"== removed {len(old_topics)} topics and {len(old)} keyspaces of earlier demos", flush=True)


def main() -> int:
    from rxcqrs.cassandra import CassandraSettings, connect
    from rxcqrs.examples.shoppingcart.generator import generate, reference
    from rxcqrs.examples.shoppingcart.pipeline import publish_commands
    from rxcqrs.examples.shoppingcart.store import CartStore
    from rxcqrs.kafka import create_topics

    run_id = time.strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:4]
    topic, group, keyspace = f"demo.{run_id}.cmds", f"demo.{run_id}", f"demo_{run_id}"
    started = time.monotonic()
    print(f"== rxcqrs demo {run_id}: topic {topic}, keyspace {keyspace}", flush=True)
    _tidy(run_id)

    commands = generate(CARTS, COMMANDS, SEED)
    create_topics({topic: PARTITIONS})
    poison = _poison(topic)
    sent = publish_commands(commands, topic, PARTITIONS, extra=poison)
    print(f"== produced {len(commands)} commands for {CARTS} carts (+{len(poison)} poison records), "
          f"{sent} records on {PARTITIONS} partitions", flush=True)

    print("== consuming (parallel: command and event log in a broadcast, commits gated by both; read-modify-write "
          "commands, so a redelivery applies a command again)", flush=True)
    first = _consumer(topic, group, keyspace, idle=5)
    relay = _relay(first.stdout, "   run 1 | ")  # type: ignore[arg-type]
    crash_after = int(COMMANDS * CRASH_AT)
    print(f"== waiting until {crash_after} records are committed (the consumer starts, joins its group, then "
          "works), to kill it in the middle of its work", flush=True)
    while first.poll() is None and _committed(topic, group) < crash_after:
        time.sleep(0.2)
    if first.poll() is not None:
        print(f"!! the consumer ended before the crash point (exit {first.returncode})", flush=True)
        return 1
    at_crash = _committed(topic, group)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    relay.join(5)
    print(f"== CRASH: killed the consumer (SIGKILL) with {at_crash} records committed; restarting it. The group "
          "first waits for the dead member's session to expire (about 10 s) before it hands its partitions to the "
          "new one: 'waiting for partition assignment' below", flush=True)

    second = _consumer(topic, group, keyspace, idle=5)
    relay = _relay(second.stdout, "   run 2 | ")  # type: ignore[arg-type]
    if second.wait() != 0:
        print(f"!! the restarted consumer failed (exit {second.returncode})", flush=True)
        return 1
    relay.join(5)
    consumed_for = time.monotonic() - started

    session = connect(CassandraSettings())
    try:
        store = CartStore(session, keyspace, idempotent=False)
        duplicates = list(store.log.duplicates(session))
        extra_rows = sum(d.times_logged - 1 for d in duplicates)
        print(f"== duplicates query: {len(duplicates)} events logged more than once ({extra_rows} extra rows)",
              flush=True)
        report = store.rebuilder(group=group, topic=topic).run()
        print(f"== compensation (rebuild from the distinct logged events): {report.examined} carts examined, "
              f"{report.rewritten} rewritten, {report.unchanged} already right", flush=True)
        again = store.rebuilder(group=group, topic=topic).run()
        expected = reference(commands)
        actual = dict(store.all_carts())
        wrong = [cid for cid, cart in expected.items() if actual.get(cid) != cart]
        wrong += [cid for cid in actual if cid not in expected]
        dead = _dead_letters(topic)
    finally:
        session.cluster.shutdown()

    took = time.monotonic() - started
    print("== summary", flush=True)
    print(f"   commands            {len(commands)} (+{len(poison)} poison)", flush=True)
    print(f"   events logged       {len(commands) + extra_rows} rows for {len(commands)} events", flush=True)
    print(f"   duplicates found    {len(duplicates)}", flush=True)
    print(f"   compensations       {report.rewritten} carts rebuilt (a second run rebuilt {again.rewritten})",
          flush=True)
    print(f"   dead-lettered       {dead} (in {topic}.dlq)", flush=True)
    print(f"   carts verified      {len(expected) - len(wrong)}/{len(expected)} match the in-memory reference",
          flush=True)
    print(f"   time                {took:.1f}s ({len(commands) / consumed_for:.0f} records/s end to end "
          "including the crash and restart)", flush=True)
    print(f"   inspect             rxcqrs cart show --keyspace {keyspace} [--cart ID]", flush=True)
    if wrong or again.rewritten:
        print(f"!! {len(wrong)} carts differ from the reference, e.g. {wrong[:3]}", flush=True)
        return 1
    print("== OK: every cart matches", flush=True)
    return _query_side(topic, group, keyspace, expected)


def _query_side(topic: str, group: str, keyspace: str, expected: dict[Any, Any]) -> int:
    """Step 6: the event stream and both read models, with the projection killed in the middle."""
    from rxcqrs.cassandra import CassandraSettings, connect
    from rxcqrs.examples.shoppingcart.read_models import cart_views, expected_views, stored_views
    from rxcqrs.kafka import committed_offsets, end_offsets

    events, q_group, q_keyspace = f"{topic}.events", f"{group}.q", f"{keyspace}_q"
    print(f"== the query side: the batched engine publishes every decided event to {events} (into {q_keyspace})",
          flush=True)
    consumer = subprocess.Popen([sys.executable, "-m", "rxcqrs.examples.shoppingcart", "consume", "--topic", topic,
                                 "--group", q_group, "--keyspace", q_keyspace, "--create-schema", "--events-topic",
                                 events, "--stop-when-idle", "3"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    relay = _relay(consumer.stdout, "   cmds  | ")  # type: ignore[arg-type]
    if consumer.wait() != 0:
        print(f"!! the consumer failed (exit {consumer.returncode})", flush=True)
        return 1
    relay.join(5)
    total = sum(end_offsets(events).values())
    views_group = f"{group}.views"
    projected = lambda: sum(v or 0 for v in committed_offsets(views_group, events).values())  # noqa: E731
    first = _projector(events, views_group, q_keyspace)
    relay = _relay(first.stdout, "   views | ")  # type: ignore[arg-type]
    while first.poll() is None and projected() < total * CRASH_AT:
        time.sleep(0.1)
    if first.poll() is not None:
        print(f"!! the projection ended before the crash point (exit {first.returncode})", flush=True)
        return 1
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    relay.join(5)
    print(f"== CRASH: killed the projection (SIGKILL) with {projected()} of {total} events committed; restarting "
          "it (again after the dead member's session expires)", flush=True)
    second = _projector(events, views_group, q_keyspace)
    relay = _relay(second.stdout, "   views | ")  # type: ignore[arg-type]
    if second.wait() != 0:
        print(f"!! the restarted projection failed (exit {second.returncode})", flush=True)
        return 1
    relay.join(5)
    session = connect(CassandraSettings())
    try:
        owners, totals = stored_views(cart_views(session, q_keyspace, events), q_keyspace)
    finally:
        session.cluster.shutdown()
    want_owners, want_totals = expected_views((cid, cart) for cid, cart in expected.items() if cart is not None)
    print(f"   carts_by_owner      {len(owners)} rows, {'exact' if owners == want_owners else 'WRONG'}", flush=True)
    print(f"   item_totals         {len(totals)} items, {'exact' if totals == want_totals else 'WRONG'}", flush=True)
    print(f"   inspect             rxcqrs cart query --keyspace {q_keyspace} [--owner ID | --item ID]", flush=True)
    if owners != want_owners or totals != want_totals:
        print("!! a read model differs from the reference", flush=True)
        return 1
    print("== OK: both read models match", flush=True)
    return 0


def _dead_letters(topic: str) -> int:
    from kafka import KafkaConsumer

    from rxcqrs.kafka.settings import default_bootstrap

    reader = KafkaConsumer(topic + ".dlq", bootstrap_servers=default_bootstrap(), auto_offset_reset="earliest",
                           consumer_timeout_ms=3000, enable_auto_commit=False)
    try:
        return sum(1 for _ in reader)
    finally:
        reader.close()


if __name__ == "__main__":
    sys.exit(main())
