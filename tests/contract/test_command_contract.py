"""The command-stage contract: every behaviour, against every command stage (the batched sink, the state
sink of a parallel broadcast beside an event-log branch, the serial flow before an event-log sink), with
both write protocols, on the in-memory fake and on real Cassandra."""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

import pytest
import reactivex

from rxcqrs import run
from rxcqrs.backoff import Backoff
from rxcqrs.cassandra import CassandraSink
from rxcqrs.cassandra.aggregate import STEPS, AggregateSink
from rxcqrs.cassandra.aggregate_flow import aggregate_flow
from rxcqrs.cassandra.fence import FIRST_EPOCH, write_timestamp
from rxcqrs.exceptions import PermanentStageError
from rxcqrs.messages import Envelope
from rxcqrs.operators import branch, broadcast, map_envelope
from tests.contract.commands import Backend, CassandraBackend, FakeBackend
from tests.counters import envelopes, fold, partition_of
from tests.helpers import wait_until

pytestmark = pytest.mark.contract

FAST = Backoff(0.005, 0.2, 0.0)
STAGES = ("batched", "parallel", "serial")
PROTOCOLS = ("fenced", "conditional")


@pytest.fixture(params=["fake", "cassandra"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    made: Backend = FakeBackend() if request.param == "fake" else CassandraBackend(
        request.getfixturevalue("cassandra_session"))
    try:
        yield made
    finally:
        made.close()


class Run:
    """One pipeline of ``stage`` over the backend, fed the given envelopes; the records' fates recorded."""

    def __init__(self, backend: Backend, stage: str, protocol: str, **options: Any) -> None:
        self.backend = backend
        engine = {"write_protocol": protocol, "backoff": FAST, "group": "g", "linger": 0.01, **options}
        if backend.fences is not None:
            engine["fences"] = backend.fences
        else:
            engine["keyspace"] = backend.aggregate.keyspace
        self.engine_options = engine
        self.stage = stage

    def stages(self) -> tuple[list[Any], AggregateSink[Any, Any, Any]]:
        b = self.backend
        if self.stage == "batched":
            sink = AggregateSink(b.session, b.aggregate, **self.engine_options)
            return [sink], sink
        log = map_envelope(lambda env: b.aggregate.events(env.value[0], [(env.value, env.meta)])[0])
        if self.stage == "parallel":
            sink = AggregateSink(b.session, b.aggregate, log_events=False, **self.engine_options)
            events = CassandraSink(b.session, name="event-log", backoff=FAST)
            return [broadcast(sink, branch(log, events))], sink
        flow = aggregate_flow(b.session, b.aggregate, **self.engine_options)
        return [flow, log, CassandraSink(b.session, name="event-log", backoff=FAST)], flow.engine  # type: ignore[attr-defined]

    def feed(self, commands: list[tuple[str, int]], first: int = 0) -> dict[Any, Any]:
        """Run the pipeline over ``commands`` to its end; the fate of each record by (partition, offset)."""
        results: dict[Any, Any] = {}
        stages, self.engine = self.stages()
        flow = run(reactivex.from_iterable(envelopes(commands, first=first, results=results)), *stages)
        assert flow.wait_quietly(60)
        return results


def first_times(n: int, fault: str, step: str | None = None) -> Callable[[str], str | None]:
    """A fault for the first ``n`` requests (of ``step``, or of any step)."""
    left = [n]

    def inject(at: str) -> str | None:
        if left[0] > 0 and (step is None or at == step):
            left[0] -= 1
            return fault
        return None

    return inject


def exact(backend: Backend, commands: list[tuple[str, int]]) -> None:
    expected = fold(commands)
    assert {e: backend.state(e) for e in expected} == {
        e: (v if any(c[0] == e and c[1] >= 0 for c in commands) else None) for e, v in expected.items()}


COMMANDS = [(f"e{i % 3}", -1 if i % 5 == 4 else i) for i in range(30)]
parametrized = pytest.mark.parametrize(("stage", "protocol"), [(s, p) for s in STAGES for p in PROTOCOLS])


@parametrized
def test_every_command_applied_once_logged_and_rejections_recorded(backend: Backend, stage: str,
                                                                   protocol: str) -> None:
    results = Run(backend, stage, protocol).feed(COMMANDS)
    assert len(results) == len(COMMANDS) and all(v is None for v in results.values())
    exact(backend, COMMANDS)
    assert sorted(backend.logged()) == sorted((env.value[0], env.meta.partition, env.meta.offset)
                                              for env in envelopes(COMMANDS))
    assert backend.rejections() == {(env.value[0], env.meta.offset) for env in envelopes(COMMANDS) if env.value[1] < 0}


@parametrized
def test_a_redelivery_is_skipped_and_logged_again(backend: Backend, stage: str, protocol: str) -> None:
    Run(backend, stage, protocol).feed(COMMANDS[:20])
    results = Run(backend, stage, protocol).feed(COMMANDS)  # a restart: the first 20 delivered again
    assert all(v is None for v in results.values())
    exact(backend, COMMANDS)
    assert len(backend.logged()) == len(COMMANDS) + 20


@parametrized
def test_an_answer_lost_after_the_state_write_applied_ends_exact(backend: Backend, stage: str, protocol: str) -> None:
    backend.fault = first_times(3, "lost", "state")
    results = Run(backend, stage, protocol).feed(COMMANDS)
    assert all(v is None for v in results.values())
    exact(backend, COMMANDS)


@parametrized
def test_a_transient_outage_is_retried_until_it_ends(backend: Backend, stage: str, protocol: str) -> None:
    backend.fault = first_times(4, "refused")
    results = Run(backend, stage, protocol).feed(COMMANDS)
    assert all(v is None for v in results.values())
    exact(backend, COMMANDS)


@parametrized
def test_a_failed_record_holds_back_its_entitys_later_records_until_delivered_again(
        backend: Backend, stage: str, protocol: str) -> None:
    """An entity records the highest offset it applied per partition: had a later record been applied while an
    earlier one failed (its retries exhausted), the earlier one would look applied when delivered again."""
    commands = [("e0", 1), ("e0", 2), ("e0", 4)]
    backend.fault = first_times(7, "refused", "state")  # more attempts than FAST allows: the first batch fails
    results = Run(backend, stage, protocol, max_batch=1).feed(commands)
    home = partition_of("e0", 3)
    assert [results[(home, offset)] is None for offset in range(3)] == [False, False, False]
    assert backend.state("e0") is None
    results = Run(backend, stage, protocol, max_batch=1).feed(commands)  # the redelivery
    assert all(v is None for v in results.values())
    exact(backend, commands)


@parametrized
def test_a_permanent_error_fails_the_records_at_once_without_retrying(backend: Backend, stage: str,
                                                                      protocol: str) -> None:
    backend.fault = lambda step: "permanent" if step == "state" else None
    results = Run(backend, stage, protocol).feed(COMMANDS[:6])
    assert results and all(isinstance(v, PermanentStageError) for v in results.values())
    assert all(backend.state(e) is None for e, _a in COMMANDS[:6])


def test_a_conditional_conflict_decides_again_on_the_fresh_state(backend: Backend) -> None:
    Run(backend, "batched", "conditional").feed(COMMANDS[:3])
    backend.bump("e0", 1000)  # another writer moves e0
    later = [("e0", 5)]
    Run(backend, "batched", "conditional").feed(later, first=1)
    assert backend.state("e0") == 1005


@pytest.mark.parametrize("stage", STAGES)
def test_a_zombies_write_with_an_older_epoch_loses(backend: Backend, stage: str) -> None:
    """A writer whose epoch is older (the zombie) writes a later state after the new owner wrote: the new
    owner's state stays."""
    Run(backend, stage, "fenced").feed([("e0", 1)])  # the old owner: the first epoch
    Run(backend, stage, "fenced").feed([("e0", 1), ("e0", 2)])  # the new owner, a newer epoch: 3 at offset 1
    late = backend.aggregate.write("e0", 999, {0: 7}, write_timestamp(FIRST_EPOCH, 7))  # the zombie's, later
    _execute(backend, late)
    assert backend.state("e0") == 3


def _execute(backend: Backend, statement: Any) -> None:
    done = threading.Event()
    future = backend.session.execute_async(statement)
    future.add_callbacks(lambda _r: done.set(), lambda _e: done.set())
    assert done.wait(30)


@parametrized
def test_shutdown_with_work_in_flight_abandons_it_unacked(backend: Backend, stage: str, protocol: str) -> None:
    backend.fault = lambda step: "refused"  # an outage: nothing can be written
    pipeline = Run(backend, stage, protocol, backoff=Backoff(0.05, 30.0, 0.0))
    stages, sink = pipeline.stages()
    results: dict[Any, Any] = {}
    subject: reactivex.subject.Subject[Envelope[Any]] = reactivex.subject.Subject()
    flow = run(subject, *stages)
    for env in envelopes(COMMANDS[:6], results=results):
        subject.on_next(env)
    subject.on_error(RuntimeError("the source stops: drain timed out"))
    assert flow.wait_quietly(30)
    wait_until(lambda: len(results) == 6, 30, "every record settled")
    assert all(v is not None for v in results.values()), "nothing was acked"
    assert all(backend.state(e) is None for e, _a in COMMANDS[:6])


#: the engine's steps per stage: in the parallel and serial pipelines the event log is another stage's
ENGINE_STEPS = {"batched": STEPS, "parallel": STEPS[:2], "serial": STEPS[:2]}


@pytest.mark.parametrize(("stage", "protocol", "crash_after"),
                         [(s, p, c) for s in STAGES for p in PROTOCOLS for c in ENGINE_STEPS[s][:-1]])
def test_a_crash_after_a_step_and_a_redelivery_lose_nothing(backend: Backend, stage: str, protocol: str,
                                                            crash_after: str) -> None:
    steps = ENGINE_STEPS[stage]
    after = steps[steps.index(crash_after) + 1]
    dead = [True]
    backend.fault = lambda step: "permanent" if dead[0] and step == after else None
    results = Run(backend, stage, protocol).feed(COMMANDS)
    assert any(v is not None for v in results.values())
    dead[0] = False
    results = Run(backend, stage, protocol).feed(COMMANDS)
    assert all(v is None for v in results.values())
    exact(backend, COMMANDS)
    assert {(e, o) for e, _p, o in backend.logged()} >= {(env.value[0], env.meta.offset)
                                                         for env in envelopes(COMMANDS)}
    assert backend.rejections() == {(env.value[0], env.meta.offset) for env in envelopes(COMMANDS) if env.value[1] < 0}


def test_entities_share_requests_and_a_refused_one_fails_alone(cassandra_session: Any) -> None:
    """On real Cassandra, several entities' single-row writes go as one unlogged request; when such a request is
    refused for good (any request carrying the state of entity ``bad`` here), each entity's writes are sent
    again alone, so only the entity at fault fails and the others are written."""
    from cassandra import InvalidRequest
    from cassandra.query import BatchStatement

    from rxcqrs.testing.fake_cassandra import FakeResponseFuture

    backend = CassandraBackend(cassandra_session)
    shared: list[int] = []
    execute = backend.session.execute_async

    def refusing(statement: Any, params: Any = None) -> Any:
        if isinstance(statement, BatchStatement):
            rows = [(query_id, values) for _p, query_id, values in statement._statements_and_parameters]
            shared.append(len({values[0] for _q, values in rows}))
        else:
            rows = [(statement.prepared_statement.query_id, statement.values)]
        state_write = backend.aggregate._write.query_id  # prepared by the engine
        if (state_write, b"bad") in [(query_id, values[0]) for query_id, values in rows]:
            future = FakeResponseFuture()
            threading.Thread(target=future._complete, args=(False, InvalidRequest("refused: bad")), daemon=True).start()
            return future
        return execute(statement, params)

    backend.session.execute_async = refusing  # type: ignore[method-assign]
    try:
        commands = [(f"e{i % 12}", i) for i in range(24)] + [("bad", 5)]
        results = Run(backend, "batched", "fenced").feed(commands)
        refused = [key for key, error in results.items() if error is not None]
        assert len(refused) == 1 and isinstance(results[refused[0]], PermanentStageError), refused
        good = {e: v for e, v in fold(commands).items() if e != "bad"}
        assert {e: backend.state(e) for e in good} == good and backend.state("bad") is None
        assert max(shared) > 1, "no request carried the writes of several entities"
    finally:
        backend.close()


def test_reads_are_merged_and_one_refused_for_good_fails_alone(cassandra_session: Any) -> None:
    """On real Cassandra, the entities that miss the cache at once are read in one request (``IN``); when such
    a read is refused for good (any read of entity ``bad`` here), each entity is read again alone, so only the
    entity at fault fails and the others are written."""
    from cassandra import InvalidRequest

    from rxcqrs.testing.fake_cassandra import FakeResponseFuture

    backend = CassandraBackend(cassandra_session)
    merged: list[tuple[int, bool]] = []  # (keys, whether 'bad' is one of them) per read
    execute = backend.session.execute_async

    def refusing(statement: Any, params: Any = None) -> Any:
        prepared = getattr(statement, "prepared_statement", None)
        if prepared is not None and prepared.query_string.startswith("SELECT"):
            keys = statement.raw_values[0]
            keys = keys if isinstance(keys, list) else [keys]
            merged.append((len(keys), "bad" in keys))
            if "bad" in keys:
                future = FakeResponseFuture()
                threading.Thread(target=future._complete, args=(False, InvalidRequest("refused: bad")),
                                 daemon=True).start()
                return future
        return execute(statement, params)

    backend.session.execute_async = refusing  # type: ignore[method-assign]
    try:
        commands = [("bad", 5)] + [(f"e{i % 12}", i) for i in range(24)]
        results = Run(backend, "batched", "fenced").feed(commands)
        refused = [key for key, error in results.items() if error is not None]
        assert len(refused) == 1 and isinstance(results[refused[0]], PermanentStageError), refused
        good = {e: v for e, v in fold(commands).items() if e != "bad"}
        assert {e: backend.state(e) for e in good} == good and backend.state("bad") is None
        assert any(n > 1 and bad for n, bad in merged), "'bad' was never read with other entities"
        assert (1, True) in merged, "'bad' was not read again alone"
    finally:
        backend.close()


def test_the_fake_merges_reads_too() -> None:
    backend = FakeBackend()
    Run(backend, "batched", "fenced").feed(COMMANDS)
    assert "reads" in backend.aggregate.executed
    exact(backend, COMMANDS)
