"""The Cassandra executor on a fake session: per-partition order, bounded concurrency, retries, give-up."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from cassandra import InvalidRequest, OperationTimedOut, Unauthorized, Unavailable, WriteTimeout
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionShutdown
from cassandra.protocol import SyntaxException

from rxcqrs.acks import Ticket
from rxcqrs.backoff import Backoff
from rxcqrs.cassandra import CassandraExecutor, CassandraRetrySink, CassandraSink, cassandra_retry_flow
from rxcqrs.cassandra.identifiers import cql_type, identifier, qualified
from rxcqrs.exceptions import (
    IdentifierError,
    NotAppliedError,
    PermanentStageError,
    RetriesExhaustedError,
    UnknownOutcomeError,
    is_permanent,
)
from rxcqrs.messages import Envelope, RecordMetadata
from rxcqrs.testing import VirtualClock, wait_until
from rxcqrs.testing.fake_cassandra import FakeSession, lwt_row

FAST = Backoff(0.001, 0.05, 0.0)


def env(partition: int, offset: int, value: Any, results: dict) -> Envelope:  # type: ignore[type-arg]
    return Envelope(value, RecordMetadata("t", partition, offset, 0),
                    Ticket(lambda err, k=(partition, offset): results.__setitem__(k, err)))


def test_one_partition_at_a_time_in_order_and_bounded_concurrency() -> None:
    lock = threading.Lock()
    running: dict[int, int] = {}
    peak = {"all": 0}
    order: dict[int, list[int]] = {}

    def handler(query: Any, params: Any) -> None:
        partition, offset = params
        with lock:
            running[partition] = running.get(partition, 0) + 1
            assert running[partition] == 1, "two commands of one partition in flight"
            peak["all"] = max(peak["all"], sum(running.values()))
            order.setdefault(partition, []).append(offset)
        threading.Event().wait(0.0005)  # a request on the wire for a moment: others may overlap it
        with lock:
            running[partition] -= 1

    session = FakeSession(handler)
    results: dict = {}
    sink = CassandraRetrySink(session, lambda cmd: ("UPDATE", cmd), max_concurrency=3, backoff=FAST)
    for offset in range(40):
        for partition in range(5):
            sink.on_next(env(partition, offset, (partition, offset), results))
    sink.on_completed()
    assert len(results) == 200 and all(v is None for v in results.values())
    assert all(order[p] == list(range(40)) for p in range(5))
    assert peak["all"] <= 3


def counting_env(partition: int, offset: int, value: Any, results: dict, counts: dict) -> Envelope:  # type: ignore[type-arg]
    ticket = Ticket(lambda err, k=(partition, offset): results.__setitem__(k, err),
                    lambda name, n: counts.__setitem__(name, counts.get(name, 0) + n))
    return Envelope(value, RecordMetadata("t", partition, offset, 0), ticket)


def test_transient_errors_and_conflicts_are_retried_by_calling_the_function_again() -> None:
    attempts: dict[int, int] = {}

    def handler(query: Any, params: Any) -> Any:
        n = attempts[params] = attempts.get(params, 0) + 1
        if params % 3 == 0 and n <= 2:
            raise Unavailable("replicas down")  # nothing was written: always safe to retry
        if params % 3 == 1 and n == 1:
            return lwt_row(False)  # an optimistic-lock conflict
        return lwt_row(True)

    session = FakeSession(handler)
    calls: list[int] = []
    results: dict = {}
    counts: dict = {}

    def command(value: int) -> Any:
        calls.append(value)
        return ("UPDATE ... IF version = ?", value)

    clock = VirtualClock()
    sink = CassandraRetrySink(session, command, backoff=Backoff(), clock=clock)  # 100 ms, doubling, up to 30 s
    for i in range(9):
        sink.on_next(counting_env(i, 0, i, results, counts))
    took = clock.advance_until(lambda: len(results) == 9, step=0.05, what="every command applied")
    sink.on_completed()
    assert took >= 0.1 + 0.2  # two backoff delays passed on the clock (the wall did not wait for them)
    assert all(v is None for v in results.values()) and len(results) == 9
    assert calls.count(0) == 3 and calls.count(1) == 2 and calls.count(2) == 1
    assert sink.executor.retries == 3 * 2 + 3 * 1
    assert counts["cassandra_transient"] == 6 and counts["cassandra_not_applied"] == 3
    assert counts["cassandra_applied"] == 9


def test_transient_errors_give_up_when_the_backoff_reaches_its_maximum() -> None:
    session = FakeSession(lambda q, p: (_ for _ in ()).throw(NoHostAvailable("down", {})))
    results: dict = {}
    clock = VirtualClock()
    sink = CassandraRetrySink(session, lambda v: ("INSERT", v), backoff=Backoff(random_factor=0.0), clock=clock)
    sink.on_next(env(0, 0, 1, results))
    took = clock.advance_until(lambda: (0, 0) in results, step=0.5, what="the command given up")
    sink.on_completed()
    error = results[(0, 0)]
    # 0.1, 0.2, ..., 25.6 s: nine retries, about 51 s of the clock; the tenth delay would reach the maximum
    assert isinstance(error, RetriesExhaustedError) and "gave up on t/0@0 after 9 retries" in str(error)
    assert took >= 51.1  # every delay passed on the clock (the wall did not wait for them)
    assert isinstance(error.__cause__, NoHostAvailable) and not is_permanent(error)


def test_a_conflict_that_never_clears_is_reported_as_not_applied() -> None:
    session = FakeSession(lambda q, p: lwt_row(False))
    results: dict = {}
    sink = CassandraRetrySink(session, lambda v: ("UPDATE", v), backoff=Backoff(0.001, 0.004, 0.0))
    sink.on_next(env(0, 0, 1, results))
    sink.on_completed()
    assert isinstance(results[(0, 0)].__cause__, NotAppliedError)


@pytest.mark.parametrize("error", [SyntaxException(2000, "bad cql", None), InvalidRequest("unconfigured table x"),
                                   Unauthorized("no"), ZeroDivisionError("a bug in the command")])
def test_a_permanent_error_nacks_at_once_as_permanent(error: BaseException) -> None:
    calls: list[int] = []

    def command(v: int) -> Any:
        calls.append(v)
        if isinstance(error, ZeroDivisionError):
            raise error
        return ("INSERT", v)

    session = FakeSession(lambda q, p: (_ for _ in ()).throw(error))
    results: dict = {}
    counts: dict = {}
    sink = CassandraRetrySink(session, command, backoff=FAST)
    sink.on_next(counting_env(0, 7, 1, results, counts))
    sink.on_completed()
    failure = results[(0, 7)]
    assert isinstance(failure, PermanentStageError) and is_permanent(failure)
    assert "t/0@7" in str(failure) and str(error) in str(failure)
    assert calls == [1] and sink.executor.retries == 0 and counts["cassandra_permanent"] == 1


@pytest.mark.parametrize("error", [WriteTimeout("slow", write_type=0), OperationTimedOut("client timeout"),
                                   ConnectionShutdown("connection lost")])
def test_an_unknown_outcome_never_re_runs_a_command_that_cannot_find_out(error: BaseException) -> None:
    calls: list[int] = []
    session = FakeSession(lambda q, p: (_ for _ in ()).throw(error))
    results: dict = {}
    counts: dict = {}
    sink = CassandraRetrySink(session, lambda v: calls.append(v) or ("UPDATE ... IF", v), backoff=FAST)
    sink.on_next(counting_env(0, 0, 1, results, counts))
    sink.on_completed()
    assert isinstance(results[(0, 0)], UnknownOutcomeError) and is_permanent(results[(0, 0)])
    assert calls == [1] and counts["cassandra_unknown"] == 1


def test_an_unknown_outcome_is_resolved_by_reading() -> None:
    """applied: done, not re-run; not applied: run again; cannot tell: recorded for the query side."""
    sent: list[Any] = []

    def handler(query: Any, params: Any) -> Any:
        sent.append((query, params))
        if query == "UPDATE" and sum(1 for q, p in sent if q == "UPDATE" and p == params) == 1:
            raise WriteTimeout("slow", write_type=5)  # CAS
        return lwt_row(True)

    answers = {0: True, 1: False, 2: None}
    resolved: list[int] = []

    def resolve(v: int) -> bool | None:
        resolved.append(v)
        return answers[v]

    session = FakeSession(handler)
    results: dict = {}
    counts: dict = {}
    sink = CassandraRetrySink(session, lambda v: ("UPDATE", v), backoff=FAST, resolve=resolve,
                              record_unknown=lambda v, error: ("RECORD", (v, type(error).__name__)))
    for v in range(3):
        sink.on_next(counting_env(v, 0, v, results, counts))
    sink.on_completed()
    assert results == {(0, 0): None, (1, 0): None, (2, 0): None}
    assert sorted(resolved) == [0, 1, 2]
    assert [p for q, p in sent if q == "UPDATE"].count(0) == 1  # applied: never sent again
    assert [p for q, p in sent if q == "UPDATE"].count(1) == 2  # not applied: run again
    assert ("RECORD", (2, "WriteTimeout")) in sent
    assert counts["unknown_resolved_applied"] == 1 and counts["unknown_resolved_not_applied"] == 1
    assert counts["unknown_recorded"] == 1 and counts["cassandra_unknown"] == 3


def test_an_unknown_outcome_that_cannot_be_resolved_or_recorded_stops_the_flow() -> None:
    def handler(query: Any, params: Any) -> Any:
        raise WriteTimeout("slow", write_type=5)

    session = FakeSession(handler)
    results: dict = {}

    def resolve(v: int) -> bool | None:
        raise Unavailable("still down")

    sink = CassandraRetrySink(session, lambda v: ("UPDATE", v), backoff=Backoff(0.001, 0.004, 0.0),
                              resolve=resolve)
    sink.on_next(env(0, 0, 1, results))
    sink.on_completed()
    assert isinstance(results[(0, 0)], UnknownOutcomeError) and "resolving it kept failing" in str(results[(0, 0)])


def test_timeouts_are_retried_only_for_idempotent_statements() -> None:
    class Statement:
        def __init__(self, idempotent: bool) -> None:
            self.is_idempotent = idempotent

    seen: dict[int, int] = {}

    def handler(query: Any, params: Any) -> None:
        seen[id(query)] = seen.get(id(query), 0) + 1
        if seen[id(query)] == 1:
            raise WriteTimeout("timeout", write_type=0)

    session = FakeSession(handler)
    results: dict = {}
    sink = CassandraSink(session, backoff=FAST)
    sink.on_next(env(0, 0, Statement(True), results))
    sink.on_next(env(0, 1, Statement(False), results))
    sink.on_completed()
    assert results[(0, 0)] is None
    assert isinstance(results[(0, 1)], UnknownOutcomeError)  # not idempotent: never a blind retry


def test_abandon_fails_what_has_not_started_and_lets_the_wire_finish() -> None:
    release = threading.Event()
    session = FakeSession(lambda q, p: release.wait(5) and None)
    results: dict = {}
    sink = CassandraSink(session, max_concurrency=1, backoff=FAST)
    for offset in range(5):
        sink.on_next(env(0, offset, ("INSERT", offset), results))
    started = time.monotonic()
    sink.abandon_timeout = 0.2
    sink.on_error(RuntimeError("the source stopped"))
    assert time.monotonic() - started < 2 and sink.completed.is_set()
    assert sorted(results) == [(0, 1), (0, 2), (0, 3), (0, 4)]  # the first one is still on the wire
    assert all("abandoned at shutdown" in str(e) for e in results.values())
    release.set()
    wait_until(lambda: (0, 0) in results, 5, "the request on the wire finished")


def test_synchronous_failures_do_not_recurse() -> None:
    class Closed:
        def execute_async(self, query: Any, params: Any) -> Any:
            raise RuntimeError("session closed")

    executor = CassandraExecutor(Closed(), max_concurrency=1, backoff=FAST)
    failures = []
    for _ in range(3000):
        executor.submit(None, lambda: "INSERT", lambda j, r: None, lambda j, e: failures.append(e), key="one")
    assert executor.wait_idle(10) and len(failures) == 3000


def test_the_retry_flow_passes_envelopes_on_in_partition_order_after_success() -> None:
    import reactivex

    session = FakeSession(lambda q, p: None)
    results: dict = {}
    items = [env(i % 2, i // 2, i, results) for i in range(20)]
    out: list[Envelope] = []  # type: ignore[type-arg]
    done = threading.Event()
    reactivex.from_iterable(items).pipe(cassandra_retry_flow(session, lambda v: ("UPDATE", v), backoff=FAST)
                                        ).subscribe(out.append, on_completed=done.set)
    assert done.wait(5)
    for p in (0, 1):
        assert [e.meta.offset for e in out if e.meta.partition == p] == list(range(10))
    assert results == {}  # the flow does not settle: whatever comes next does


@pytest.mark.parametrize("bad", ["x; DROP KEYSPACE y", "1abc", "", "a" * 49, "ks.table", "select", 'x"y', None])
def test_unsafe_identifiers_are_refused(bad: Any) -> None:
    with pytest.raises(IdentifierError):
        identifier(bad)


def test_identifiers_and_types_that_are_fine() -> None:
    assert identifier("Shopping_Cart") == "shopping_cart"
    assert qualified("ks1", "t") == "ks1.t"
    assert cql_type("map<uuid, int>") == "map<uuid,int>"
    assert cql_type("frozen<list<text>>") == "frozen<list<text>>"
    with pytest.raises(IdentifierError):
        cql_type("int); DROP TABLE x; --")
    with pytest.raises(IdentifierError):
        cql_type("map<int>")
