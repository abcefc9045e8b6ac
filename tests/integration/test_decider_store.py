"""A Decider on real Cassandra and Kafka: the README's bank account with its consumer SIGKILLed three times
(every balance, rejection and event exact, nothing repaired), the derived tables read by plain CQL, a table
that does not match the types refused, and a rebuild from the events."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import make_dataclass
from pathlib import Path
from typing import Any

import pytest
import reactivex
from dataclasses_avroschema import AvroModel

from rxcqrs import Decider, run
from rxcqrs.backoff import Backoff
from rxcqrs.cassandra.aggregate import AggregateSink
from rxcqrs.cassandra.decider_store import DeciderStore
from rxcqrs.cassandra.fence import write_timestamp
from rxcqrs.config import Config
from rxcqrs.decider import Reject
from rxcqrs.exceptions import SchemaError
from rxcqrs.kafka import committed_offsets, end_offsets
from rxcqrs.messages import Envelope
from rxcqrs.quick import publish
from tests.counters import TOTALS as counters
from tests.counters import Add, Added, Total, envelopes
from tests.helpers import freeze_while_taken_over, wait_until
from tests.integration.test_readme import example

MARKER = "# -- ten accounts"
DOMAIN = example("Your own aggregate").split(MARKER)[0]
CONSUMER = DOMAIN + """
import os
flow = rxcqrs.cqrs(os.environ["TOPIC"], AccountCommand, aggregate=accounts, keyspace=os.environ["KEYSPACE"],
                   group=os.environ["GROUP"], create_schema=True, events=True)
flow.until(timeout=600)
"""


def domain() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "bank_domain"}
    exec(compile(DOMAIN, "README.md", "exec", dont_inherit=True), namespace)
    return namespace


def commands(bank: dict[str, Any], accounts: int, per_account: int, seed: int) -> list[Any]:
    """Each account opened, then deposits, withdrawals (some overdrawn), closes (most refused), reopenings."""
    rng = random.Random(seed)
    Command = bank["AccountCommand"]
    queues = {uuid.UUID(int=rng.getrandbits(128)): [] for _ in range(accounts)}
    for account, queue in queues.items():
        queue.append(Command(account, "open"))
        for _ in range(per_account - 1):
            action = rng.choices(["deposit", "withdraw", "close", "open"], [50, 40, 5, 5])[0]
            amount = rng.choice([0, 1, 5, 20, 50, 100]) if action in ("deposit", "withdraw") else 0
            queue.append(Command(account, action, amount))
    out = []
    while queues:  # interleaved, each account's own order kept
        account = rng.choice(list(queues))
        out.append(queues[account].pop(0))
        if not queues[account]:
            del queues[account]
    return out


def reference(bank: dict[str, Any], sent: list[Any]) -> dict[uuid.UUID, tuple[Any, list[str], list[Any]]]:
    """Per account: the state, the rejection reasons and the events, from the decider in memory."""
    accounts = bank["accounts"]
    out: dict[uuid.UUID, tuple[Any, list[str], list[Any]]] = {}
    for cmd in sent:
        state, reasons, events = out.get(cmd.account, (None, [], []))
        answer = accounts.decided(state, cmd)
        if isinstance(answer, Reject):
            reasons.append(answer.reason)
        else:
            events += answer
            state = accounts.fold(answer, state)
        out[cmd.account] = (state, reasons, events)
    return out


def config_for(services_settings: Any) -> Config:
    return Config(kafka_bootstrap=str(services_settings.kafka_bootstrap), cassandra_hosts=(services_settings.host,),
                  cassandra_port=services_settings.cassandra_port)


def test_a_bank_account_stays_exact_through_three_consumer_kills(topic_factory: Any, group_id: str, keyspace: str,
                                                                 services_settings: Any, cassandra_session: Any,
                                                                 tmp_path: Path) -> None:
    bank = domain()
    topic = topic_factory(2)
    sent = commands(bank, accounts=100, per_account=100, seed=7)
    config = config_for(services_settings)
    assert publish(topic, sent, key="account", partitions=2, config=config) == len(sent)
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    env = consumer_env(topic, keyspace, group_id, services_settings)
    ends = end_offsets(topic, bootstrap_servers=config.kafka_bootstrap)

    def progress() -> int:
        found = committed_offsets(group_id, topic, bootstrap_servers=config.kafka_bootstrap)
        return sum(v or 0 for v in found.values())

    def started() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    kills = 0
    for threshold in (len(sent) // 10, len(sent) // 3, len(sent) * 2 // 3):
        consumer = started()
        try:
            wait_until(lambda t=threshold, c=consumer: progress() >= t or c.poll() is not None,  # type: ignore[misc]
                       180, f"the consumer committing {threshold} records")
            assert consumer.poll() is None, consumer.stderr.read() if consumer.stderr else ""
            if progress() < len(sent):
                consumer.send_signal(signal.SIGKILL)  # mid-flight: state written past the committed offsets
                kills += 1
        finally:
            consumer.kill()
            consumer.wait(30)
    assert kills == 3
    consumer = started()
    try:
        wait_until(lambda: committed_offsets(group_id, topic, bootstrap_servers=config.kafka_bootstrap) == ends
                   or consumer.poll() is not None, 300, "every record committed")
        assert consumer.poll() is None, consumer.stderr.read() if consumer.stderr else ""
    finally:
        consumer.send_signal(signal.SIGKILL)
        consumer.wait(30)

    assert_exact(bank, sent, cassandra_session, keyspace, group_id, topic)
    assert_stream(bank, sent, cassandra_session, keyspace, topic, config)


def assert_exact(bank: dict[str, Any], sent: list[Any], session: Any, keyspace: str, group: str, topic: str) -> None:
    """Every balance, rejection and event as the decider decides them in memory; a rebuild finds nothing."""
    store = DeciderStore(session, keyspace, bank["accounts"])
    expected = reference(bank, sent)
    for account, (state, reasons, events) in expected.items():
        assert store.get(account) == state, account
        assert [r.reason for r in store.rejections(account)] == reasons, account
        assert store.history(account) == events, account
    report = store.rebuild(group=group, topic=topic)
    assert report.examined == len(expected) and report.rewritten == 0
    # plain CQL, as another language would read it
    live = {row.account: row.balance for row in session.execute(
        f"SELECT account, balance, deleted FROM {keyspace}.account") if not row.deleted}
    assert live == {a: s.balance for a, (s, _r, _e) in expected.items() if s is not None}


def assert_stream(bank: dict[str, Any], sent: list[Any], session: Any, keyspace: str, topic: str,
                  config: Config) -> None:
    """The event stream holds every decided event, keyed by its account, in each account's order; a repeat
    (after a crash before the state write) has the same id, content and source offset."""
    from rxcqrs.kafka.admin import read_topic

    stream = DeciderStore(session, keyspace, bank["accounts"], events_topic=f"{topic}.events").stream
    assert stream is not None
    seen: dict[uuid.UUID, dict[uuid.UUID, Any]] = {}  # account -> event id -> the event
    order: dict[uuid.UUID, list[int]] = {}
    partition_of: dict[uuid.UUID, int] = {}
    for record in read_topic(f"{topic}.events", bootstrap_servers=config.kafka_bootstrap):
        event = stream.decode(record.value)
        assert record.key == str(event.entity).encode()
        assert partition_of.setdefault(event.entity, record.partition) == record.partition  # one partition each
        first = seen.setdefault(event.entity, {}).setdefault(event.event_id, event)
        assert first == event, "a repeat differs from the first"
        order.setdefault(event.entity, []).append(event.position)
    for account, (_state, _reasons, events) in reference(bank, sent).items():
        published = sorted(seen.get(account, {}).values(), key=lambda e: e.position)
        assert [e.event for e in published] == events, account
        firsts = list(dict.fromkeys(order.get(account, [])))
        assert firsts == sorted(firsts), f"{account}: events out of order on the stream"


def consumer_env(topic: str, keyspace: str, group: str, services_settings: Any) -> dict[str, str]:
    return {**os.environ, "TOPIC": topic, "KEYSPACE": keyspace, "GROUP": group,
            "RXCQRS_KAFKA_BOOTSTRAP": str(services_settings.kafka_bootstrap),
            "RXCQRS_CASSANDRA_HOSTS": services_settings.host,
            "RXCQRS_CASSANDRA_PORT": str(services_settings.cassandra_port)}


def test_a_frozen_bank_consumer_thawed_after_its_partitions_moved_on_changes_nothing(
        topic_factory: Any, group_id: str, keyspace: str, services_settings: Any, cassandra_session: Any,
        tmp_path: Path) -> None:
    """Two consumers in one group; one is frozen (SIGSTOP) past its session timeout while commands stream in,
    the other takes its partitions over and progresses; then it thaws (SIGCONT) with its cached accounts and
    its work in flight. Every balance exact, without repair."""
    from rxcqrs.kafka.admin import group_size

    bank = domain()
    topic = topic_factory(4)
    sent = commands(bank, accounts=80, per_account=40, seed=11)
    config = config_for(services_settings)
    first_part = len(sent) // 5
    publish(topic, sent[:first_part], key="account", partitions=4, config=config)
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    env = consumer_env(topic, keyspace, group_id, services_settings)
    consumers = [subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    bootstrap = config.kafka_bootstrap

    def committed() -> dict[int, int | None]:
        return committed_offsets(group_id, topic, bootstrap_servers=bootstrap)

    def every_partition_past(mark: dict[int, int | None]) -> bool:
        now, ends = committed(), end_offsets(topic, bootstrap_servers=bootstrap)
        return all((now[p] or 0) > (mark[p] or 0) or (now[p] or 0) >= ends[p] for p in ends)

    def alive() -> bool:
        return all(c.poll() is None for c in consumers)

    try:
        wait_until(lambda: group_size(group_id, bootstrap_servers=bootstrap) == 2 or not alive(), 120,
                   "both members in the group")
        joined = committed()
        wait_until(lambda: every_partition_past(joined) or not alive(), 120, "every partition worked on")
        assert alive(), [c.stderr.read() for c in consumers if c.poll() is not None and c.stderr]
        stream = threading.Thread(target=lambda: [publish(topic, sent[i:i + 40], key="account", partitions=4,
                                                          config=config) for i in range(first_part, len(sent), 40)])
        stream.start()  # the rest as a stream of small publishes, so the members have records in flight
        wait_until(lambda: sum(v or 0 for v in committed().values()) >= first_part + 200 or not alive(), 120,
                   "the stream being consumed")
        freeze_while_taken_over(*consumers, committed, every_partition_past)
        stream.join(300)
        ends = end_offsets(topic, bootstrap_servers=bootstrap)
        wait_until(lambda: committed() == ends or not alive(), 300, "every record committed")
        assert alive(), [c.stderr.read() for c in consumers if c.poll() is not None and c.stderr]
    finally:
        for c in consumers:
            c.kill()
            c.wait(30)
    assert_exact(bank, sent, cassandra_session, keyspace, group_id, topic)


def test_a_rebuild_rewrites_a_wrong_entity_from_its_events(topic_factory: Any, group_id: str, keyspace: str,
                                                           services_settings: Any, cassandra_session: Any) -> None:
    import rxcqrs

    bank = domain()
    topic = topic_factory(1)
    sent = commands(bank, accounts=5, per_account=20, seed=3)
    config = config_for(services_settings)
    publish(topic, sent, key="account", config=config)
    flow = rxcqrs.cqrs(topic, bank["AccountCommand"], aggregate=bank["accounts"], keyspace=keyspace, group=group_id,
                       create_schema=True, config=config)
    assert flow.until(count=len(sent), timeout=120)["committed"] == len(sent)
    store = rxcqrs.store(bank["accounts"], keyspace, config=config)
    expected = reference(bank, sent)
    victim = next(a for a, (s, _r, _e) in expected.items() if s is not None)
    # a wrong state written under the members' current epoch (say, by an older, buggy evolve)
    epoch = cassandra_session.execute(f"SELECT epoch FROM {keyspace}.rxcqrs_fences WHERE consumer_group = %s AND "
                                      "topic = %s", (group_id, topic)).one().epoch
    cassandra_session.execute(f"UPDATE {keyspace}.account USING TIMESTAMP {write_timestamp(epoch, 2**40 - 1)} "
                              "SET balance = -1 WHERE account = %s", (victim,))
    assert store.get(victim).balance == -1
    with pytest.raises(SchemaError, match="needs the consumer group and topic"):
        store.rebuild([victim])
    report = store.rebuild(group=group_id, topic=topic)  # a newer epoch than any member wrote with
    assert report.rewritten == 1 and report.details[0][0] == victim
    assert store.get(victim) == expected[victim][0]
    assert store.rebuild(group=group_id, topic=topic).rewritten == 0


def test_the_tables_are_checked_against_the_types(keyspace: str, cassandra_session: Any) -> None:
    bank = domain()
    store = DeciderStore(cassandra_session, keyspace, bank["accounts"])
    with pytest.raises(SchemaError, match=rf"{keyspace}.account does not exist: create the schema first"):
        store.check_schema()
    cassandra_session.execute(f"CREATE TABLE {keyspace}.account (account uuid PRIMARY KEY, balance text, "
                              "deleted boolean, seq bigint, applied map<int, bigint>)")
    with pytest.raises(SchemaError) as raised:
        store.create_schema()
    message = str(raised.value)
    assert message == (f"{keyspace}.account does not match account's types: balance is text (the types give bigint); "
                       "rxcqrs never alters a table: migrate it yourself, or use a new keyspace")
    assert [r.type for r in cassandra_session.execute(
        "SELECT type FROM system_schema.columns WHERE keyspace_name = %s AND table_name = 'account' "
        "AND column_name = 'balance'", (keyspace,))] == ["text"]  # never altered
    missing = DeciderStore(cassandra_session, "no_such_keyspace", bank["accounts"])
    with pytest.raises(SchemaError, match="keyspace 'no_such_keyspace' does not exist"):
        missing.check_schema()


# -- crash points: the engine's steps failed in turn on real Cassandra, then a redelivery ----------------------
COMMANDS = [(f"e{i % 4}", -1 if i % 5 == 4 else i) for i in range(40)]


class CrashingSession:
    """A real session whose requests of the ``dead`` write steps fail for good (a crash right after the step
    before them: nothing of them is written)."""

    def __init__(self, session: Any, store: DeciderStore[Any, Any, Any]) -> None:
        self.session, self.store, self.cluster = session, store, session.cluster
        self.dead: set[str] = set()
        self.queries: dict[bytes, str] = {}
        self.requests: list[tuple[Any, set[str]]] = []  # the batch requests sent: (type, their steps)

    def prepare(self, query: str) -> Any:
        prepared = self.session.prepare(query)
        self.queries[prepared.query_id] = query
        return prepared

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self.session.execute(*args, **kwargs)

    def _step(self, query: str) -> str:
        if query.startswith("SELECT"):
            return "read"
        table = query.split()[2 if query.startswith("INSERT") else 1].split(".")[-1]
        return {self.store.name: "state", self.store.log.table: "decisions", f"{self.store.name}_rejections":
                "decisions", self.store.log.table + "_buckets": "decisions"}[table]  # a decider's index: with them

    def execute_async(self, statement: Any, params: Any = None) -> Any:
        from cassandra import InvalidRequest
        from cassandra.query import BatchStatement

        from rxcqrs.testing.fake_cassandra import FakeResponseFuture

        if isinstance(statement, BatchStatement):
            queries = [self.queries[query_id] for _p, query_id, _v in statement._statements_and_parameters]
        else:
            queries = [statement.prepared_statement.query_string]
        if isinstance(statement, BatchStatement):
            self.requests.append((statement.batch_type, {self._step(q) for q in queries}))
        if self.dead & {self._step(q) for q in queries}:
            future = FakeResponseFuture()
            threading.Thread(target=future._complete, args=(False, InvalidRequest("crashed")), daemon=True).start()
            return future
        return self.session.execute_async(statement, params)


@pytest.mark.parametrize(("protocol", "atomic"), [("fenced", True), ("fenced", False), ("conditional", False)])
@pytest.mark.parametrize("crash_after", ["read", "decisions"])
def test_a_crash_after_any_step_and_a_redelivery_leave_the_decider_exact(keyspace: str, cassandra_session: Any,
                                                                         protocol: str, atomic: bool,
                                                                         crash_after: str) -> None:
    """A decider's batch writes twice: its decisions (rejections, events and their index), then its state.
    Step by step (and conditional): a crash before each write. Atomic: the one logged request of a batch holds
    every row, so any crash is before all of them or after all of them."""
    store = DeciderStore(cassandra_session, keyspace, counters, write_protocol=protocol)  # type: ignore[arg-type]
    store.create_schema()
    session = CrashingSession(cassandra_session, store)
    crashing = DeciderStore(session, keyspace, counters, write_protocol=protocol)  # type: ignore[arg-type]

    def feed() -> dict[Any, Any]:
        results: dict[Any, Any] = {}
        records = [Envelope(Add(*env.value), env.meta, env.ticket) for env in envelopes(COMMANDS, results=results)]
        sink = AggregateSink(session, crashing, write_protocol=protocol, keyspace=keyspace, group="g",  # type: ignore[arg-type]
                             backoff=Backoff(0.005, 0.2, 0.0), linger=0.01, atomic_batches=atomic)
        flow = run(reactivex.from_iterable(records), sink)
        assert flow.wait_quietly(60)
        return results

    session.dead = {"decisions", "state"} if crash_after == "read" else {"state"}
    assert any(error is not None for error in feed().values())
    if atomic:  # every batch's rows went together, as logged requests
        from cassandra.query import BatchType

        assert session.requests and all(kind == BatchType.LOGGED and "state" in steps
                                        for kind, steps in session.requests if steps != {"read"})
    session.dead = set()
    second = feed()
    assert all(error is None for error in second.values()), {e for e in second.values() if e is not None}
    sent = [Add(*c) for c in COMMANDS]
    for entity in {c.entity for c in sent}:
        mine = [c for c in sent if c.entity == entity]
        assert store.get(entity) == counters.run(mine)
        reference_events = [e for c in mine if not isinstance(a := counters.decided(None, c), Reject) for e in a]
        assert store.history(entity) == reference_events
        assert [r.reason for r in store.rejections(entity)] == ["negative"] * sum(c.amount < 0 for c in mine)


# -- the broadcast pipelines of the mission on an aggregate ---------------------------------------------------
# (made without this module's postponed annotations, which dataclasses-avroschema cannot resolve)
Tally = make_dataclass("Tally", [("entity", str), ("amount", int)], bases=(AvroModel,))


def _tally_evolve(state: Total | None, event: Added) -> Total | None:
    if event.amount < 0:  # the event-log branch logs refused commands too: they change nothing
        return state
    return Total((state.total if state else 0) + event.amount)


tallies = Decider("tallies", command=Tally, state=Total, event=Added, key="entity",
                  decide=lambda state, cmd: Reject("negative") if cmd.amount < 0 else Added(cmd.amount),
                  evolve=_tally_evolve, logged=lambda cmd: Added(cmd.amount))


@pytest.mark.parametrize("mode", ["parallel", "serial"])
def test_cqrs_runs_an_aggregate_in_the_broadcast_pipelines(mode: str, topic_factory: Any, group_id: str,
                                                           keyspace: str, services_settings: Any) -> None:
    import rxcqrs

    topic = topic_factory(2)
    sent = [Tally(f"e{i % 5}", -3 if i % 6 == 5 else i) for i in range(60)]
    config = config_for(services_settings)
    publish(topic, sent, key="entity", partitions=2, config=config)
    flow = rxcqrs.cqrs(topic, Tally, aggregate=tallies, keyspace=keyspace, group=group_id, mode=mode,  # type: ignore[arg-type]
                       create_schema=True, config=config)
    assert flow.until(count=len(sent), timeout=120)["committed"] == len(sent)
    store = rxcqrs.store(tallies, keyspace, config=config)
    for entity in {t.entity for t in sent}:
        mine = [t for t in sent if t.entity == entity]
        assert store.get(entity) == tallies.run(mine)
        assert len(store.history(entity)) == len(mine)  # every delivery logged, refused ones too
        assert [r.reason for r in store.rejections(entity)] == ["negative"] * sum(t.amount < 0 for t in mine)
    assert store.rebuild(group=group_id, topic=topic).rewritten == 0  # the log's fold is the state


def test_an_aggregate_without_logged_runs_batched_only(keyspace: str, services_settings: Any) -> None:
    import rxcqrs
    from rxcqrs.exceptions import ConfigError

    bank = domain()
    with pytest.raises(ConfigError, match=r"^Decider 'account' has no logged=...: the serial pipeline logs every "
                                          r"delivery without the state and needs it"):
        rxcqrs.cqrs("accounts", bank["AccountCommand"], aggregate=bank["accounts"], keyspace=keyspace, mode="serial",
                    config=config_for(services_settings))
