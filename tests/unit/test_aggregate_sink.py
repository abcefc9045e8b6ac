"""AggregateSink on a fake session: batching per entity, order, conflicts, unknown outcomes, permanent errors,
idempotent redelivery. The fake "table" keeps (state, seq, applied) per key, like the cart table."""

from __future__ import annotations

import threading
from typing import Any

from cassandra import InvalidRequest, WriteTimeout

from rxcqrs.acks import Ticket
from rxcqrs.backoff import Backoff
from rxcqrs.cassandra.aggregate import AggregateSink, Applied, Rejection, Stored
from rxcqrs.exceptions import PermanentStageError
from rxcqrs.messages import Envelope, RecordMetadata
from rxcqrs.testing.fake_cassandra import FakeSession, lwt_row
from tests.helpers import wait_until

FAST = Backoff(0.001, 0.05, 0.0)


class Row:
    def __init__(self, state: int, seq: int, applied: dict[int, int]) -> None:
        self.state, self.seq, self.applied = state, seq, applied


class Counters:
    """An aggregate whose state is a sum; a negative command is rejected."""

    def __init__(self) -> None:
        self.table: dict[str, Row] = {}
        self.lock = threading.Lock()
        self.order: dict[str, list[int]] = {}
        self.logged: list[tuple[str, int, int]] = []
        self.updates = 0
        self.fail_next_update: BaseException | None = None
        self.apply_failed_update = False

    def prepare(self) -> None:
        pass

    def key(self, command: tuple[str, int]) -> str:
        return command[0]

    def read(self, key: str, serial: bool) -> Any:
        return ("read", key)

    def stored(self, rows: Any) -> Stored[int]:
        if not rows:
            return Stored(None, None, {})
        row = rows[0]
        return Stored(row.state, row.seq, dict(row.applied))

    def decide(self, state: int | None, command: tuple[str, int], meta: RecordMetadata) -> Applied[int] | Rejection:
        self.order.setdefault(command[0], []).append(meta.offset)
        if command[1] < 0:
            return Rejection("negative")
        return Applied((state or 0) + command[1])

    def update(self, key: str, before: Stored[int], state: int | None, applied: dict[int, int]) -> Any:
        return ("update", key, before.seq, state, applied)

    def events(self, key: str, records: list[tuple[Any, RecordMetadata]]) -> list[Any]:
        return [("event", key, meta.partition, meta.offset) for _cmd, meta in records]

    def record_rejections(self, key: str, rejected: list[Any]) -> list[Any]:
        return [("reject", key, meta.offset) for _c, meta, _r in rejected]

    def handler(self, statement: Any, _params: Any) -> Any:
        kind, key = statement[0], statement[1]
        with self.lock:
            if kind == "read":
                row = self.table.get(key)
                return [row] if row else []
            if kind == "update":
                _, _, expected, state, applied = statement
                current = self.table.get(key)
                if (current.seq if current else None) != expected:
                    return lwt_row(False)
                failure, self.fail_next_update = self.fail_next_update, None
                if failure is not None and not self.apply_failed_update:
                    raise failure
                self.updates += 1
                self.table[key] = Row(state, (expected or 0) + 1, applied)
                if failure is not None:
                    raise failure  # applied, but the answer is lost: an unknown outcome
                return lwt_row(True)
            if kind == "event":
                self.logged.append((key, statement[2], statement[3]))
            return None


def feed(sink: AggregateSink[Any, Any, Any], commands: list[tuple[str, int]], partitions: int = 3,
         results: dict[Any, Any] | None = None, counts: dict[str, int] | None = None, first: int = 0
         ) -> dict[Any, Any]:
    """Envelopes for ``commands`` from offset ``first`` on (an entity's commands share a partition)."""
    results = {} if results is None else results
    counts = {} if counts is None else counts
    offsets: dict[int, int] = {p: first for p in range(partitions)}
    for command in commands:
        partition = sum(map(ord, command[0])) % partitions  # an entity's commands share a partition
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        ticket = Ticket(lambda err, k=(partition, offset): results.__setitem__(k, err),
                        lambda name, n: counts.__setitem__(name, counts.get(name, 0) + n))
        sink.on_next(Envelope(command, RecordMetadata("t", partition, offset, 0), ticket))
    return results


def test_commands_of_an_entity_are_folded_in_order_and_written_together() -> None:
    counters = Counters()
    sink = AggregateSink(FakeSession(counters.handler), counters, backoff=FAST, max_concurrency=4)
    commands = [(f"e{i % 5}", i) for i in range(200)] + [("e0", -1)]
    results = feed(sink, commands)
    sink.on_completed()
    assert len(results) == 201 and all(v is None for v in results.values())
    for e in range(5):
        assert counters.table[f"e{e}"].state == sum(i for i in range(200) if i % 5 == e)
        assert counters.order[f"e{e}"] == sorted(counters.order[f"e{e}"])  # per-entity order
    assert counters.updates < 201 / 2, "commands of an entity share conditional writes"
    assert len(counters.logged) == 201  # every record logged once


def test_a_conflict_reads_again_and_folds_on_the_fresh_state() -> None:
    counters = Counters()
    counters.table["e"] = Row(100, 7, {})
    session = FakeSession(counters.handler)
    sink = AggregateSink(session, counters, backoff=FAST)
    feed(sink, [("e", 1)])
    sink.wait_idle(5)
    with counters.lock:  # another writer moves the row under the cached state
        counters.table["e"] = Row(1000, 9, dict(counters.table["e"].applied))
    counts: dict[str, int] = {}
    results = feed(sink, [("e", 2)], counts=counts, first=1)
    sink.on_completed()
    partition = sum(map(ord, "e")) % 3
    assert counters.table["e"].state == 1002 and counts["cassandra_not_applied"] == 1
    assert results == {(partition, 1): None}


def test_an_unknown_outcome_is_resolved_by_a_serial_read_and_never_re_sent() -> None:
    counters = Counters()
    counters.fail_next_update = WriteTimeout("timeout", write_type=5)
    counters.apply_failed_update = True
    counts: dict[str, int] = {}
    sink = AggregateSink(FakeSession(counters.handler), counters, backoff=FAST)
    results = feed(sink, [("e", 5), ("e", 6)], counts=counts)
    sink.on_completed()
    assert counters.table["e"].state == 11 and counters.updates == 1
    assert counts["cassandra_unknown"] == 1 and counts["unknown_resolved_applied"] == 1
    assert all(v is None for v in results.values())


def test_an_unknown_outcome_that_did_not_apply_is_decided_again() -> None:
    counters = Counters()
    counters.fail_next_update = WriteTimeout("timeout", write_type=5)
    counts: dict[str, int] = {}
    sink = AggregateSink(FakeSession(counters.handler), counters, backoff=FAST)
    feed(sink, [("e", 5)], counts=counts)
    sink.on_completed()
    assert counters.table["e"].state == 5 and counts["unknown_resolved_not_applied"] == 1


def test_a_permanent_error_nacks_the_whole_batch_at_once() -> None:
    counters = Counters()
    counters.fail_next_update = InvalidRequest("unconfigured table counters")
    counts: dict[str, int] = {}
    sink = AggregateSink(FakeSession(counters.handler), counters, backoff=FAST, linger=0.05)
    results = feed(sink, [("e", 1), ("e", 2), ("e", 3)], counts=counts)
    sink.on_completed()
    assert len(results) == 3 and all(isinstance(v, PermanentStageError) for v in results.values())
    assert all("unconfigured table" in str(v) for v in results.values()) and counts.get("retries", 0) == 0


def test_redelivered_commands_are_skipped_but_logged_again() -> None:
    counters = Counters()
    session = FakeSession(counters.handler)
    first = AggregateSink(session, counters, backoff=FAST)
    feed(first, [("e", 1), ("e", 2)])
    first.on_completed()
    counts: dict[str, int] = {}
    again = AggregateSink(session, counters, backoff=FAST)  # a restart: nothing cached, the row is read
    results = feed(again, [("e", 1), ("e", 2), ("e", 4)], counts=counts)
    again.on_completed()
    assert counters.table["e"].state == 7 and counts["redelivered_skipped"] == 2
    assert len(counters.logged) == 5 and all(v is None for v in results.values())


def test_forget_drops_cached_entities_of_revoked_partitions() -> None:
    counters = Counters()
    sink = AggregateSink(FakeSession(counters.handler), counters, backoff=FAST)
    feed(sink, [("e", 1)])
    wait_until(lambda: sink.in_flight == 0, 5)
    partition = sum(map(ord, "e")) % 3
    reads = sink.reads
    sink.forget([RecordMetadata("t", partition, 0, 0).tp])
    feed(sink, [("e", 2)], first=1)
    sink.on_completed()
    assert sink.reads == reads + 1 and counters.table["e"].state == 3
