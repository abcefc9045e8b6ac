"""Cassandra stages, the event log, duplicates and compensation against the real node."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import reactivex
from cassandra import OperationTimedOut

from rxcqrs.acks import Ticket
from rxcqrs.backoff import Backoff
from rxcqrs.cassandra import (
    CassandraQuery,
    CassandraRetrySink,
    CassandraSettings,
    CassandraSink,
    Compensator,
    EventLog,
    Rebuilder,
    cassandra_bind,
    connect,
    create_table,
    prepare,
)
from rxcqrs.exceptions import ConfigError, IdentifierError, RetriesExhaustedError, StageError
from rxcqrs.messages import Envelope, RecordMetadata

FAST = Backoff(0.005, 5.0, 0.2)


def tracked(value: Any, partition: int, offset: int, results: dict) -> Envelope:  # type: ignore[type-arg]
    return Envelope(value, RecordMetadata("cmds", partition, offset, 0),
                    Ticket(lambda err: results.__setitem__((partition, offset), err)))


def test_two_concurrent_writers_with_optimistic_locking_end_exact(cassandra_session, keyspace) -> None:  # type: ignore[no-untyped-def]
    s = cassandra_session
    create_table(s, keyspace, "account", {"id": "uuid", "balance": "int", "version": "int"}, ["id"])
    account = uuid.uuid4()
    s.execute(f"INSERT INTO {keyspace}.account (id, balance, version) VALUES (%s, 0, 0)", (account,))
    read = prepare(s, f"SELECT balance, version FROM {keyspace}.account WHERE id = ?")
    update = prepare(s, f"UPDATE {keyspace}.account SET balance = ?, version = ? WHERE id = ? IF version = ?")

    def deposit(amount: int) -> Any:  # read the version, write only if nobody moved it meanwhile
        row = s.execute(read, (account,)).one()
        return update.bind((row.balance + amount, row.version + 1, account, row.version))

    results: dict = {}
    # two writers = two sinks whose commands hit the same row concurrently (different "partitions")
    sinks = [CassandraRetrySink(s, deposit, max_concurrency=4, backoff=FAST) for _ in range(2)]

    def feed(i: int) -> None:
        for n in range(50):
            sinks[i].on_next(tracked(1 + i, i, n, results))

    threads = [threading.Thread(target=feed, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for sink in sinks:
        sink.on_completed()
    assert all(v is None for v in results.values()) and len(results) == 100
    row = s.execute(read, (account,)).one()
    assert (row.balance, row.version) == (50 * 1 + 50 * 2, 100)
    assert sum(sink.executor.retries for sink in sinks) > 0, "the two writers did conflict"


def test_transient_failures_are_retried_and_a_permanent_one_nacks(cassandra_session, keyspace) -> None:  # type: ignore[no-untyped-def]
    s = cassandra_session
    create_table(s, keyspace, "kv", {"k": "int", "v": "int"}, ["k"])
    insert = prepare(s, f"INSERT INTO {keyspace}.kv (k, v) VALUES (?, ?)")
    calls: dict[int, int] = {}

    def flaky(k: int) -> Any:
        calls[k] = calls.get(k, 0) + 1
        if k % 4 == 0 and calls[k] <= 2:
            raise OperationTimedOut(f"injected timeout for {k}")
        return insert.bind((k, k * 10))

    results: dict = {}
    sink = CassandraRetrySink(s, flaky, backoff=FAST)
    for k in range(40):
        sink.on_next(tracked(k, k % 3, k, results))
    sink.on_completed()
    assert all(v is None for v in results.values())
    assert sorted((r.k, r.v) for r in s.execute(f"SELECT k, v FROM {keyspace}.kv")) == [(k, k * 10) for k in range(40)]
    assert sink.executor.retries == 10 * 2

    def broken(_k: int) -> Any:
        raise OperationTimedOut("cassandra is down")

    results.clear()
    sink = CassandraRetrySink(s, broken, backoff=Backoff(0.01, 0.08, 0.0))
    sink.on_next(tracked(1, 0, 0, results))
    sink.on_completed()
    error = results[(0, 0)]
    assert isinstance(error, RetriesExhaustedError) and "after 3 retries" in str(error)


def test_bind_and_sink_write_every_event_with_bounded_concurrency(cassandra_session, keyspace) -> None:  # type: ignore[no-untyped-def]
    s = cassandra_session
    create_table(s, keyspace, "events", {"id": "int", "body": "text"}, ["id"])
    prepared = prepare(s, f"INSERT INTO {keyspace}.events (id, body) VALUES (?, ?)")
    results: dict = {}
    sink = CassandraSink(s, max_concurrency=8)
    items = [tracked(i, 0, i, results) for i in range(500)]
    reactivex.from_iterable(items).pipe(cassandra_bind(prepared, lambda v, ps: ps.bind((v, f"event {v}")))
                                        ).subscribe(sink)
    assert sink.completed.is_set() and sink.in_flight == 0  # completion waited for every in-flight insert
    assert len(results) == 500 and all(v is None for v in results.values())
    assert s.execute(f"SELECT count(*) FROM {keyspace}.events").one()[0] == 500
    bad: dict = {}
    sink = CassandraSink(s)
    reactivex.from_iterable([tracked("x", 0, 0, bad)]).pipe(
        cassandra_bind(prepared, lambda v, ps: ps.bind((v, "wrong type for id")))).subscribe(sink)
    assert isinstance(bad[(0, 0)], StageError)


def test_query_pages_20000_rows_to_a_slow_consumer_holding_one_page(cassandra_session, keyspace) -> None:  # type: ignore[no-untyped-def]
    from cassandra.concurrent import execute_concurrent_with_args

    s = cassandra_session
    create_table(s, keyspace, "big", {"p": "int", "c": "int"}, ["p"], [("c", "ASC")])
    insert = prepare(s, f"INSERT INTO {keyspace}.big (p, c) VALUES (?, ?)")
    execute_concurrent_with_args(s, insert, [(i % 4, i) for i in range(20_000)], concurrency=100)
    query = CassandraQuery(s, f"SELECT p, c FROM {keyspace}.big", fetch_size=500)
    seen = []
    done = threading.Event()
    slow = threading.Event()

    def on_next(row: Any) -> None:
        seen.append(row.c)
        if len(seen) % 2000 == 0:
            slow.wait(0.05)  # a slow consumer now and then

    query.observable.subscribe(on_next, on_completed=done.set)
    assert done.wait(120)
    assert sorted(seen) == list(range(20_000))
    assert query.max_held <= 500 and query.metrics.get("pages") in (40, 41)  # (+1: a last, empty page)


def test_query_on_manual_demand_fetches_nothing_more_than_asked(cassandra_session, keyspace) -> None:  # type: ignore[no-untyped-def]
    s = cassandra_session
    create_table(s, keyspace, "small", {"p": "int", "c": "int"}, ["p"], [("c", "ASC")])
    for c in range(30):
        s.execute(f"INSERT INTO {keyspace}.small (p, c) VALUES (0, %s)", (c,))
    query = CassandraQuery(s, f"SELECT c FROM {keyspace}.small WHERE p = 0", fetch_size=10, demand="manual")
    rows: list[int] = []
    query.observable.subscribe(lambda r: rows.append(r.c))
    query.request(12)
    from tests.helpers import wait_until

    wait_until(lambda: len(rows) == 12)
    assert query.metrics.get("pages") == 2  # the second page only once the 11th row was asked for
    query.request(100)
    assert query.done.wait(10) and rows == list(range(30))


def _log(keyspace: str) -> EventLog:
    return EventLog(keyspace, "account_event_log", entity="account", payload={"action": "text", "amount": "int"},
                    bucket="day")


def _log_event(session: Any, log: EventLog, account: uuid.UUID, event_id: uuid.UUID, when: datetime,
               action: str, amount: int, offset: int) -> None:
    session.execute(log.bind(session, account, event_id, when, {"action": action, "amount": amount},
                             RecordMetadata("cmds", 0, offset, int(when.timestamp() * 1000))))


def test_duplicates_query_finds_exactly_the_duplicates_and_compensation_is_idempotent(cassandra_session,  # type: ignore[no-untyped-def]
                                                                                     keyspace) -> None:
    s = cassandra_session
    log = _log(keyspace)
    log.create(s)
    create_table(s, keyspace, "adjustments", {"account": "uuid", "event_id": "uuid", "amount": "int"},
                 ["account"], [("event_id", "ASC")])
    a, b = uuid.uuid4(), uuid.uuid4()
    day0 = datetime(2026, 11, 20, 23, 59, tzinfo=timezone.utc)
    events = []  # (account, event id, time, action, amount, times logged)
    for i, (acct, action, amount, times) in enumerate([(a, "deposit", 5, 1), (a, "deposit", 7, 2),
                                                       (a, "withdraw", 3, 3), (b, "deposit", 11, 1),
                                                       (b, "withdraw", 2, 2), (b, "deposit", 1, 4)]):
        events.append((acct, uuid.uuid4(), day0 + timedelta(minutes=i), action, amount, times))
    for offset, (acct, eid, when, action, amount, times) in enumerate(events):
        for _ in range(times):
            _log_event(s, log, acct, eid, when, action, amount, offset)

    expected = {(acct, eid): times for acct, eid, _, _, _, times in events if times > 1}
    assert {(d.entity_id, d.event_id): d.times_logged for d in log.duplicates(s)} == expected
    assert {(d.entity_id, d.event_id): d.times_logged for d in log.duplicates(s, a)} == {
        k: v for k, v in expected.items() if k[0] == a}
    # a time range spanning the day boundary (two buckets) for one entity, and for all
    start, end = day0 + timedelta(minutes=2), day0 + timedelta(minutes=5)
    assert {d.event_id for d in log.duplicates(s, b, start, end)} == {events[4][1]}
    assert {d.event_id for d in log.duplicates(s, None, start, end)} == {events[2][1], events[4][1]}
    assert len(list(log.events(s, a))) == 6 and len(log.distinct_events(s, a)) == 3

    insert = prepare(s, f"INSERT INTO {keyspace}.adjustments (account, event_id, amount) VALUES (?, ?, ?)")

    def corrective(dup: Any, rows: Any, extra: int) -> Any:  # undo `extra` surplus applications, any sign
        sign = 1 if rows[0].payload["action"] == "deposit" else -1
        return [insert.bind((dup.entity_id, dup.event_id, -extra * sign * rows[0].payload["amount"]))]

    compensator = Compensator(s, log, corrective)
    compensator.create()
    first = compensator.run(log.duplicates(s))
    second = compensator.run(log.duplicates(s))
    assert first.compensated == 4 and second.compensated == 0 and second.already_done == 4

    def balance(acct: uuid.UUID) -> int:  # as applied once per logging, plus the compensations
        applied = sum((1 if act == "deposit" else -1) * amt * times
                      for ac, _, _, act, amt, times in events if ac == acct)
        adjust = sum(r.amount for r in s.execute(f"SELECT amount FROM {keyspace}.adjustments WHERE account = %s",
                                                 (acct,)))
        return applied + adjust

    assert balance(a) == 5 + 7 - 3 and balance(b) == 11 - 2 + 1


def test_rebuild_rewrites_disagreeing_entities_from_the_fold_once(cassandra_session, keyspace) -> None:  # type: ignore[no-untyped-def]
    s = cassandra_session
    log = _log(keyspace)
    log.create(s)
    create_table(s, keyspace, "account", {"id": "uuid", "balance": "int", "version": "int"}, ["id"])
    a, b = uuid.uuid4(), uuid.uuid4()
    now = datetime(2026, 11, 26, 12, tzinfo=timezone.utc)
    for offset, (acct, amount) in enumerate([(a, 5), (a, 7), (b, 1)]):
        eid = uuid.uuid4()
        for _ in range(2 if offset == 1 else 1):  # a's second event was logged twice
            _log_event(s, log, acct, eid, now + timedelta(seconds=offset), "deposit", amount, offset)
    # a's state applied the duplicated event twice; b is right
    s.execute(f"INSERT INTO {keyspace}.account (id, balance, version) VALUES (%s, 19, 3)", (a,))
    s.execute(f"INSERT INTO {keyspace}.account (id, balance, version) VALUES (%s, 1, 1)", (b,))
    read = prepare(s, f"SELECT balance, version FROM {keyspace}.account WHERE id = ?")
    write = prepare(s, f"UPDATE {keyspace}.account SET balance = ?, version = ? WHERE id = ? IF version = ?")

    def fold(events: Any) -> tuple[int, int]:
        return (sum(e.payload["amount"] for e in events), len(events))

    def current(acct: uuid.UUID) -> Any:
        row = s.execute(read, (acct,)).one()
        return ((row.balance, row.version), row.version) if row else None

    rebuilder = Rebuilder(s, log, fold=fold, read=current,
                          write=lambda acct, state, version: write.bind((state[0], state[1], acct, version)))
    rebuilder.create()
    report = rebuilder.run()
    assert (report.examined, report.rewritten, report.unchanged) == (2, 1, 1)
    assert current(a)[0] == (12, 2)
    again = rebuilder.run()
    assert again.rewritten == 0 and again.unchanged == 2


def test_identifiers_are_validated_before_any_cql(cassandra_session, keyspace) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IdentifierError, match="DROP"):
        create_table(cassandra_session, keyspace, "x; DROP KEYSPACE y", {"a": "int"}, ["a"])
    with pytest.raises(IdentifierError):
        EventLog("x; DROP KEYSPACE y")
    with pytest.raises(IdentifierError):
        CassandraSettings(keyspace="ks; DROP KEYSPACE ks")
    assert cassandra_session.execute("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
                                     (keyspace,)).one() is not None


def test_settings_redact_secrets_and_unreachable_is_a_clear_error() -> None:
    settings = CassandraSettings(username="app", password="hunter2", port=1, connect_timeout=1)
    assert "hunter2" not in repr(settings) and "***" in repr(settings)
    with pytest.raises(ConfigError):
        CassandraSettings(username="only-user")
    with pytest.raises(StageError, match="cannot connect to Cassandra at 127.0.0.1:1"):
        connect(CassandraSettings(port=1, connect_timeout=1))


def test_conditional_and_bound_query_pass_results_on(cassandra_session, keyspace) -> None:  # type: ignore[no-untyped-def]
    from rxcqrs.cassandra import cassandra_bound_query, cassandra_conditional

    s = cassandra_session
    create_table(s, keyspace, "users", {"name": "text", "email": "text"}, ["name"])
    insert = prepare(s, f"INSERT INTO {keyspace}.users (name, email) VALUES (?, ?) IF NOT EXISTS")
    results: dict = {}
    statements = [tracked(insert.bind(("ada", "ada@x")), 0, 0, results),
                  tracked(insert.bind(("ada", "other@x")), 0, 1, results),  # rejected: the row exists
                  tracked(insert.bind(("bob", "bob@x")), 1, 0, results)]
    out: list = []
    done = threading.Event()
    reactivex.from_iterable(statements).pipe(cassandra_conditional(s)).subscribe(out.append, on_completed=done.set)
    assert done.wait(30)
    by_offset = {(e.meta.partition, e.meta.offset): e.value for e in out}
    assert by_offset[(0, 0)] is None and by_offset[(1, 0)] is None
    assert by_offset[(0, 1)].email == "ada@x"  # the row that prevented the write

    select = prepare(s, f"SELECT email FROM {keyspace}.users WHERE name = ?")
    out.clear()
    done.clear()
    reactivex.from_iterable([tracked(n, 0, i, results) for i, n in enumerate(["bob", "nobody", "ada"])]).pipe(
        cassandra_bound_query(s, select, lambda name, ps: ps.bind((name,)))).subscribe(out.append,
                                                                                       on_completed=done.set)
    assert done.wait(30)
    assert [[r.email for r in e.value] for e in out] == [["bob@x"], [], ["ada@x"]]  # partition order kept


def test_statements_go_in_unlogged_batches_per_partition_capped_in_rows(cassandra_session, keyspace) -> None:  # type: ignore[no-untyped-def]
    from cassandra.query import BatchStatement

    from rxcqrs.cassandra.statement_batches import group_statements

    s = cassandra_session
    create_table(s, keyspace, "events", {"k": "int", "n": "int"}, ["k"], [("n", "ASC")])
    insert = prepare(s, f"INSERT INTO {keyspace}.events (k, n) VALUES (?, ?)")
    statements = [insert.bind((k, n)) for k, n in [(1, n) for n in range(7)] + [(2, 0), (1, 7)]]
    grouped = group_statements(statements, 3, 100_000)
    assert [len(b._statements_and_parameters) if isinstance(b, BatchStatement) else 1 for b in grouped] == [3, 3, 2, 1]
    for statement in grouped:
        s.execute(statement)
    assert sorted((r.k, r.n) for r in s.execute(f"SELECT k, n FROM {keyspace}.events")) == sorted(
        [(1, n) for n in range(8)] + [(2, 0)])
