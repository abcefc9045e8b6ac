"""One harness per Cassandra backend for the command-stage contract: the in-memory last-write-wins fake and a
real Cassandra keyspace, each with the same test aggregate (a running sum per entity, a negative amount
rejected) and the same faults to inject by write step. A behaviour the fake shows and real Cassandra does not
is a bug in the fake."""

from __future__ import annotations

import threading
import uuid
from typing import Any, Callable

from cassandra import InvalidRequest, Unavailable, WriteTimeout

from rxcqrs.cassandra import create_keyspace, create_table, drop_keyspace, prepare
from rxcqrs.cassandra.aggregate import Applied, Rejection, Stored
from rxcqrs.cassandra.fence import create_fence_tables
from rxcqrs.messages import RecordMetadata
from rxcqrs.testing.fake_cassandra import FakeResponseFuture, MemoryFences
from tests.counters import Counters

__all__ = ["Backend", "FakeBackend", "CassandraBackend", "STEP_KINDS"]

#: the write step each statement kind belongs to
STEP_KINDS = {"reject": "decisions", "write": "state", "update": "state", "event": "events", "index": "index",
              "read": "read", "reads": "read"}
#: fault(step) -> None, "lost" (applied, answer lost), "refused" (unavailable), "permanent"
Fault = Callable[[str], str | None]


class Backend:
    name: str
    aggregate: Any
    session: Any
    fences: Any

    def __init__(self) -> None:
        self.fault: Fault | None = None

    def state(self, entity: str) -> int | None:
        raise NotImplementedError

    def logged(self) -> list[tuple[str, int, int]]:
        """Every logged delivery as (entity, partition, offset)."""
        raise NotImplementedError

    def rejections(self) -> set[tuple[str, int]]:
        raise NotImplementedError

    def indexed(self) -> set[str]:
        raise NotImplementedError

    def bump(self, entity: str, state: int) -> None:
        """Another writer moves the entity (a conditional write on the current seq)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class FakeBackend(Backend):
    name = "fake"

    def __init__(self) -> None:
        super().__init__()
        self.aggregate = Counters(fault=lambda statement: self.fault(STEP_KINDS[statement[0]]) if self.fault else None)
        self.session = self.aggregate.session()
        self.fences = MemoryFences()

    def state(self, entity: str) -> int | None:
        return self.aggregate.state(entity)

    def logged(self) -> list[tuple[str, int, int]]:
        return list(self.aggregate.logged)

    def rejections(self) -> set[tuple[str, int]]:
        return set(self.aggregate.rejections)

    def indexed(self) -> set[str]:
        return set(self.aggregate.indexed)

    def bump(self, entity: str, state: int) -> None:
        row = self.aggregate.table.read(entity) or {}
        assert self.aggregate.table.conditional(entity, {"seq": row.get("seq")},
                                                {"state": state, "seq": (row.get("seq") or 0) + 1})


class CqlCounters:
    """The test aggregate in CQL: the same decisions as :class:`tests.counters.Counters`."""

    def __init__(self, session: Any, keyspace: str) -> None:
        self.session = session
        self.keyspace = keyspace

    def create(self) -> None:
        create_keyspace(self.session, self.keyspace)
        create_table(self.session, self.keyspace, "counters", {"entity": "text", "state": "int", "seq": "bigint",
                                                                "applied": "map<int, bigint>"}, ["entity"])
        create_table(self.session, self.keyspace, "events", {"entity": "text", "partition": "int", "offset": "bigint",
                                                              "logged": "timeuuid"}, ["entity"],
                     [("partition", "ASC"), ("offset", "ASC"), ("logged", "ASC")])
        create_table(self.session, self.keyspace, "rejections", {"entity": "text", "offset": "bigint"}, ["entity"],
                     [("offset", "ASC")])
        create_table(self.session, self.keyspace, "indexed", {"entity": "text"}, ["entity"])
        create_fence_tables(self.session, self.keyspace)

    def prepare(self) -> None:
        from cassandra import ConsistencyLevel

        ks, s = self.keyspace, self.session
        self._read = prepare(s, f"SELECT state, seq, applied FROM {ks}.counters WHERE entity = ?")
        self._read_many = prepare(s, f"SELECT entity, state, seq, applied FROM {ks}.counters WHERE entity IN ?")
        self._serial = s.prepare(f"SELECT state, seq, applied FROM {ks}.counters WHERE entity = ?")
        self._serial.consistency_level = ConsistencyLevel.LOCAL_SERIAL
        self._write = prepare(s, f"INSERT INTO {ks}.counters (entity, state, applied) VALUES (?, ?, ?) "
                                 "USING TIMESTAMP ?")
        self._insert = prepare(s, f"INSERT INTO {ks}.counters (entity, state, seq, applied) VALUES (?, ?, 1, ?) "
                                  "IF NOT EXISTS")
        self._update = prepare(s, f"UPDATE {ks}.counters SET state = ?, seq = ?, applied = ? WHERE entity = ? "
                                  "IF seq = ?")
        self._event = prepare(s, f"INSERT INTO {ks}.events (entity, partition, offset, logged) VALUES (?, ?, ?, now())")
        self._reject = prepare(s, f"INSERT INTO {ks}.rejections (entity, offset) VALUES (?, ?)")
        self._index = prepare(s, f"INSERT INTO {ks}.indexed (entity) VALUES (?)")

    def key(self, command: tuple[str, int]) -> str:
        return command[0]

    def read(self, key: str, serial: bool) -> Any:
        return (self._serial if serial else self._read).bind((key,))

    def read_many(self, keys: list[str]) -> Any:
        return self._read_many.bind((keys,))

    def key_of_row(self, row: Any) -> str:
        return row.entity

    def stored(self, rows: Any) -> Stored[int]:
        if not rows:
            return Stored(None, None, {})
        row = rows[0]
        return Stored(row.state, row.seq, dict(row.applied or {}))

    def decide(self, state: int | None, command: tuple[str, int], meta: RecordMetadata) -> Applied[int] | Rejection:
        return Rejection("negative") if command[1] < 0 else Applied((state or 0) + command[1])

    def write(self, key: str, state: int | None, applied: dict[int, int], timestamp: int) -> Any:
        return _idempotent(self._write.bind((key, state, applied, timestamp)))

    def update(self, key: str, before: Stored[int], state: int | None, applied: dict[int, int]) -> Any:
        if before.seq is None:
            return self._insert.bind((key, state, applied))
        return self._update.bind((state, before.seq + 1, applied, key, before.seq))

    def record_rejections(self, key: str, rejected: list[Any]) -> list[Any]:
        return [_idempotent(self._reject.bind((key, meta.offset))) for _c, meta, _r in rejected]

    def events(self, key: str, records: list[tuple[Any, RecordMetadata]]) -> list[Any]:
        return [_idempotent(self._event.bind((key, meta.partition, meta.offset))) for _c, meta in records]

    def index(self, key: str, records: list[tuple[Any, RecordMetadata]]) -> list[Any]:
        return [_idempotent(self._index.bind((key,)))]


def _idempotent(bound: Any) -> Any:
    bound.is_idempotent = True
    return bound


class FaultySession:
    """A real session whose requests fail as the backend's ``fault`` says, by write step (told from the
    statement's table and whether it is conditional)."""

    def __init__(self, session: Any, backend: "CassandraBackend") -> None:
        self.session = session
        self.backend = backend
        self.cluster = session.cluster

    def prepare(self, query: str) -> Any:
        return self.session.prepare(query)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self.session.execute(*args, **kwargs)

    def execute_async(self, statement: Any, params: Any = None) -> Any:
        fault = None
        if self.backend.fault:  # a request of several rows (merged by the engine) fails if any of its steps does
            faults = [self.backend.fault(step) for step in self._steps(statement)]
            fault = next((f for f in faults if f is not None), None)
        if fault is None:
            return self.session.execute_async(statement, params)
        future = FakeResponseFuture()
        if fault == "refused":
            threading.Thread(target=future._complete, args=(False, Unavailable(
                "fault: refused", consistency=6, required_replicas=1, alive_replicas=0)), daemon=True).start()
        elif fault == "permanent":
            threading.Thread(target=future._complete, args=(False, InvalidRequest("fault: unconfigured table")),
                             daemon=True).start()
        else:  # applied, answer lost
            real = self.session.execute_async(statement, params)
            lost = WriteTimeout("fault: applied, the answer lost", write_type=0)
            real.add_callbacks(lambda _rows: future._complete(False, lost),
                               lambda error: future._complete(False, error))
        return future


    def _steps(self, statement: Any) -> list[str]:
        """The write steps of a request (a batch's rows each have theirs)."""
        from cassandra.query import BatchStatement

        if isinstance(statement, BatchStatement):  # its rows are told apart by their prepared statement's id
            queries = {p.query_id: p.query_string for p in vars(self.backend.aggregate).values()
                       if hasattr(p, "query_id")}
            return [_step(queries[query_id]) for _prepared, query_id, _values in statement._statements_and_parameters]
        return [_step(statement.prepared_statement.query_string)]


def _step(query: str) -> str:
    if query.startswith("SELECT"):
        return "read"
    table = query.split()[2 if query.startswith("INSERT") else 1].split("(")[0].split(".")[-1]
    return {"counters": "state", "events": "events", "rejections": "decisions", "indexed": "index"}[table]


class CassandraBackend(Backend):
    name = "cassandra"

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.keyspace = f"contract_{uuid.uuid4().hex[:10]}"
        self.real = session
        self.aggregate = CqlCounters(session, self.keyspace)
        self.aggregate.create()
        self.session = FaultySession(session, self)
        self.fences = None  # the real fence rows of the keyspace

    def state(self, entity: str) -> int | None:
        row = self.real.execute(f"SELECT state FROM {self.keyspace}.counters WHERE entity = %s", (entity,)).one()
        return None if row is None else row.state

    def logged(self) -> list[tuple[str, int, int]]:
        return [(r.entity, r.partition, r.offset) for r in
                self.real.execute(f"SELECT entity, partition, offset FROM {self.keyspace}.events")]

    def rejections(self) -> set[tuple[str, int]]:
        rows = self.real.execute(f"SELECT entity, offset FROM {self.keyspace}.rejections")
        return {(r.entity, r.offset) for r in rows}

    def indexed(self) -> set[str]:
        return {r.entity for r in self.real.execute(f"SELECT entity FROM {self.keyspace}.indexed")}

    def bump(self, entity: str, state: int) -> None:
        row = self.real.execute(f"SELECT seq FROM {self.keyspace}.counters WHERE entity = %s", (entity,)).one()
        applied = self.real.execute(f"UPDATE {self.keyspace}.counters SET state = %s, seq = %s WHERE entity = %s "
                                    "IF seq = %s", (state, row.seq + 1, entity, row.seq)).one()
        assert applied[0]

    def close(self) -> None:
        drop_keyspace(self.real, self.keyspace)
