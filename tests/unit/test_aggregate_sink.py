"""The command engine (AggregateSink) on the fake session over a last-write-wins table: batching per entity,
order, both write protocols, every outcome, fencing, stale records, and a crash after each write step."""

from __future__ import annotations

from typing import Any

import pytest

from rxcqrs.acks import GateTicket
from rxcqrs.backoff import Backoff
from rxcqrs.cassandra.aggregate import STEPS, AggregateSink
from rxcqrs.cassandra.fence import EPOCH_SHIFT, FIRST_EPOCH
from rxcqrs.commit import CommitGate
from rxcqrs.exceptions import PermanentStageError
from rxcqrs.messages import TopicPartition
from rxcqrs.testing import VirtualClock
from rxcqrs.testing.fake_cassandra import MemoryFences
from tests.counters import Counters, envelopes, fold, partition_of
from tests.helpers import wait_until

FAST = Backoff(0.001, 0.05, 0.0)
PROTOCOLS = ["fenced", "conditional"]


def engine(counters: Counters, protocol: str = "fenced", fences: MemoryFences | None = None, **options: Any
           ) -> AggregateSink[Any, Any, Any]:
    options.setdefault("backoff", FAST)
    return AggregateSink(counters.session(), counters, write_protocol=protocol,  # type: ignore[arg-type]
                         fences=fences or MemoryFences(), group="g", **options)


def feed(sink: AggregateSink[Any, Any, Any], commands: list[tuple[str, int]], **options: Any) -> dict[Any, Any]:
    results: dict[Any, Any] = options.pop("results", {})
    for env in envelopes(commands, results=results, **options):
        sink.on_next(env)
    return results


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_commands_of_an_entity_are_folded_in_order_and_written_together(protocol: str) -> None:
    counters = Counters()
    sink = engine(counters, protocol, max_concurrency=4)
    commands = [(f"e{i % 5}", i) for i in range(200)] + [("e0", -1)]
    results = feed(sink, commands)
    sink.on_completed()
    assert len(results) == 201 and all(v is None for v in results.values())
    assert {e: counters.state(e) for e in fold(commands)} == fold(commands)
    for e in range(5):
        assert counters.order[f"e{e}"] == sorted(counters.order[f"e{e}"])  # per-entity order
    assert counters.state_writes < 201 / 2, "commands of an entity share their writes"
    rejected = [env for env in envelopes(commands) if env.value[1] < 0]
    assert len(counters.logged) == 201 and counters.rejections == {("e0", rejected[0].meta.offset)}


def test_a_fenced_write_is_stamped_with_the_epoch_and_the_last_offset_folded() -> None:
    counters = Counters()
    stamps: list[int] = []
    counters.fault = lambda s: stamps.append(s[4]) if s[0] == "write" else None  # type: ignore[func-returns-value]
    sink = engine(counters, linger=0.05)
    feed(sink, [("e", 1), ("e", 2), ("e", 3)])
    sink.on_completed()
    assert stamps == [(FIRST_EPOCH << EPOCH_SHIFT) | 2]


def test_a_conditional_conflict_reads_again_and_folds_on_the_fresh_state() -> None:
    counters = Counters()
    sink = engine(counters, "conditional")
    feed(sink, [("e", 1)])
    sink.wait_idle(5)
    p = partition_of("e", 3)
    counters.table.conditional("e", {"seq": 1}, {"state": 1000, "seq": 2, "applied": {p: 0}})  # another writer
    counts: dict[str, int] = {}
    results = feed(sink, [("e", 2)], counts=counts, first=1)
    sink.on_completed()
    assert counters.state("e") == 1002 and counts["cassandra_not_applied"] == 1 and results == {(p, 1): None}


def test_a_conditional_unknown_outcome_is_resolved_by_a_serial_read_and_never_re_sent() -> None:
    counters = Counters()
    lost = [True]
    counters.fault = lambda s: "lost" if s[0] == "update" and lost and lost.pop() else None
    counts: dict[str, int] = {}
    sink = engine(counters, "conditional", linger=0.05)
    results = feed(sink, [("e", 5), ("e", 6)], counts=counts)
    sink.on_completed()
    assert counters.state("e") == 11 and counters.state_writes == 1
    assert counts["cassandra_unknown"] == 1 and counts["unknown_resolved_applied"] == 1
    assert all(v is None for v in results.values())


def test_a_fenced_unknown_outcome_is_simply_sent_again() -> None:
    counters = Counters()
    lost = [True]
    counters.fault = lambda s: "lost" if s[0] == "write" and lost and lost.pop() else None
    counts: dict[str, int] = {}
    sink = engine(counters, linger=0.05)
    results = feed(sink, [("e", 5), ("e", 6)], counts=counts)
    sink.on_completed()
    assert counters.state("e") == 11 and counters.state_writes == 2  # the same write twice: one state
    assert counts["cassandra_unknown"] == 1 and counts.get("retries") == 1 and "unknown_resolved_applied" not in counts
    assert all(v is None for v in results.values())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_outage_is_retried_on_the_backoff_of_the_clock_until_it_ends(protocol: str) -> None:
    """Every request refused while the outage lasts (45 s of a virtual clock): the engine retries on the
    default backoff (100 ms, doubling, up to 30 s) and ends exact once Cassandra answers again."""
    clock = VirtualClock()
    outage_ends = clock.now() + 45
    counters = Counters()
    counters.fault = lambda s: "refused" if clock.now() < outage_ends else None
    counts: dict[str, int] = {}
    sink = engine(counters, protocol, backoff=Backoff(random_factor=0.0), clock=clock)
    results = feed(sink, [("e", 5), ("e", 6), ("f", 1)], counts=counts)
    took = clock.advance_until(lambda: len(results) == 3, step=0.25, what="every command applied")
    sink.on_completed()
    assert counters.state("e") == 11 and counters.state("f") == 1 and all(v is None for v in results.values())
    # the retry that first finds Cassandra back is the one at 0.1 + 0.2 + ... + 25.6 = 51.1 s of the clock: the
    # retries before it all fell inside the outage
    assert took >= 51.1
    assert counts.get("retries", 0) >= 8


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_unknown_outcome_that_did_not_apply_ends_exact(protocol: str) -> None:
    counters = Counters()
    once = [True]
    counters.fault = lambda s: "unknown-not-applied" if s[0] in ("write", "update") and once and once.pop() else None
    sink = engine(counters, protocol)
    feed(sink, [("e", 5)])
    sink.on_completed()
    assert counters.state("e") == 5


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_permanent_error_nacks_the_whole_batch_at_once(protocol: str) -> None:
    counters = Counters(fault=lambda s: "permanent" if s[0] in ("write", "update") else None)
    counts: dict[str, int] = {}
    sink = engine(counters, protocol, linger=0.05)
    results = feed(sink, [("e", 1), ("e", 2), ("e", 3)], counts=counts)
    sink.on_completed()
    assert len(results) == 3 and all(isinstance(v, PermanentStageError) for v in results.values())
    assert all("unconfigured table" in str(v) for v in results.values()) and counts.get("retries", 0) == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_redelivered_commands_are_skipped_but_logged_again(protocol: str) -> None:
    counters = Counters()
    fences = MemoryFences()
    first = engine(counters, protocol, fences)
    feed(first, [("e", 1), ("e", 2)])
    first.on_completed()
    counts: dict[str, int] = {}
    again = engine(counters, protocol, fences)  # a restart: nothing cached, the row is read
    results = feed(again, [("e", 1), ("e", 2), ("e", 4)], counts=counts)
    again.on_completed()
    assert counters.state("e") == 7 and counts["redelivered_skipped"] == 2
    assert len(counters.logged) == 5 and all(v is None for v in results.values())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_assignment_drops_cached_entities_and_takes_a_new_epoch(protocol: str) -> None:
    counters = Counters()
    fences = MemoryFences()
    sink = engine(counters, protocol, fences)
    feed(sink, [("e", 1)])
    wait_until(lambda: sink.in_flight == 0, 5)
    tp = TopicPartition("t", partition_of("e", 3))
    reads = sink.reads
    sink.partitions_assigned([tp])
    feed(sink, [("e", 2)], first=1)
    sink.on_completed()
    assert sink.reads == reads + 1 and counters.state("e") == 3
    assert [e for _g, _t, e in fences.taken] == ([FIRST_EPOCH, FIRST_EPOCH + 1] if protocol == "fenced" else [])


def test_records_of_a_revoked_assignment_are_dropped_not_written() -> None:
    counters = Counters()
    gate = CommitGate()
    tp = TopicPartition("t", partition_of("e", 3))
    epoch = gate.assign(tp)

    def ticket(partition: int, offset: int) -> GateTicket:
        gate.emit(tp, offset, epoch)
        return GateTicket(gate, tp, epoch, offset, lambda _n, _c: None)

    sink = engine(counters, linger=0.05)
    stale = envelopes([("e", 1), ("e", 2)], ticket=ticket)
    gate.assign(tp)  # revoked and assigned again before the engine started them
    for env in stale:
        sink.on_next(env)
    sink.on_completed()
    assert counters.state("e") is None and counters.state_writes == 0 and gate.stale == 2


def test_of_an_entitys_records_only_those_of_the_current_assignment_are_written() -> None:
    counters = Counters()
    gate = CommitGate()
    tp = TopicPartition("t", partition_of("e", 3))
    epochs = [gate.assign(tp)]

    def ticket(partition: int, offset: int) -> GateTicket:
        gate.emit(tp, offset, epochs[-1])
        return GateTicket(gate, tp, epochs[-1], offset, lambda _n, _c: None)

    sink = engine(counters, linger=0.05)
    stale = envelopes([("e", 1), ("e", 2)], ticket=ticket)
    epochs.append(gate.assign(tp))  # revoked and assigned again: its records come again, from offset 0
    current = envelopes([("e", 1), ("e", 2), ("e", 3)], ticket=ticket)
    for env in [*stale, *current]:
        sink.on_next(env)
    sink.on_completed()
    assert counters.state("e") == fold([("e", 1), ("e", 2), ("e", 3)])["e"] and gate.stale == 2


def test_each_ticket_is_asked_once_whatever_the_order_of_its_records() -> None:
    from types import SimpleNamespace

    from rxcqrs.cassandra.aggregate import _by_liveness

    asked: list[str] = []

    def ticket(name: str, live: bool) -> Any:
        return SimpleNamespace(live=lambda: asked.append(name) or live)

    a, b = ticket("a", True), ticket("b", False)
    records = [SimpleNamespace(ticket=t, n=i) for i, t in enumerate([a, a, b, b, a, b])]
    live, stale = _by_liveness(records)
    assert [r.n for r in live] == [0, 1, 4] and [r.n for r in stale] == [2, 3, 5] and asked == ["a", "b"]


def test_a_zombies_late_write_loses_to_the_new_owner() -> None:
    """The old owner (epoch E) writes after the new owner (epoch E + 1) took the partition over and wrote a
    state folded from fewer offsets: Cassandra keeps the new owner's."""
    counters = Counters()
    fences = MemoryFences()
    held: list[Any] = []
    counters.fault = None
    old = engine(counters, fences=fences, linger=0.05)
    session = old.session

    def hold_writes(statement: Any, params: Any) -> Any:
        if statement[0] == "write" and not held:
            held.append(statement)  # the zombie's write, on the wire while its member stalls
            return None
        return counters.handler(statement, params)

    session.handler = hold_writes
    feed(old, [("e", 1), ("e", 2), ("e", 3)])
    wait_until(lambda: held, 5)
    new = engine(counters, fences=fences)  # the new owner: a higher epoch
    feed(new, [("e", 1), ("e", 2)])
    new.on_completed()
    counters.handler(held[0], None)  # the zombie's write lands at last: folded up to offset 2, epoch E
    old.on_completed()
    assert counters.state("e") == 3  # the new owner's state (offsets 0 and 1), not the zombie's 6


def test_batches_of_a_partition_wait_until_the_group_confirms_ownership() -> None:
    class Source:
        group_id = "g"

        def __init__(self) -> None:
            self.asked: list[Any] = []
            self.assign: Any = None

        def on_assign(self, listener: Any) -> None:
            self.assign = listener

        def on_revoke(self, listener: Any) -> None:
            pass

        def confirm_ownership(self, tps: Any, then: Any) -> None:
            self.asked.append(then)

    counters = Counters()
    source = Source()
    sink = engine(counters)
    sink.watch_partitions(source)  # type: ignore[arg-type]
    source.assign([TopicPartition("t", partition_of("e", 3))])
    wait_until(lambda: source.asked, 5, "an ownership check")
    results = feed(sink, [("e", 1)])
    source.asked.pop()(False)  # the group moved on meanwhile: ask again later, write nothing
    wait_until(lambda: source.asked, 5, "a second ownership check")
    assert counters.state_writes == 0 and not results
    source.asked.pop()(True)
    sink.on_completed()
    assert counters.state("e") == 1 and list(results.values()) == [None]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("crash_after", STEPS[:-1])
def test_a_crash_after_any_step_and_a_redelivery_lose_nothing(protocol: str, crash_after: str) -> None:
    """The step after ``crash_after`` fails for good (the process dies there: nothing acked, nothing committed);
    a new engine gets the same records again. Every entity exact, every event logged at least once, every
    rejection recorded exactly as in a run without the crash."""
    commands = [(f"e{i % 4}", -1 if i % 7 == 3 else i) for i in range(60)]
    after = STEPS[STEPS.index(crash_after) + 1]
    kinds = {"decisions": ("reject",), "state": ("write", "update"), "events": ("event",), "index": ("index",)}
    dead = [True]
    counters = Counters(fault=lambda s: "permanent" if dead[0] and s[0] in kinds[after] else None)
    fences = MemoryFences()
    crashed = engine(counters, protocol, fences, linger=0.05)
    results = feed(crashed, commands)
    crashed.on_completed()
    assert any(v is not None for v in results.values()), "the crash point was reached"
    dead[0] = False
    restarted = engine(counters, protocol, fences)
    results = feed(restarted, commands)
    restarted.on_completed()
    assert all(v is None for v in results.values())
    assert {e: counters.state(e) for e in fold(commands)} == fold(commands)
    assert {(e, p, o) for e, p, o in counters.logged} == {(env.value[0], env.meta.partition, env.meta.offset)
                                                          for env in envelopes(commands)}
    assert counters.rejections == {(env.value[0], env.meta.offset) for env in envelopes(commands) if env.value[1] < 0}
    assert counters.indexed == set(fold(commands))


def _batch(commands: list[tuple[str, int]], partition: int, settled: list[Any]) -> Any:
    from rxcqrs.acks import Ticket
    from rxcqrs.messages import Batch
    from rxcqrs.testing import FakeRecord

    records = [FakeRecord("t", partition, offset, 0, 0, b"k", None) for offset in range(len(commands))]
    return Batch(list(commands), records, Ticket(settled.append))


def test_a_source_batch_is_taken_whole_and_settled_once_when_every_record_is_written() -> None:
    counters = Counters()
    sink = engine(counters, linger=0.02)
    assert sink.takes_batches
    settled: list[Any] = []
    commands = [(f"e{i % 4}", i) for i in range(40)]
    sink.on_next(_batch(commands, 0, settled))
    sink.on_completed()
    assert settled == [None] and {e: counters.state(e) for e in fold(commands)} == fold(commands)
    assert len(counters.logged) == 40


def test_a_failure_of_one_entity_fails_its_source_batch_once() -> None:
    counters = Counters(fault=lambda s: "permanent" if s[0] == "write" and s[1] == "e2" else None)
    sink = engine(counters, linger=0.02)
    settled: list[Any] = []
    sink.on_next(_batch([(f"e{i % 4}", i) for i in range(20)], 0, settled))
    sink.on_completed()
    assert len(settled) == 1 and isinstance(settled[0], PermanentStageError)


@pytest.mark.parametrize("option", ["max_concurrency", "max_batch", "cache_size", "batch_rows", "merge_partitions"])
def test_a_setting_below_one_is_refused_naming_it(option: str) -> None:
    from rxcqrs.exceptions import ConfigError

    with pytest.raises(ConfigError, match=option):
        engine(Counters(), **{option: 0})
