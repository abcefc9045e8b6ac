"""A test aggregate (a running sum per entity; a negative amount is rejected) over the last-write-wins model
of a Cassandra table, with faults to inject: the fast tier's stand-in for the cart table, for every command
stage and both write protocols; and the same domain as a :class:`~rxcqrs.Decider` (``TOTALS``)."""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

from cassandra import Unavailable, WriteTimeout

from rxcqrs import Decider, Reject
from rxcqrs.acks import Ticket
from rxcqrs.cassandra.aggregate import Applied, Rejection, Stored
from rxcqrs.messages import Envelope, RecordMetadata
from rxcqrs.testing.fake_cassandra import FakeSession, lwt_row
from rxcqrs.testing.lww import LwwTable

__all__ = ["TOTALS", "Add", "Added", "Counters", "Command", "Stmt", "Total", "envelopes", "fold", "partition_of"]

Command = tuple[str, int]  # (entity, amount)
#: a fault for a statement: None (none), "lost" (applied, the answer lost: an unknown outcome), "refused"
#: (nothing applied: unavailable), "unknown-not-applied" (a write timeout before it applied), "permanent"
Fault = Callable[[tuple[Any, ...]], str | None]


def partition_of(entity: str, partitions: int) -> int:
    return sum(map(ord, entity)) % partitions  # an entity's commands share a partition


def fold(commands: list[Command]) -> dict[str, int]:
    """What every entity must end at: the sum of its non-negative amounts."""
    out: dict[str, int] = defaultdict(int)
    for entity, amount in commands:
        if amount >= 0:
            out[entity] += amount
        else:
            out.setdefault(entity, 0)
    return dict(out)


@dataclass(frozen=True)
class Add:
    entity: str
    amount: int


@dataclass(frozen=True)
class Total:
    total: int


@dataclass(frozen=True)
class Added:
    amount: int


def decide(state: Total | None, cmd: Add) -> Any:
    """Nothing for 0, a rejection for a negative amount, two events for a multiple of 7, else one."""
    if cmd.amount == 0:
        return None
    if cmd.amount < 0:
        return Reject("negative")
    return [Added(cmd.amount), Added(1)] if cmd.amount % 7 == 0 else Added(cmd.amount)


def evolve(state: Total | None, event: Added) -> Total | None:
    return Total((state.total if state else 0) + event.amount)


TOTALS = Decider("totals", command=Add, state=Total, event=Added, key="entity", decide=decide, evolve=evolve)


class Stmt:
    """A statement of the test aggregate: its kind, its entity and its values (not a tuple: the Cassandra
    stages read a tuple as ``(query, params)``)."""

    __slots__ = ("parts",)

    def __init__(self, *parts: Any) -> None:
        self.parts = parts

    def __getitem__(self, index: int) -> Any:
        return self.parts[index]

    def __iter__(self) -> Any:
        return iter(self.parts)

    def __repr__(self) -> str:
        return f"Stmt{self.parts!r}"


class Counters:
    """The aggregate (what :class:`~rxcqrs.cassandra.AggregateSink` runs) and its table (what the fake session
    executes: ``handler``)."""

    keyspace = "counters"

    def __init__(self, fault: Fault | None = None) -> None:
        self.table = LwwTable(maps=("applied",))
        self.fault = fault
        self.lock = threading.Lock()
        self.order: dict[str, list[int]] = defaultdict(list)
        self.logged: list[tuple[str, int, int]] = []
        self.rejections: set[tuple[str, int]] = set()
        self.indexed: set[str] = set()
        self.state_writes = 0
        self.executed: list[str] = []

    # -- the aggregate ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        pass

    def key(self, command: Command) -> str:
        return command[0]

    def read(self, key: str, serial: bool) -> Any:
        return Stmt("read", key)

    def read_many(self, keys: list[str]) -> Any:
        return Stmt("reads", tuple(keys))

    def key_of_row(self, row: Any) -> str:
        return row["entity"]

    def stored(self, rows: Any) -> Stored[int]:
        if not rows:
            return Stored(None, None, {})
        row = rows[0]
        return Stored(row.get("state"), row.get("seq"), dict(row.get("applied") or {}))

    def decide(self, state: int | None, command: Command, meta: RecordMetadata) -> Applied[int] | Rejection:
        with self.lock:
            self.order[command[0]].append(meta.offset)
        if command[1] < 0:
            return Rejection("negative")
        return Applied((state or 0) + command[1])

    def write(self, key: str, state: int | None, applied: dict[int, int], timestamp: int) -> Any:
        return Stmt("write", key, state, dict(applied), timestamp)

    def update(self, key: str, before: Stored[int], state: int | None, applied: dict[int, int]) -> Any:
        return Stmt("update", key, before.seq, state, dict(applied))

    def record_rejections(self, key: str, rejected: list[Any]) -> list[Any]:
        return [Stmt("reject", key, meta.offset) for _c, meta, _r in rejected]

    def events(self, key: str, records: list[tuple[Any, RecordMetadata]]) -> list[Any]:
        return [Stmt("event", key, meta.partition, meta.offset) for _cmd, meta in records]

    def index(self, key: str, records: list[tuple[Any, RecordMetadata]]) -> list[Any]:
        return [Stmt("index", key)]

    # -- the table ----------------------------------------------------------------------------------------
    def session(self) -> FakeSession:
        return FakeSession(self.handler)

    def state(self, key: str) -> int | None:
        row = self.table.read(key)
        return None if row is None else row.get("state")

    def handler(self, statement: Any, _params: Any) -> Any:
        kind, key = statement[0], statement[1]
        fault = self.fault(statement) if self.fault is not None else None
        with self.lock:
            self.executed.append(kind)
        if fault == "refused":
            raise Unavailable("fault: not enough replicas", consistency=6, required_replicas=1, alive_replicas=0)
        if fault == "unknown-not-applied":
            raise WriteTimeout("fault: timed out before it applied", write_type=0)
        if fault == "permanent":
            from cassandra import InvalidRequest

            raise InvalidRequest("fault: unconfigured table counters")
        result = self._apply(kind, key, statement)
        if fault == "lost":
            raise WriteTimeout("fault: applied, the answer lost", write_type=0)
        return result

    def _apply(self, kind: str, key: str, statement: Any) -> Any:
        if kind == "read":
            row = self.table.read(key)
            return [row] if row else []
        if kind == "reads":
            return [{**row, "entity": k} for k in key if (row := self.table.read(k))]
        if kind == "write":
            _, _, state, applied, timestamp = statement
            with self.lock:
                self.state_writes += 1
            self.table.write(key, {"state": state, "applied": applied}, timestamp)
            return None
        if kind == "update":
            _, _, expected, state, applied = statement
            ok = self.table.conditional(key, None if expected is None else {"seq": expected},
                                        {"state": state, "seq": (expected or 0) + 1, "applied": applied})
            if ok:
                with self.lock:
                    self.state_writes += 1
            return lwt_row(ok)
        with self.lock:
            if kind == "event":
                self.logged.append((key, statement[2], statement[3]))
            elif kind == "reject":
                self.rejections.add((key, statement[2]))
            elif kind == "index":
                self.indexed.add(key)
        return None


def envelopes(commands: list[Command], partitions: int = 3, first: int = 0, topic: str = "t",
              results: dict[Any, Any] | None = None, counts: dict[str, int] | None = None,
              ticket: Callable[[int, int], Ticket] | None = None) -> list[Envelope[Command]]:
    """Envelopes for ``commands`` from offset ``first`` on; each records its settle in ``results`` (by
    (partition, offset)) and its metrics in ``counts`` unless ``ticket(partition, offset)`` makes them."""
    results = {} if results is None else results
    counts = {} if counts is None else counts
    offsets: dict[int, int] = defaultdict(lambda: first)
    out = []
    for command in commands:
        partition = partition_of(command[0], partitions)
        offset = offsets[partition]
        offsets[partition] = offset + 1
        made = ticket(partition, offset) if ticket is not None else Ticket(
            lambda err, k=(partition, offset): results.__setitem__(k, err),
            lambda name, n: counts.__setitem__(name, counts.get(name, 0) + n))
        out.append(Envelope(command, RecordMetadata(topic, partition, offset, 0, key=b"k"), made))
    return out
