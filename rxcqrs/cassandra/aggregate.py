"""AggregateSink: commands applied per entity in batches, one optimistic-locking write per batch.

The commands of one entity (one cart) that wait together are folded over the entity's cached state and
written back with **one** conditional write (``IF seq = ?``) that also records the source offsets applied
(partition -> highest offset): one lightweight transaction for many commands instead of one each. Then the
batch's events go to the event log, per entity partition, as unlogged batches capped in rows and bytes
(every delivery is logged, redeliveries included, so the query side still sees duplicates), together with
the rows recording rejected commands. (After a crash between the two steps, a redelivery logs the events
again; the rejection rows of that batch are not recorded a second time.) Every record is
acked on its own once its batch is written; a rejected command is recorded and acked; nothing of a batch
is acked before its writes succeeded, so the commit gate never passes an unfinished record.

No read on the hot path: the last written state of each entity is cached (bounded, least recently used
first out; :meth:`AggregateSink.forget` drops the entities of revoked partitions). An entity is read only
on a cache miss or after a conflict, and always asynchronously (``execute_async``): no thread blocks.

Outcomes (see :mod:`rxcqrs.cassandra.outcomes`): a conflict re-reads and folds again; a transient error
retries the step with the shared backoff; an unknown outcome of the conditional write is resolved by a
serial read of the entity (did it record this batch's offsets?) and never blindly re-sent; a permanent
error nacks the whole batch at once. Event writes are idempotent and simply retried.

Threads (see :mod:`rxcqrs.kafka`): ``on_next`` runs on the poll thread and only queues; a dispatcher thread
starts batches; the steps of a batch continue on the driver's callback threads and never block them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Hashable, Iterable, Mapping, Protocol, TypeVar

from rxcqrs.backoff import Backoff
from rxcqrs.cassandra.executor import was_applied
from rxcqrs.cassandra.outcomes import Outcome, classify
from rxcqrs.exceptions import ConfigError, PermanentStageError, RetriesExhaustedError, StageError, UnknownOutcomeError
from rxcqrs.messages import Envelope, RecordMetadata, TopicPartition
from rxcqrs.sink import SinkBase
from rxcqrs.timers import call_later

__all__ = ["AggregateSink", "Aggregate", "Stored", "Applied", "Rejection"]

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
S = TypeVar("S")
C = TypeVar("C")


@dataclass(frozen=True)
class Stored(Generic[S]):
    """An entity as stored: its state (``None``: none, or deleted), its write counter (``None``: no row)
    and the source offsets it has applied (partition -> highest offset)."""

    state: S | None
    seq: int | None
    applied: Mapping[int, int] = field(default_factory=dict)

    def handled(self, meta: RecordMetadata) -> bool:
        return self.applied.get(meta.partition, -1) >= meta.offset


@dataclass(frozen=True)
class Applied(Generic[S]):
    """A command's decision: the new state (``None``: deleted)."""

    state: S | None


@dataclass(frozen=True)
class Rejection:
    """A command's decision: refused for this state (recorded and acked, never retried)."""

    reason: str


class Aggregate(Protocol[K, S, C]):
    """Your entity type: how to find, read, decide and write it. Every method but :meth:`prepare` may run on
    a driver callback thread and must not block: prepare statements in :meth:`prepare`."""

    def prepare(self) -> None:
        """Prepare every statement (blocking round trips); called once by the sink, on the caller's thread."""

    def key(self, command: C) -> K:
        """The entity a command belongs to (e.g. the cart id)."""

    def read(self, key: K, serial: bool) -> Any:
        """A statement reading the entity's row (``serial``: through Paxos, to settle an unknown outcome)."""

    def stored(self, rows: Any) -> Stored[S]:
        """The rows of :meth:`read` as a :class:`Stored`."""

    def decide(self, state: S | None, command: C, meta: RecordMetadata) -> Applied[S] | Rejection:
        """Apply one command to a state (pure: no I/O)."""

    def update(self, key: K, before: Stored[S], state: S | None, applied: dict[int, int]) -> Any:
        """The conditional write replacing ``before`` (``IF seq = before.seq``, or ``IF NOT EXISTS``)."""

    def events(self, key: K, records: list[tuple[C, RecordMetadata]]) -> list[Any]:
        """Event-log statements for the records of a batch (one entity partition; batched by the sink)."""

    def record_rejections(self, key: K, rejected: list[tuple[C, RecordMetadata, str]]) -> list[Any]:
        """Idempotent statements recording rejected commands."""


@dataclass(eq=False)
class _Batch:
    key: Any
    envelopes: list[Envelope[Any]]
    attempt: int = 0
    stored: Any = None
    after: Stored[Any] | None = None
    step: str = "read"
    #: records the entity had already applied when this batch was first folded (redeliveries); any other
    #: record found applied later was applied by this batch's own write, whose answer was lost or late
    redelivered: set[int] | None = None
    #: rejection records of the last fold, written with the events once the state write succeeded
    rejections: list[Any] = field(default_factory=list)

    def count(self, name: str, n: int = 1) -> None:
        if self.envelopes:
            self.envelopes[0].count(name, n)

    def where(self) -> str:
        first, last = self.envelopes[0].meta, self.envelopes[-1].meta
        return f"{first}" if len(self.envelopes) == 1 else f"{first}..{last.offset} ({len(self.envelopes)} records)"


class AggregateSink(SinkBase, Generic[K, S, C]):
    def __init__(self, session: Any, aggregate: Aggregate[K, S, C], *, idempotent: bool = True,
                 max_concurrency: int = 32, max_batch: int = 500, cache_size: int = 100_000,
                 batch_rows: int = 100, batch_bytes: int = 40_000, linger: float = 0.002,
                 backoff: Backoff | None = None, name: str = "aggregate") -> None:
        super().__init__()
        if max_concurrency < 1 or max_batch < 1 or cache_size < 1 or batch_rows < 1:
            raise ConfigError("max_concurrency, max_batch, cache_size and batch_rows must be >= 1")
        self.session = session
        self.aggregate = aggregate
        self.idempotent = idempotent
        self.max_concurrency = max_concurrency
        self.max_batch = max_batch
        self.cache_size = cache_size
        self.batch_rows = batch_rows
        self.batch_bytes = batch_bytes
        self.linger = linger
        self.backoff = backoff or Backoff()
        self.name = name
        aggregate.prepare()  # blocking: here, never on a driver callback thread
        self._lock = threading.Lock()
        self._pending: dict[Hashable, deque[Envelope[Any]]] = {}
        self._ready: deque[Hashable] = deque()  # keys with pending commands and no batch in flight
        self._busy: set[Hashable] = set()
        self._cache: OrderedDict[Hashable, tuple[Stored[Any], TopicPartition]] = OrderedDict()
        self._abandoned = False
        self._stopped = False
        self._wake = threading.Event()
        self.batches = 0
        self.reads = 0
        #: redelivered commands recognised and skipped (idempotent) or applied again (not idempotent)
        self.skipped = 0
        self.reapplied = 0
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name=f"rxcqrs-{name}-dispatch", daemon=True)
        self._dispatcher.start()

    # -- intake (the poll thread) -------------------------------------------------------------------------
    def on_next(self, env: Envelope[C]) -> None:
        try:
            key = self.aggregate.key(env.value)
        except Exception as exc:
            env.nack(PermanentStageError(f"{self.name}: no entity key for {env.meta}: {exc!r}"))
            return
        self._begin()
        with self._lock:
            if self._abandoned:
                abandoned = True
            else:
                abandoned = False
                queue = self._pending.get(key)
                if queue is None:
                    queue = self._pending[key] = deque()
                    if key not in self._busy:
                        self._ready.append(key)
                queue.append(env)
        if abandoned:
            env.nack(StageError(f"{self.name}: abandoned at shutdown"))
            self._end()
            return
        self._wake.set()

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop the cached entities of ``partitions`` (revoked: another member may write them now)."""
        gone = set(partitions)
        with self._lock:
            for key in [k for k, (_s, tp) in self._cache.items() if tp in gone]:
                del self._cache[key]

    # -- dispatch -----------------------------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        while True:
            self._wake.wait()
            if self._stopped:
                return
            time.sleep(self.linger)  # let a burst of records of one poll gather into batches
            self._wake.clear()
            self._start_ready()

    def _start_ready(self) -> None:
        while True:
            with self._lock:
                if not self._ready or len(self._busy) >= self.max_concurrency:
                    return
                key = self._ready.popleft()
                taken = self._take(key)
                if taken is None:
                    continue
                self._busy.add(key)
            self._start(*taken)

    def _take(self, key: Hashable) -> tuple[_Batch, Stored[Any] | None] | None:
        """Under the lock: the next batch of ``key`` (its waiting commands, up to ``max_batch``) and the
        cached state, or None if nothing waits."""
        queue = self._pending.get(key)
        if not queue:
            self._pending.pop(key, None)
            return None
        envelopes = [queue.popleft() for _ in range(min(len(queue), self.max_batch))]
        if not queue:
            del self._pending[key]
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
        return _Batch(key, envelopes), (cached[0] if cached is not None else None)

    def _start(self, batch: _Batch, cached: Stored[Any] | None) -> None:
        self.batches += 1
        if cached is not None:
            batch.stored = cached
            self._fold(batch)
        else:
            self._read(batch)

    # -- the steps of a batch (driver callback threads) ---------------------------------------------------
    def _execute(self, batch: _Batch, statement: Any, on_rows: Callable[[Any], None], *, sent_is_unknown: bool
                 ) -> None:
        try:
            future = self.session.execute_async(statement)
        except Exception as exc:
            self._failed(batch, exc, sent=False)
            return

        def errback(error: BaseException) -> None:
            self._failed(batch, error, sent=sent_is_unknown)

        future.add_callbacks(on_rows, errback)

    def _read(self, batch: _Batch, serial: bool = False) -> None:
        batch.step = "resolve" if serial else "read"
        self.reads += 1
        self._execute(batch, self.aggregate.read(batch.key, serial), lambda rows: self._on_read(batch, rows, serial),
                      sent_is_unknown=False)

    def _on_read(self, batch: _Batch, rows: Any, serial: bool) -> None:
        try:
            stored = self.aggregate.stored(rows)
        except Exception as exc:
            self._finish(batch, PermanentStageError(f"{self.name}: cannot read {batch.key!r}: {exc!r}"))
            return
        batch.stored = stored
        if serial:  # resolving an unknown outcome: did the entity record this batch?
            if all(stored.handled(env.meta) for env in batch.envelopes):
                batch.count("unknown_resolved_applied")
                self._remember(batch, stored)
                self._write_events(batch)
                return
            batch.count("unknown_resolved_not_applied")
        self._fold(batch)

    def _fold(self, batch: _Batch) -> None:
        """Decide every command of the batch over the state; then the rejections and the one write."""
        stored: Stored[Any] = batch.stored
        state, applied = stored.state, dict(stored.applied)
        rejected: list[tuple[Any, RecordMetadata, str]] = []
        changed = False
        first_fold = batch.redelivered is None
        if batch.redelivered is None:
            batch.redelivered = {i for i, env in enumerate(batch.envelopes) if stored.handled(env.meta)}
        elif any(stored.handled(env.meta) for i, env in enumerate(batch.envelopes) if i not in batch.redelivered):
            # a record that was new to the entity is applied now: this batch's own earlier write landed (its
            # answer was lost, or it completed after a read that said otherwise); never apply it twice
            batch.count("unknown_resolved_applied")
            self._remember(batch, stored)
            self._write_events(batch)
            return
        try:
            for env in batch.envelopes:
                meta = env.meta
                if stored.handled(meta):
                    if self.idempotent:
                        if first_fold:
                            self.skipped += 1
                            env.count("redelivered_skipped")
                        continue
                    if first_fold:
                        self.reapplied += 1
                        env.count("redelivered_reapplied")
                decision = self.aggregate.decide(state, env.value, meta)
                if isinstance(decision, Rejection):
                    rejected.append((env.value, meta, decision.reason))
                else:
                    state = decision.state
                applied[meta.partition] = max(meta.offset, applied.get(meta.partition, -1))
                changed = True
            if not changed:  # every record was already applied: only log the redeliveries
                self._write_events(batch)
                return
            batch.after = Stored(state, (stored.seq or 0) + 1, applied)
            write = self.aggregate.update(batch.key, stored, state, applied)
            batch.rejections = self.aggregate.record_rejections(batch.key, rejected) if rejected else []
        except Exception as exc:  # a bug in decide/write: retrying cannot help
            self._finish(batch, PermanentStageError(f"{self.name}: {exc!r} on {batch.where()}"))
            return
        self._write(batch, write)

    def _write(self, batch: _Batch, statement: Any) -> None:
        batch.step = "write"
        self._execute(batch, statement, lambda rows: self._on_written(batch, rows), sent_is_unknown=True)

    def _on_written(self, batch: _Batch, rows: Any) -> None:
        if was_applied(rows) is False:  # a conflict: another writer moved the entity; read it and fold again
            batch.count("cassandra_not_applied")
            with self._lock:
                self._cache.pop(batch.key, None)
            self._retry(batch, StageError("optimistic-lock conflict"), lambda: self._read(batch))
            return
        batch.count("cassandra_applied")
        assert batch.after is not None
        self._remember(batch, batch.after)
        self._write_events(batch)

    def _write_events(self, batch: _Batch) -> None:
        batch.step = "events"
        try:
            statements = batch.rejections + self.aggregate.events(batch.key,
                                                                  [(env.value, env.meta) for env in batch.envelopes])
        except Exception as exc:
            self._finish(batch, PermanentStageError(f"{self.name}: {exc!r} on {batch.where()}"))
            return
        self._run_all(batch, _batches(statements, self.batch_rows, self.batch_bytes), lambda: self._finish(batch, None))

    def _run_all(self, batch: _Batch, statements: list[Any], then: Callable[[], None]) -> None:
        """Execute idempotent statements together; ``then`` once all succeeded."""
        if not statements:
            then()
            return
        left = [len(statements)]
        lock = threading.Lock()

        def done(_rows: Any) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                then()

        failed = [False]

        def retry_all(error: BaseException) -> None:
            with lock:
                if failed[0]:
                    return
                failed[0] = True
            self._failed(batch, error, sent=False, again=lambda: self._run_all(batch, statements, then))

        for statement in statements:
            try:
                future = self.session.execute_async(statement)
            except Exception as exc:
                retry_all(exc)
                return
            future.add_callbacks(done, retry_all)

    # -- outcomes -----------------------------------------------------------------------------------------
    def _failed(self, batch: _Batch, error: BaseException, *, sent: bool,
                again: Callable[[], None] | None = None) -> None:
        outcome = classify(error, sent=sent)
        batch.count(f"cassandra_{outcome.value}")
        if outcome is Outcome.PERMANENT:
            failure = PermanentStageError(f"{self.name}: {error!r} on {batch.where()} cannot succeed by retrying")
            failure.__cause__ = error
            self._finish(batch, failure)
        elif outcome is Outcome.UNKNOWN:  # the conditional write may have applied: read (serially) and see
            self._retry(batch, error, lambda: self._read(batch, serial=True))
        elif again is not None:
            self._retry(batch, error, again)
        elif batch.step == "write":  # the write failed before anything was applied: decide again on fresh state
            self._retry(batch, error, lambda: self._read(batch))
        else:
            self._retry(batch, error, lambda: self._read(batch, serial=batch.step == "resolve"))

    def _retry(self, batch: _Batch, error: BaseException, step: Callable[[], None]) -> None:
        delay = self.backoff.delay(batch.attempt)
        if delay is None:
            if batch.step == "resolve":
                failure: StageError = UnknownOutcomeError(
                    f"{self.name}: the outcome of the write of {batch.where()} is unknown and could not be read "
                    f"({error!r}); the flow stops and the records are delivered again after a restart")
            else:
                failure = RetriesExhaustedError(f"{self.name}: gave up on {batch.where()} after {batch.attempt} "
                                                f"retries; last error: {error!r}")
            failure.__cause__ = error
            self._finish(batch, failure)
            return
        batch.attempt += 1
        batch.count("retries")
        if self._abandoned:
            self._finish(batch, StageError(f"{self.name}: abandoned at shutdown"))
            return
        call_later(delay, step)

    def _remember(self, batch: _Batch, stored: Stored[Any]) -> None:
        meta = batch.envelopes[-1].meta
        with self._lock:
            self._cache[batch.key] = (stored, meta.tp)
            self._cache.move_to_end(batch.key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _finish(self, batch: _Batch, error: BaseException | None) -> None:
        for env in batch.envelopes:
            if error is None:
                env.ack()
            else:
                env.nack(error)
        with self._lock:
            if error is not None:
                self._cache.pop(batch.key, None)
            # what gathered for this entity meanwhile goes at once, as the next batch (no linger)
            following = None if self._abandoned else self._take(batch.key)
            if following is None:
                self._busy.discard(batch.key)
        for _ in batch.envelopes:
            self._end()
        if following is not None:
            self._start(*following)
        elif self._ready:
            self._wake.set()

    # -- shutdown -----------------------------------------------------------------------------------------
    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            waiting = [env for queue in self._pending.values() for env in queue]
            self._pending.clear()
            self._ready.clear()
        for env in waiting:
            env.nack(StageError(f"{self.name}: abandoned at shutdown"))
            self._end()

    def close(self) -> None:
        self._stopped = True
        self._wake.set()


def _batches(statements: list[Any], rows: int, size: int) -> list[Any]:
    """Group statements per partition (routing key) into unlogged batches below Cassandra's batch limits
    (rows and approximate bytes); a group of one is sent as that statement."""
    from cassandra.query import BatchStatement, BatchType, BoundStatement

    groups: list[list[Any]] = []
    open_groups: dict[Any, tuple[list[Any], int]] = {}
    for statement in statements:
        if not isinstance(statement, BoundStatement):  # only bound statements can join a batch
            groups.append([statement])
            continue
        cost = _size(statement)
        partition = getattr(statement, "routing_key", None)
        group, weight = open_groups.get(partition, (None, 0))
        if group is None or len(group) >= rows or weight + cost > size:
            group, weight = [], 0
            groups.append(group)
        group.append(statement)
        open_groups[partition] = (group, weight + cost)
    out = []
    for group in groups:
        if len(group) == 1:
            out.append(group[0])
            continue
        batch = BatchStatement(BatchType.UNLOGGED)
        for statement in group:
            batch.add(statement)
        batch.is_idempotent = True
        out.append(batch)
    return out


def _size(statement: Any) -> int:
    """Roughly the bytes a bound statement sends (its serialized values)."""
    values = getattr(statement, "values", None) or ()
    return 64 + sum(len(v) if isinstance(v, (bytes, bytearray)) else 16 for v in values)
