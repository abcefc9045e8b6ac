"""Projections: an aggregate's event stream (:mod:`rxcqrs.cassandra.event_stream`) folded into read-model
tables, exact after any fault. Two kinds of read model, each with its own exactness mechanism:

* :class:`EntityView` - **idempotent rows**: every row belongs to one entity and is a function of its state
  (``rows(entity, state)``). An event replaces the rows of its ``before`` state by those of its ``after``
  state, each written (or deleted) ``USING TIMESTAMP`` the event's position: a repeat writes the same cells at
  the same timestamp and an older event replayed after a newer one loses, so any redelivery ends the same.
  Pick it for per-entity lists and lookups (``carts_by_owner``).
* :class:`TotalsView` - **offsets with the read model**: rows that sum over many entities (counters, totals).
  ``deltas(event)`` says what an event adds to which rows. The state of one stream partition (its totals,
  each entity's last applied position and the next offset) lives in **one Cassandra partition** of the
  projection's state table (partition key ``(stream_topic, stream_partition)``), written by one lightweight
  transaction per turn, conditional on the partition's **owner**: the epoch of the member that claimed it. On
  every assignment a member takes an epoch from the fence row of the projection's group, has the group confirm
  that it still owns the partition, then claims the state (``IF owner = <seen> AND next_offset = <seen>``,
  after a serial read) and learns the stored next offset in the same step. A member that stalled past its
  session timeout and wakes up with its cache and its work in flight can no longer change the state: its
  writes are refused by Cassandra, not merely outranked (a new owner reads the state once, lazily, and would
  otherwise read a zombie's late write of some rows beside older ones). The source resumes a stream partition
  at its stored offset (the beginning without one), not at the group's Kafka offsets; a record below the
  stored offset, and an event at or below its entity's stored position (a repeat on the stream), add nothing.
  The view's own rows are per stream partition (``PRIMARY KEY ((<key>), stream_partition)``: one writer each),
  copies of the state written just before it (``USING TIMESTAMP epoch * 2^40 + offset``: a zombie's late copy
  loses to its new owner's; a crash between the copies and the state leaves the stored offset where it was, so
  the records are projected again to the same rows); a total is their sum (:meth:`Projection.totals`, or
  ``SELECT sum(...) ... WHERE <key> = ?``). A record the stored offset already covers writes its rows again
  from the state (a state write whose answer was lost, then retried).

Tables: each view's; for the totals views ``<name>_state`` (stream_topic, stream_partition, kind, item; static
owner and next_offset; amounts: a view's values, or an entity's position) and the fence tables.

Threads: ``on_next`` (the poll thread) only queues; one worker thread takes what is queued, per stream
partition in offset order, reads what it has not cached (the cache of a partition is dropped on every
assignment and revoke), writes, and acks once every write of the records succeeded. Transient errors and
unknown outcomes are retried with the backoff (every write is idempotent), the records projected again from
what Cassandra holds; past the backoff they are nacked as transient (the source rewinds and delivers them
again); a permanent error (a refused request) nacks them as permanent. A record that is not an event of the
stream goes to the dead letters (``dead_letters``), or fails as permanent without them.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from rxcqrs.backoff import Backoff, retry_until
from rxcqrs.cassandra.event_stream import EventStream, StreamEvent
from rxcqrs.cassandra.fence import Fence, create_fence_tables, write_timestamp
from rxcqrs.cassandra.identifiers import identifier, qualified
from rxcqrs.cassandra.outcomes import Outcome, classify
from rxcqrs.cassandra.retrying import exhausted
from rxcqrs.cassandra.schema import create_keyspace, create_table, prepare, serial_consistency
from rxcqrs.clock import SYSTEM, Clock
from rxcqrs.exceptions import ConfigError, PermanentStageError, PoisonRecordError, SerializationError, StageError
from rxcqrs.messages import Envelope, TopicPartition
from rxcqrs.operators import DeadLetters
from rxcqrs.sink import SinkBase

__all__ = ["EntityView", "TotalsView", "Projection", "ProjectionSink"]

log = logging.getLogger(__name__)
Row = Mapping[str, Any]
#: the read of the stored offsets on assignment, on the client's rebalance thread: well inside a session timeout
_START_TIMEOUT = 10.0
#: the state table's ``kind`` of the entities' positions (a view's rows go under its table's name: never this)
_POSITIONS = ".positions"


@dataclass(frozen=True)
class EntityView:
    """A table whose rows each belong to one entity: ``columns`` (name -> CQL type), the ``key`` (primary key
    columns, the first ``partition`` of them the partition key) and ``rows(entity, state)``: the entity's rows
    in that state (``state`` is ``None`` for no entity, or a deleted one: usually no rows)."""

    table: str
    columns: Mapping[str, str]
    key: Sequence[str]
    rows: Callable[[Any, Any], Iterable[Row]]
    partition: int = 1


@dataclass(frozen=True)
class TotalsView:
    """A table of sums over entities: ``key`` (its columns and CQL types), ``values`` (bigint sums) and
    ``deltas(event)``: ``{key tuple: {value: amount}}`` the event adds (a :class:`StreamEvent`, with the
    entity's ``before`` and ``after``)."""

    table: str
    key: Mapping[str, str]
    values: Sequence[str]
    deltas: Callable[[StreamEvent[Any, Any]], Mapping[tuple[Any, ...], Mapping[str, int]]]


class Projection:
    """The read models ``views`` of ``stream`` in ``keyspace``; ``name`` prefixes its bookkeeping tables."""

    def __init__(self, session: Any, keyspace: str, name: str, stream: EventStream[Any, Any],
                 views: Sequence[EntityView | TotalsView]) -> None:
        self.session = session
        self.keyspace = identifier(keyspace, "keyspace")
        self.name = identifier(name, "projection name")
        self.stream = stream
        if not views:
            raise ConfigError(f"projection {name!r} needs at least one view")
        self.views = list(views)
        for view in self.views:
            identifier(view.table, "view table")
            if isinstance(view, EntityView) and not set(view.key) <= set(view.columns):
                raise ConfigError(f"view {view.table}: its key {list(view.key)} must be among its columns")
        self.entity_views = [v for v in self.views if isinstance(v, EntityView)]
        self.totals_views = [v for v in self.views if isinstance(v, TotalsView)]
        self.state_table = qualified(self.keyspace, f"{self.name}_state")
        self._prepared: dict[str, Any] = {}

    # -- schema -------------------------------------------------------------------------------------------
    def create_schema(self, replication: int = 1) -> None:
        """Create the keyspace and every table that is missing."""
        s, ks = self.session, self.keyspace
        create_keyspace(s, ks, replication)
        for view in self.entity_views:
            key = list(view.key)
            create_table(s, ks, view.table, dict(view.columns), key[:view.partition],
                         [(c, "ASC") for c in key[view.partition:]])
        for totals in self.totals_views:
            create_table(s, ks, totals.table, {**totals.key, "stream_partition": "int",
                                               **{v: "bigint" for v in totals.values}},
                         list(totals.key), [("stream_partition", "ASC")])
        if self.totals_views:  # one partition per stream partition: its owner, next offset, totals and positions
            create_table(s, ks, f"{self.name}_state",
                         {"stream_topic": "text", "stream_partition": "int", "kind": "text", "item": "text",
                          "owner": "bigint", "next_offset": "bigint", "amounts": "frozen<map<text, bigint>>"},
                         ["stream_topic", "stream_partition"], [("kind", "ASC"), ("item", "ASC")],
                         static=["owner", "next_offset"])
        create_fence_tables(s, ks)

    def truncate(self) -> None:
        """Empty every view and the bookkeeping tables (the fence stays): the next run replays the stream from
        its beginning, since its totals views resume at stored offsets and none are left. Stop every member of
        the projection's group first. Without a totals view nothing stores offsets: rebuild with a new group."""
        if not self.totals_views:
            raise ConfigError(f"projection {self.name}: without a totals view the stream resumes at the group's "
                              "Kafka offsets; rebuild into fresh tables with a new consumer group instead")
        for table in [*(v.table for v in self.views), f"{self.name}_state"]:
            self.session.execute(f"TRUNCATE {qualified(self.keyspace, table)}", timeout=120)

    def _statement(self, query: str) -> Any:
        found = self._prepared.get(query)
        if found is None:
            found = self._prepared[query] = prepare(self.session, query)
        return found

    # -- reads --------------------------------------------------------------------------------------------
    def totals(self, view: TotalsView, key: tuple[Any, ...]) -> dict[str, int]:
        """The totals of ``key`` (the sum of its rows over the stream partitions; 0 where none)."""
        where = " AND ".join(f"{k} = ?" for k in view.key)
        rows = self.session.execute(self._statement(
            f"SELECT {', '.join(view.values)} FROM {qualified(self.keyspace, view.table)} WHERE {where}"), key)
        out = {v: 0 for v in view.values}
        for row in rows:
            for v in view.values:
                out[v] += getattr(row, v) or 0
        return out

    def all_totals(self, view: TotalsView) -> dict[tuple[Any, ...], dict[str, int]]:
        """Every key's totals (a paged scan), keys whose totals are all 0 left out."""
        from cassandra.query import SimpleStatement

        out: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: {v: 0 for v in view.values})
        columns = ", ".join([*view.key, *view.values])
        for row in self.session.execute(SimpleStatement(
                f"SELECT {columns} FROM {qualified(self.keyspace, view.table)}", fetch_size=1000)):
            key = tuple(getattr(row, k) for k in view.key)
            for v in view.values:
                out[key][v] += getattr(row, v) or 0
        return {k: dict(v) for k, v in out.items() if any(v.values())}

    def sink(self, **options: Any) -> ProjectionSink:
        """The stage that folds the stream's records into the views (run it after a KafkaSource of the stream:
        ``rxcqrs.run(source, projection.sink())``)."""
        return ProjectionSink(self, **options)


@dataclass
class _Partition:
    """What the worker knows of one assigned stream partition (dropped on every assignment and revoke)."""

    epoch: int | None = None
    next_offset: int | None = None
    totals: dict[tuple[str, tuple[Any, ...]], dict[str, int]] = field(default_factory=dict)
    seen: dict[Any, int] = field(default_factory=dict)


class _NotConfirmed(Exception):
    """The group did not confirm an ownership: ``answer`` False (this member does not own it), None (unknown)."""

    def __init__(self, answer: bool | None) -> None:
        super().__init__(answer)
        self.answer = answer


class ProjectionSink(SinkBase):
    """Folds envelopes of stream records into the projection's views (see the module for the guarantees)."""

    def __init__(self, projection: Projection, *, group: str | None = None, backoff: Backoff | None = None,
                 max_records: int = 2000, partition_records: int = 200, fence_timeout: float = 30.0,
                 dead_letters: DeadLetters | None = None, clock: Clock = SYSTEM) -> None:
        """``clock`` times the epochs' deadlines and the confirmation's retries (see :mod:`rxcqrs.clock`)."""
        super().__init__()
        self._clock = clock
        self.projection = projection
        self.dead_letters = dead_letters
        self.group = group
        self.backoff = backoff or Backoff(0.05, 10.0)
        self.max_records = max_records
        self.partition_records = partition_records
        self.fence_timeout = fence_timeout
        self._lock = threading.Lock()
        self._queue: deque[Envelope[Any]] = deque()
        self._wake = threading.Event()
        self._stopped = False
        self._abandoned = False
        self._halt = threading.Event()  # set by abandon(): cuts a retry's wait short
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._fences: dict[str, Fence] = {}
        self._source: Any = None
        self.applied = 0
        self.skipped = 0
        self._worker = threading.Thread(target=self._loop, name=f"rxcqrs-{projection.name}-project", daemon=True)
        self._worker.start()

    # -- partitions (the client's rebalance thread) ---------------------------------------------------------
    def watch_partitions(self, source: Any) -> None:
        """Called by :func:`~rxcqrs.run`: the group and its assignments come from the source."""
        if self.group is None:
            self.group = source.group_id
        self._source = source
        source.on_assign(self._forget)
        source.on_revoke(self._forget)
        if self.projection.totals_views:
            source.start_at(self._stored_offsets)

    def _stored_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Where newly assigned stream partitions resume (the client's rebalance thread): the next offsets
        stored with the totals, the beginning for a partition without one; not Kafka's committed offsets,
        which may be behind (a crash before the commit) or ahead (offsets lost and reset to the latest). The
        committer calls it after the assign listeners, so what it reads seeds the partitions' bookkeeping; the
        worker's claim of a partition reads the next offset again (serially), in case a former owner's last
        write landed in between."""
        p = self.projection
        query = p._statement(f"SELECT stream_partition, next_offset FROM {p.state_table} WHERE stream_topic = ? "
                             "AND stream_partition IN ? PER PARTITION LIMIT 1")
        out: dict[TopicPartition, int] = {}
        for topic in sorted({tp.topic for tp in tps}):
            mine = [tp for tp in tps if tp.topic == topic]
            rows = p.session.execute(query, (topic, [tp.partition for tp in mine]), timeout=_START_TIMEOUT)
            stored = {int(row.stream_partition): int(row.next_offset or 0) for row in rows}
            out.update({tp: stored.get(tp.partition, 0) for tp in mine})
        with self._lock:  # the worker's skip check starts from what was read here (forgotten first: see _forget)
            for tp, offset in out.items():
                self._partitions[tp] = _Partition(next_offset=offset)
        return out

    def _forget(self, tps: list[TopicPartition]) -> None:
        with self._lock:
            for tp in tps:
                self._partitions.pop(tp, None)

    # -- the poll thread ----------------------------------------------------------------------------------
    def on_next(self, env: Envelope[Any]) -> None:
        self._begin()
        with self._lock:
            self._queue.append(env)
        self._wake.set()

    def close(self) -> None:
        self._stopped = True
        self._wake.set()

    def abandon(self) -> None:
        self._abandoned = True
        self._halt.set()
        with self._lock:
            waiting, self._queue = list(self._queue), deque()
        for env in waiting:
            env.nack(StageError(f"projection {self.projection.name}: abandoned at shutdown"))
            self._end()
        self._wake.set()

    # -- the worker ---------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped:
            self._wake.wait(0.5)
            self._wake.clear()
            while self._turn():
                pass

    def _turn(self) -> bool:
        """One turn: up to ``max_records`` queued records, at most ``partition_records`` of each stream
        partition (the rest go back, in order), every partition's writes sent at once; after a failure each
        partition again on its own, with its retries. False: nothing was queued."""
        with self._lock:
            taken = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_records))]
            by_partition: dict[TopicPartition, list[Envelope[Any]]] = defaultdict(list)
            later: list[Envelope[Any]] = []
            for env in taken:
                mine = by_partition[env.meta.tp]
                (mine if len(mine) < self.partition_records else later).append(env)
            self._queue.extendleft(reversed(later))
        if not taken:
            return False
        groups = []  # per partition: the records still current that are events, and their events
        for tp, envelopes in by_partition.items():
            live, events = self._decoded(self._drop_stale(envelopes))
            if live:
                groups.append((tp, live, events))
        if not groups:
            return True
        try:
            built = [(tp, live, *self._build(tp, live, events)) for tp, live, events in groups]
            self._write([writes for *_x, writes in built], groups[0][1][0])
        except Exception as exc:
            log.info("projection %s: a turn failed (%r); each partition again on its own", self.projection.name, exc)
            for tp, live, events in groups:
                self._forget([tp])
                try:
                    self._project(tp, live, events)
                except Exception as error:  # never let one partition's failure stop the worker
                    log.warning("projection %s: %s failed: %r", self.projection.name, tp, error)
                    self._settle(tp, live, self._as_stage_error(error, live[0]))
            return True
        for tp, live, part, _writes in built:
            part.next_offset = live[-1].meta.offset + 1
            self._settle(tp, live, None)
        return True

    def _decoded(self, envelopes: list[Envelope[Any]]) -> tuple[list[Envelope[Any]], list[StreamEvent[Any, Any]]]:
        """The records that are events of the stream, decoded. One that is not goes to the dead letters (acked
        once it was delivered there) with ``dead_letters``; without, it fails as permanent, with the records
        after it in its partition (they are delivered again), so nothing passes it."""
        live: list[Envelope[Any]] = []
        events: list[StreamEvent[Any, Any]] = []
        for i, env in enumerate(envelopes):
            try:
                event = self.projection.stream.decode(env.value)
            except SerializationError as exc:
                poison = PoisonRecordError(f"projection {self.projection.name}: {env.meta} is not an event of "
                                           f"{self.projection.stream.topic}: {exc}")
                poison.__cause__ = exc
                if self.dead_letters is None:
                    env.nack(poison)
                    later = envelopes[i + 1:]
                    for after in later:
                        after.nack(StageError(f"projection {self.projection.name}: {after.meta} follows a record "
                                              "that failed"))
                    self._end(1 + len(later))
                    break
                self.dead_letters.send(env, poison)
                self._end()
                continue
            live.append(env)
            events.append(event)
        return live, events

    def _settle(self, tp: TopicPartition, envelopes: list[Envelope[Any]], error: BaseException | None) -> None:
        if error is not None:
            self._forget([tp])  # the cache may hold what was not written
        for env in envelopes:
            if error is None:
                env.ack()
            else:
                env.nack(error)
        self._end(len(envelopes))

    def _drop_stale(self, envelopes: list[Envelope[Any]]) -> list[Envelope[Any]]:
        """The records of a current assignment; the others are nacked (they are delivered again)."""
        live: list[Envelope[Any]] = []
        for env in envelopes:
            if env.ticket.live():
                live.append(env)
            else:
                env.nack(StageError(f"projection {self.projection.name}: {env.meta} belongs to a revoked "
                                    "assignment"))
                self._end()
        return live

    def _as_stage_error(self, exc: BaseException, first: Envelope[Any]) -> StageError:
        """A failure as the source's failure policy sees it: permanent (a bad record, a refused request, a bug)
        or not (an outage outlasting the retries: the source rewinds and delivers the records again)."""
        if isinstance(exc, StageError):
            return exc
        text = f"projection {self.projection.name}: {exc!r} on {first.meta}"
        transient = not isinstance(exc, SerializationError) and classify(exc) is not Outcome.PERMANENT
        error = StageError(text) if transient else PermanentStageError(text)
        error.__cause__ = exc
        return error

    def _project(self, tp: TopicPartition, live: list[Envelope[Any]], events: list[StreamEvent[Any, Any]]) -> None:
        """Project the records; after a transient error or an unknown outcome (every write is idempotent) again
        from what Cassandra holds (the partition's cache may hold what was not written), until the backoff
        gives up or the sink stops."""
        attempt = 0
        while True:
            try:
                self._project_once(tp, live, events)
                return
            except Exception as exc:
                error = self._as_stage_error(exc, live[0])
                delay = self.backoff.delay(attempt)
                if isinstance(error, PermanentStageError) or self._abandoned or self._stopped:
                    raise error from exc
                if delay is None:
                    raise exhausted(f"projection {self.projection.name}", f" on {tp}", attempt, exc,
                                    self.backoff) from exc
                self._forget([tp])
                attempt += 1
                log.info("projection %s: %s failed (%r); again in %.2fs", self.projection.name, tp, exc, delay)
                self._halt.wait(delay)  # the worker's own thread; abandon() cuts it short

    def _project_once(self, tp: TopicPartition, live: list[Envelope[Any]], events: list[StreamEvent[Any, Any]]
                      ) -> None:
        part, writes = self._build(tp, live, events)
        self._write([writes], live[0])
        part.next_offset = live[-1].meta.offset + 1
        self._settle(tp, live, None)

    def _build(self, tp: TopicPartition, live: list[Envelope[Any]], events: list[StreamEvent[Any, Any]]
               ) -> tuple[_Partition, _Writes]:
        """The writes of a partition's records (reading what the partition's cache lacks)."""
        p = self.projection
        with self._lock:
            part = self._partitions.setdefault(tp, _Partition())
        rows = [s for event in events for view in p.entity_views for s in self._entity_rows(view, event)]
        state, copies = self._totals_writes(tp, part, live, events) if p.totals_views else (None, None)
        return part, _Writes(tp, part.epoch, [*rows, *([copies] if copies is not None else [])], state)

    def _write(self, writes: list[_Writes], first: Envelope[Any]) -> None:
        """The idempotent rows of every partition at once (entity views, the copies of the totals), then every
        partition's state, each conditional on its owner. Rows before the state: a crash between them leaves
        the records unapplied (the stored offset did not move), so they are projected again to the same rows;
        a member that lost a partition writes rows that lose to the new owner's (fenced) and no state."""
        self._execute([s for w in writes for s in w.rows], first)
        conditional = [w for w in writes if w.state is not None]
        for w, result in zip(conditional, self._execute([w.state for w in conditional], first), strict=True):
            row = result.one()
            if row is not None and not row[0]:
                raise StageError(f"projection {self.projection.name}: {w.tp} is owned by a newer member (owner "
                                 f"{getattr(row, 'owner', None)}, this member's epoch {w.epoch}); its records are "
                                 "delivered again")

    def _entity_rows(self, view: EntityView, event: StreamEvent[Any, Any]) -> list[Any]:
        """The view's writes for ``event``: the rows of ``after`` in, those of ``before`` only out, at the
        event's position."""
        table = qualified(self.projection.keyspace, view.table)
        key = list(view.key)
        after = {tuple(row[k] for k in key): row for row in view.rows(event.entity, event.after)}
        before = [tuple(row[k] for k in key) for row in view.rows(event.entity, event.before)]
        out = []
        where = " AND ".join(f"{k} = ?" for k in key)
        for gone in before:
            if gone not in after:
                delete = self.projection._statement(f"DELETE FROM {table} USING TIMESTAMP ? WHERE {where}")
                out.append(_idempotent(delete.bind([event.position, *gone])))
        for row in after.values():
            columns = list(view.columns)
            insert = self.projection._statement(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                                f"({', '.join('?' * len(columns))}) USING TIMESTAMP ?")
            out.append(_idempotent(insert.bind([*(row.get(c) for c in columns), event.position])))
        return out

    def _totals_writes(self, tp: TopicPartition, part: _Partition, envelopes: list[Envelope[Any]],
                       events: list[StreamEvent[Any, Any]]) -> tuple[Any, Any]:
        """The partition's state (changed totals, the entities' positions, the next offset) as one batch
        conditional on the owner (one Cassandra partition: all or nothing), and the view rows copied from it,
        fenced (the rows of records the stored offset already covers are copied again). ``None`` for either
        when it has nothing to write."""
        from cassandra.query import BatchStatement, BatchType

        p = self.projection
        self._ensure_epoch(tp, part)
        assert part.epoch is not None and part.next_offset is not None
        changed: set[tuple[str, tuple[Any, ...]]] = set()
        copied: set[tuple[str, tuple[Any, ...]]] = set()  # rows of records already applied: copied again
        positions: dict[Any, int] = {}
        for env, event in zip(envelopes, events, strict=True):
            if env.meta.offset < part.next_offset:
                self.skipped += 1
                copied.update((view.table, key) for view in p.totals_views for key in view.deltas(event))
                continue
            seen = self._seen(tp, part, event.entity)
            if event.position <= seen:
                self.skipped += 1  # a repeat on the stream (the command side decided it again)
                continue
            for view in p.totals_views:
                for key, amounts in view.deltas(event).items():
                    values = self._total(tp, part, view, key)
                    for name, amount in amounts.items():
                        values[name] += amount
                    changed.add((view.table, key))
            part.seen[event.entity] = positions[event.entity] = event.position
            self.applied += 1
        last = envelopes[-1].meta.offset
        views = {v.table: v for v in p.totals_views}
        copies = None
        if changed or copied:
            stamp = write_timestamp(part.epoch, max(last, part.next_offset - 1))
            copies = BatchStatement(BatchType.UNLOGGED)  # idempotent, and written again until the state is
            for table, key in sorted(changed | copied, key=repr):
                view = views[table]
                values = self._total(tp, part, view, key)
                columns = [*view.key, "stream_partition", *view.values]
                insert = p._statement(f"INSERT INTO {qualified(p.keyspace, table)} ({', '.join(columns)}) VALUES "
                                      f"({', '.join('?' * len(columns))}) USING TIMESTAMP ?")
                copies.add(insert, [*key, tp.partition, *(values[v] for v in view.values), stamp])
            copies.is_idempotent = True
        if last < part.next_offset:
            return None, copies
        state = BatchStatement(BatchType.UNLOGGED)
        state.add(p._statement(f"UPDATE {p.state_table} SET next_offset = ? WHERE stream_topic = ? AND "
                               "stream_partition = ? IF owner = ?"), (last + 1, tp.topic, tp.partition, part.epoch))
        amounts = p._statement(f"UPDATE {p.state_table} SET amounts = ? WHERE stream_topic = ? AND "
                               "stream_partition = ? AND kind = ? AND item = ?")
        for table, key in sorted(changed, key=repr):
            state.add(amounts, (self._total(tp, part, views[table], key), tp.topic, tp.partition, table, _item(key)))
        for entity, position in positions.items():
            state.add(amounts, ({"position": position}, tp.topic, tp.partition, _POSITIONS, _item(entity)))
        return state, copies

    def _ensure_epoch(self, tp: TopicPartition, part: _Partition) -> None:
        if part.epoch is not None:
            return
        if self.group is None:
            raise ConfigError(f"projection {self.projection.name}: fenced totals need the consumer group (run the "
                              "sink from a KafkaSource with rxcqrs.run, or pass group=...)")
        fence = self._fences.get(tp.topic)
        if fence is None:
            fence = self._fences[tp.topic] = Fence(self.projection.session, self.projection.keyspace,
                                                   f"{self.group}/{self.projection.name}", tp.topic,
                                                   clock=self._clock)
        epoch = fence.take(deadline=self._clock.now() + self.fence_timeout)
        self._confirm(tp)
        part.next_offset = self._claim(tp, epoch)
        part.epoch = epoch

    def _claim(self, tp: TopicPartition, epoch: int) -> int:
        """Make ``epoch`` the owner of ``tp``'s state; the stored next offset. A serial read of the owner and the
        next offset, then ``IF owner = <read> AND next_offset = <read>`` (a write that came in between is read
        again); refused when a newer epoch owns it. Retried within ``fence_timeout``: a lost answer is found
        out by the next serial read (the owner is this epoch)."""
        p = self.projection
        read = p._statement(f"SELECT owner, next_offset FROM {p.state_table} WHERE stream_topic = ? AND "
                            "stream_partition = ? LIMIT 1")
        claim = p._statement(f"UPDATE {p.state_table} SET owner = ? WHERE stream_topic = ? AND stream_partition = ? "
                             "IF owner = ? AND next_offset = ?")

        def attempt(_left: float) -> int:
            bound = read.bind((tp.topic, tp.partition))
            bound.consistency_level = serial_consistency(p.session)
            row = p.session.execute(bound).one()
            owner, next_offset = (None, None) if row is None else (row.owner, row.next_offset)
            if owner is not None and owner > epoch:
                raise StageError(f"projection {p.name}: {tp} is owned by a newer member (owner {owner}, this "
                                 f"member's epoch {epoch}); its records are delivered again")
            if owner != epoch:
                answer = p.session.execute(claim, (epoch, tp.topic, tp.partition, owner, next_offset)).one()
                if answer is not None and not answer[0]:
                    raise _Moved()
            return 0 if next_offset is None else int(next_offset)

        def again(error: Exception) -> bool:
            return isinstance(error, _Moved) or (not isinstance(error, StageError)
                                                 and classify(error) is not Outcome.PERMANENT)

        return retry_until(attempt, self._clock.now() + self.fence_timeout, again, self.backoff, self._clock,
                           give_up=True)

    def _confirm(self, tp: TopicPartition) -> None:
        """Use a new epoch only once the group confirms this member still owns ``tp``: a member that woke up
        after its partitions moved on must not outrank their new owner with an epoch taken afterwards. An
        unknown answer (the broker did not answer) is asked again, within ``fence_timeout``."""
        source = self._source
        if source is None:
            return

        def ask(left: float) -> None:
            answered = threading.Event()
            answer: list[bool | None] = [None]

            def heard(confirmed: bool | None) -> None:
                answer[0] = confirmed
                answered.set()

            source.confirm_ownership([tp], heard)
            self._clock.wait(answered, left)
            if answer[0] is not True:
                raise _NotConfirmed(answer[0])

        def unknown(error: Exception) -> bool:
            return isinstance(error, _NotConfirmed) and error.answer is None

        try:
            retry_until(ask, self._clock.now() + self.fence_timeout, unknown, self.backoff, self._clock, give_up=True)
        except _NotConfirmed:
            raise StageError(f"projection {self.projection.name}: the group did not confirm that this member owns "
                             f"{tp} (it may have been fenced out); its records are delivered again") from None

    def _seen(self, tp: TopicPartition, part: _Partition, entity: Any) -> int:
        found = part.seen.get(entity)
        if found is None:
            amounts = self._stored(tp, _POSITIONS, _item(entity))
            found = part.seen[entity] = -1 if amounts is None else int(amounts["position"])
        return found

    def _total(self, tp: TopicPartition, part: _Partition, view: TotalsView, key: tuple[Any, ...]) -> dict[str, int]:
        found = part.totals.get((view.table, key))
        if found is None:
            amounts = self._stored(tp, view.table, _item(key)) or {}
            found = part.totals[(view.table, key)] = {v: int(amounts.get(v) or 0) for v in view.values}
        return found

    def _stored(self, tp: TopicPartition, kind: str, item: str) -> Mapping[str, int] | None:
        """The amounts of one item of ``tp``'s state (read once the partition is claimed: nobody else writes it)."""
        p = self.projection
        row = p.session.execute(p._statement(
            f"SELECT amounts FROM {p.state_table} WHERE stream_topic = ? AND stream_partition = ? AND kind = ? AND "
            "item = ?"), (tp.topic, tp.partition, kind, item)).one()
        return None if row is None or row.amounts is None else row.amounts

    def _execute(self, statements: list[Any], first: Envelope[Any]) -> list[Any]:
        """Send every statement at once; their results once all succeeded, or raise the first error (a permanent
        one before the others: it decides how the records are nacked). Each wait is bounded by the driver's
        request timeout."""
        futures = [self.projection.session.execute_async(s) for s in statements]
        errors: list[BaseException] = []
        results = []
        for future in futures:
            try:
                results.append(future.result())
            except Exception as exc:
                errors.append(exc)
        if errors:
            permanent = [e for e in errors if classify(e) is Outcome.PERMANENT]
            if permanent:
                raise PermanentStageError(f"projection {self.projection.name}: {permanent[0]!r} on {first.meta}"
                                          ) from permanent[0]
            raise errors[0]
        return results


@dataclass
class _Writes:
    """A partition's writes of one turn: idempotent ``rows`` (entity views, copies of the totals), then its
    ``state``, conditional on ``epoch`` owning it (``None``: the records moved no state)."""

    tp: TopicPartition
    epoch: int | None
    rows: list[Any]
    state: Any


class _Moved(Exception):
    """A partition's state changed between the claim's read and its write (read again)."""


def _item(key: Any) -> str:
    """A totals key (a tuple of CQL values) or an entity as the state table's ``item``: its ``repr``, one text
    per value for the types a key holds (uuid, text, numbers, dates, tuples of them)."""
    return repr(key)


def _idempotent(bound: Any) -> Any:
    bound.is_idempotent = True
    return bound
