"""The Cassandra executor on a fake session: per-partition order, bounded concurrency, retries, give-up."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from cassandra import OperationTimedOut, WriteTimeout
from cassandra.protocol import SyntaxException

from rxcqrs.acks import Ticket
from rxcqrs.backoff import Backoff
from rxcqrs.cassandra import CassandraExecutor, CassandraRetrySink, CassandraSink, cassandra_retry_flow
from rxcqrs.cassandra.identifiers import cql_type, identifier, qualified
from rxcqrs.exceptions import IdentifierError, NotAppliedError, RetriesExhaustedError
from rxcqrs.messages import Envelope, RecordMetadata
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
        time.sleep(0.0005)
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


def test_transient_errors_and_conflicts_are_retried_by_calling_the_function_again() -> None:
    attempts: dict[int, int] = {}

    def handler(query: Any, params: Any) -> Any:
        n = attempts[params] = attempts.get(params, 0) + 1
        if params % 3 == 0 and n <= 2:
            raise OperationTimedOut("client timeout")
        if params % 3 == 1 and n == 1:
            return lwt_row(False)  # an optimistic-lock conflict
        return lwt_row(True)

    session = FakeSession(handler)
    calls: list[int] = []
    results: dict = {}

    def command(value: int) -> Any:
        calls.append(value)
        return ("UPDATE ... IF version = ?", value)

    sink = CassandraRetrySink(session, command, backoff=FAST)
    for i in range(9):
        sink.on_next(env(i, 0, i, results))
    sink.on_completed()
    assert all(v is None for v in results.values()) and len(results) == 9
    assert calls.count(0) == 3 and calls.count(1) == 2 and calls.count(2) == 1
    assert sink.executor.retries == 3 * 2 + 3 * 1


def test_a_permanent_failure_nacks_after_the_backoff_gives_up() -> None:
    session = FakeSession(lambda q, p: (_ for _ in ()).throw(WriteTimeout("slow", write_type=0)))
    results: dict = {}
    sink = CassandraRetrySink(session, lambda v: ("INSERT", v), backoff=Backoff(0.001, 0.004, 0.0))
    sink.on_next(env(0, 0, 1, results))
    sink.on_completed()
    error = results[(0, 0)]
    assert isinstance(error, RetriesExhaustedError) and "gave up after 2 retries" in str(error)
    assert isinstance(error.__cause__, WriteTimeout)


def test_a_conflict_that_never_clears_is_reported_as_not_applied() -> None:
    session = FakeSession(lambda q, p: lwt_row(False))
    results: dict = {}
    sink = CassandraRetrySink(session, lambda v: ("UPDATE", v), backoff=Backoff(0.001, 0.004, 0.0))
    sink.on_next(env(0, 0, 1, results))
    sink.on_completed()
    assert isinstance(results[(0, 0)].__cause__, NotAppliedError)


def test_a_non_transient_error_nacks_at_once() -> None:
    session = FakeSession(lambda q, p: (_ for _ in ()).throw(SyntaxException(2000, "bad cql", None)))
    results: dict = {}
    sink = CassandraRetrySink(session, lambda v: ("INSERT", v), backoff=FAST)
    sink.on_next(env(0, 0, 1, results))
    sink.on_completed()
    assert "bad cql" in str(results[(0, 0)]) and sink.executor.retries == 0


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
    assert results[(0, 1)] is not None  # outcome unknown, not idempotent: nack, never a blind retry


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
