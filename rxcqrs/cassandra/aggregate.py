"""AggregateSink: the command engine. An entity's waiting commands are folded together and written once.

The commands of one entity that wait together (a *batch*, one partition's records of one key) are decided
over the entity's state, and the result is written in four steps, each only after the one before succeeded
(the last two at once):

1. **decisions**: the rows recording commands that were refused, and the events an aggregate decided and
   logs with its decision (``Applied.records``; both idempotent, as unlogged batches per partition);
2. **state**: the entity's new state with the source offsets it has applied (partition -> highest offset):
   * ``write_protocol="fenced"`` (the default): a plain write ``USING TIMESTAMP epoch * 2**40 + offset``
     (see :mod:`rxcqrs.cassandra.fence`); idempotent, so every failure is simply retried;
   * ``"conditional"``: a lightweight transaction ``IF seq = ?``; a conflict reads and folds again, an
     unknown outcome is resolved by a serial read of whether the entity recorded the batch's offsets;
3. **events**: every delivery logged (redeliveries included), as unlogged batches per partition;
4. **index**: what the event log's readers need to find the events (its bucket index). Steps 3 and 4 are
   idempotent and written again on every delivery, so they need no order between them. When the decisions
   carry the events (a decider's), their index goes with step 1 instead (an index row before its events is
   harmless): a batch then takes two round trips, not three.

A crash after any step leaves the records uncommitted; their redelivery finds them applied (``applied``),
skips the decision and writes steps 3 and 4 again; the rows of step 1 were written before the state that
records them, so none is ever lost (a crash between steps 1 and 2 decides the same again, and writes the
same rows). Every record is acked once its batch's steps all succeeded, so
the commit gate never passes a record whose writes are unfinished.

Fencing and the cache: the sink takes an epoch for every partition assignment its source tells it of
(:mod:`rxcqrs.partitions`) and starts that partition's batches only once the group confirmed this member
still owns it (:mod:`rxcqrs.cassandra.epochs`). The last written state of each entity
is cached (bounded, least recently used first out) *for the epoch it was read or written in*: revokes and
assignments drop it, and a batch never uses a state cached under another epoch. Records of a revoked or
rewound assignment (their ticket is not live any more) are dropped before they are decided: they are
delivered again. An entity is read only on a cache miss, at the session's consistency (``LOCAL_QUORUM``).

Threads (see :mod:`rxcqrs.kafka`): ``on_next`` runs on the poll thread and only queues; a dispatcher thread
(the engine's worker) starts batches (after ``linger``, so a poll's records gather) and runs their steps:
the driver's callbacks only hand a batch's next step over, never block and never decide. What the worker's
steps send at one moment leaves together: the single-row writes of several batches as one unlogged request
(``merge_partitions``), the reads of entities missing the cache as one ``IN`` read (an aggregate with
:class:`ManyReads`); the outboxes leave as soon as they hold a full request, while the rest of a burst is
decided. The epochs' fencer thread takes epochs (blocking round trips, never on a driver thread);
retries run after their backoff on a timer thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Generic, Hashable, Iterable, Mapping, Protocol, Sequence, TypeVar

from rxcqrs import tracing
from rxcqrs.backoff import Backoff
from rxcqrs.cassandra.answers import on_answer
from rxcqrs.cassandra.epochs import AssignmentEpochs, EpochSource
from rxcqrs.cassandra.executor import was_applied
from rxcqrs.cassandra.fence import Fence, WriteProtocol, check_protocol, write_timestamp
from rxcqrs.cassandra.keyed import KeyedQueue
from rxcqrs.cassandra.outcomes import Outcome, classify
from rxcqrs.cassandra.retrying import abandoned, exhausted, permanent, retry_later
from rxcqrs.cassandra.statement_batches import group_statements, requests_of, statements_size
from rxcqrs.clock import SYSTEM, Clock
from rxcqrs.exceptions import ConfigError, PermanentStageError, StageError, UnknownOutcomeError
from rxcqrs.messages import Batch, Envelope, RecordMetadata, TopicPartition
from rxcqrs.partitions import Assignments
from rxcqrs.sink import SinkBase

__all__ = ["AggregateSink", "Aggregate", "ManyReads", "Stored", "Applied", "Rejection", "STEPS"]

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
S = TypeVar("S")
C = TypeVar("C")

#: the write steps of a batch, in order
STEPS = ("decisions", "state", "events", "index")
#: steps sent together once the state is written: each is idempotent and written again on every delivery
_LOG_STEPS = frozenset({"events", "index"})


@dataclass(frozen=True)
class Stored(Generic[S]):
    """An entity as stored: its state (``None``: none, or deleted), its write counter (conditional writes;
    ``None``: no row) and the source offsets it has applied (partition -> highest offset)."""

    state: S | None
    seq: int | None
    applied: Mapping[int, int] = field(default_factory=dict)

    def handled(self, meta: RecordMetadata) -> bool:
        return self.applied.get(meta.partition, -1) >= meta.offset


@dataclass(frozen=True)
class Applied(Generic[S]):
    """A command's decision: the new state (``None``: deleted), and ``records``: idempotent statements written
    before the state that records the command (the events a decider logs with its decisions; not written by a
    sink whose event log is another branch's, ``log_events=False``)."""

    state: S | None
    records: Sequence[Any] = ()
    #: what the engine publishes before the decisions and the state (an aggregate's event stream; sent when
    #: the sink has a ``publisher``): a crash after it decides the same again and publishes it again
    published: Sequence[Any] = ()


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
        """The entity a command belongs to (e.g. the cart id). An entity's commands must share a partition."""

    def read(self, key: K, serial: bool) -> Any:
        """A statement reading the entity's row (``serial``: through Paxos, to settle an unknown outcome)."""

    def stored(self, rows: Any) -> Stored[S]:
        """The rows of :meth:`read` as a :class:`Stored`."""

    def decide(self, state: S | None, command: C, meta: RecordMetadata) -> Applied[S] | Rejection:
        """Apply one command to a state (pure and deterministic: no I/O, no clock, no random ids)."""

    def write(self, key: K, state: S | None, applied: dict[int, int], timestamp: int) -> Any:
        """The fenced write of the whole row: a plain ``INSERT ... USING TIMESTAMP ?`` (collections whole)."""

    def update(self, key: K, before: Stored[S], state: S | None, applied: dict[int, int]) -> Any:
        """The conditional write replacing ``before`` (``IF seq = before.seq``, or ``IF NOT EXISTS``)."""

    def record_rejections(self, key: K, rejected: list[tuple[C, RecordMetadata, str]]) -> list[Any]:
        """Idempotent statements recording rejected commands."""

    def events(self, key: K, records: list[tuple[C, RecordMetadata]]) -> list[Any]:
        """Event-log statements for the records of a batch (one entity partition; batched by the sink)."""

    def index(self, key: K, records: list[tuple[C, RecordMetadata]]) -> list[Any]:
        """Idempotent statements that let the log's readers find those events (e.g. its bucket index)."""


class ManyReads(Protocol[K]):
    """Optional for an :class:`Aggregate`: read several entities in one request (the engine merges the reads of
    up to ``merge_partitions`` entities that miss the cache at once)."""

    def read_many(self, keys: list[K]) -> Any:
        """A statement reading the rows of ``keys`` (not serial): ``WHERE key IN ?``."""

    def key_of_row(self, row: Any) -> K:
        """The entity key of a row of :meth:`read_many`."""


@dataclass(eq=False)
class _Batch:
    key: Any
    envelopes: list[Envelope[Any]]
    epoch: int | None = None
    attempt: int = 0
    stored: Any = None
    after: Stored[Any] | None = None
    step: str = "read"
    #: records the entity had already applied when this batch was first folded (redeliveries); any other
    #: record found applied later was applied by this batch's own write, whose answer was lost or late
    redelivered: set[int] | None = None
    decisions: list[Any] = field(default_factory=list)
    state_write: Any = None
    #: the decisions carry the batch's events (a decider's): its index rows go with them, before the state
    index_early: bool = False

    @property
    def tp(self) -> TopicPartition:
        return self.envelopes[0].meta.tp

    def count(self, name: str, n: int = 1) -> None:
        if self.envelopes:
            self.envelopes[0].count(name, n)

    def where(self) -> str:
        first, last = self.envelopes[0].meta, self.envelopes[-1].meta
        if len(self.envelopes) == 1:
            return f" on {first}"
        return f" on {first}..{last.offset} ({len(self.envelopes)} records)"


class Publisher(Protocol):
    """Where an engine publishes (:class:`~rxcqrs.kafka.publisher.KafkaPublisher`)."""

    def publish(self, records: list[Any], done: Callable[[BaseException | None], None]) -> None:
        """Send ``records``; ``done`` once (any thread) with ``None`` or the error that failed them for good."""

    def close(self, failed: bool) -> None:
        """Wait for what is in flight (``failed``: the flow failed, wait a bounded time) and release it."""


#: ``fences(group, topic)``: the fence of one consumer group on one topic
FenceFactory = Callable[[str, str], EpochSource]


def _then(step_done: Callable[[_Batch, str], None], batch: _Batch, step: str) -> Callable[[], None]:
    return lambda: step_done(batch, step)


class _BatchShare:
    """What a source batch's records share in the engine: its ticket, settled once every record is done (acked
    once all are, nacked at the first failure)."""

    __slots__ = ("ticket", "_left", "_lock")

    def __init__(self, ticket: Any, records: int) -> None:
        self.ticket = ticket
        self._left = records
        self._lock = threading.Lock()

    def done(self, records: int = 1) -> None:
        with self._lock:
            self._left -= records
            last = self._left == 0
        if last:
            self.ticket.ack()

    def failed(self, error: BaseException) -> None:
        self.ticket.nack(error)  # a ticket settles once: later records' settles are ignored

    def live(self) -> bool:
        return bool(self.ticket.live())


class _Record:
    """A record of a source batch, as the engine handles it: an envelope's shape (value, meta, ticket, ack,
    nack, count) without a ticket of its own."""

    __slots__ = ("value", "meta", "ticket")

    def __init__(self, value: Any, meta: RecordMetadata, share: _BatchShare) -> None:
        self.value, self.meta, self.ticket = value, meta, share

    def ack(self) -> None:
        self.ticket.done()

    def nack(self, error: BaseException) -> None:
        self.ticket.failed(error)

    def count(self, name: str, amount: int = 1) -> None:
        self.ticket.ticket.count(name, amount)


def _by_liveness(envelopes: list[Any]) -> tuple[list[Any], list[Any]]:
    """``envelopes`` whose ticket's assignment is current, and the others; each ticket is asked once (a source
    batch's records share one, and follow each other)."""
    live: list[Any] = []
    stale: list[Any] = []
    asked: dict[int, bool] = {}
    last: Any = None
    current = True
    for env in envelopes:
        ticket = env.ticket
        if ticket is not last:
            last = ticket
            known = asked.get(id(ticket))
            current = asked[id(ticket)] = bool(ticket.live()) if known is None else known
        (live if current else stale).append(env)
    return live, stale


#: what waits in an outbox: a batch, its single-row statements, what to do once written, their size
_Outgoing = tuple["_Batch", list[Any], Callable[[], None], int]


def _then_send(send: Callable[[_Batch, list[Any], Callable[[], None]], None], item: _Outgoing) -> Callable[[], None]:
    return lambda: send(item[0], item[1], item[2])


def _mergeable(statements: list[Any]) -> bool:
    """Whether statements can join another batch's in one unlogged request: bound single-row statements."""
    from cassandra.query import BoundStatement

    return not statements or set(map(type, statements)) == {BoundStatement}


def _one_request(statements: list[Any], *, logged: bool = False) -> Any:
    """Idempotent single-row statements as one request (an unlogged batch, or a logged one: all or nothing)."""
    from cassandra.query import BatchStatement, BatchType

    request = BatchStatement(BatchType.LOGGED if logged else BatchType.UNLOGGED)
    for statement in statements:
        request.add(statement)
    request.is_idempotent = True
    return request


def _same_partition(first: Envelope[Any], item: Envelope[Any]) -> bool:
    return item.meta.partition == first.meta.partition and item.meta.topic == first.meta.topic


class AggregateSink(SinkBase, Generic[K, S, C]):
    """The command engine over ``aggregate``. ``keyspace`` holds the fence rows (fenced writes); the consumer
    group comes from the source (``group`` when the sink is used without one)."""

    def __init__(self, session: Any, aggregate: Aggregate[K, S, C], *, write_protocol: WriteProtocol = "fenced",
                 keyspace: str | None = None, group: str | None = None, idempotent: bool = True,
                 max_concurrency: int = 32, max_batch: int = 500, cache_size: int = 100_000, batch_rows: int = 100,
                 batch_bytes: int = 40_000, linger: float = 0.002, backoff: Backoff | None = None,
                 fence_timeout: float = 60.0, fences: FenceFactory | None = None, log_events: bool = True,
                 merge_partitions: int = 10, atomic_batches: bool = True,
                 then: Callable[[Envelope[Any]], None] | None = None, name: str = "aggregate_sink",
                 publisher: Publisher | None = None, clock: Clock = SYSTEM) -> None:
        """``fences(group, topic)`` gives the fence of a topic (default: its row in ``keyspace``, a
        :class:`~rxcqrs.cassandra.fence.Fence`); ``log_events=False`` writes the rejections and the state
        only (the event log, ``Applied.records`` included, is another branch's job); ``then(env)`` receives each
        record whose writes succeeded instead of acking it (the serial flow). ``merge_partitions``: the
        idempotent single-row writes that several entities' batches are ready to send at once go as one
        unlogged request spanning up to that many partitions, and the reads of up to that many entities missing
        the cache as one (1: every entity's requests alone; see :meth:`_flush`). ``atomic_batches`` (fenced
        writes): a batch's rows of every step go as one logged request, all or nothing, when they fit
        ``batch_rows`` and ``batch_bytes`` (see :meth:`_send_atomic`). ``publisher``: where
        ``Applied.published`` goes (:class:`~rxcqrs.kafka.publisher.KafkaPublisher`), before the batch's
        writes; a batch is acked only once its records were delivered (the engine closes it). ``clock`` times
        the retries' backoff and the fence deadlines (see :mod:`rxcqrs.clock`)."""
        super().__init__()
        self._clock = clock
        if max_concurrency < 1 or max_batch < 1 or cache_size < 1 or batch_rows < 1 or merge_partitions < 1:
            raise ConfigError("max_concurrency, max_batch, cache_size, batch_rows and merge_partitions must be >= 1")
        self.protocol = check_protocol(write_protocol)
        self.fenced = self.protocol == "fenced"
        keyspace = keyspace or getattr(aggregate, "keyspace", None)
        if self.fenced and not keyspace and fences is None:
            raise ConfigError(f"{name}: fenced writes need the keyspace of the fence rows (keyspace=...)")
        self.session = session
        self.aggregate = aggregate
        self.keyspace = keyspace
        self.group = group
        self.idempotent = idempotent
        self.cache_size = cache_size
        self.batch_rows = batch_rows
        self.batch_bytes = batch_bytes
        self.linger = linger
        self.merge_partitions = merge_partitions
        self.atomic_batches = atomic_batches
        self.backoff = backoff or Backoff()
        self.fence_timeout = fence_timeout
        self.log_events = log_events
        self.steps = STEPS if log_events else STEPS[:2]
        self.then = then
        self.name = name
        self.publisher = publisher
        aggregate.prepare()  # blocking: here, never on a driver callback thread
        self._lock = threading.Lock()
        self._queue: KeyedQueue[Any] = KeyedQueue(max_concurrency, max_batch, _same_partition)  # envelopes, _Records
        self._cache: OrderedDict[Hashable, tuple[Stored[Any], TopicPartition, int | None]] = OrderedDict()
        #: (entity, partition) -> the first offset of a failed batch: its later records wait for its redelivery
        self._failed_at: dict[tuple[Hashable, TopicPartition], int] = {}
        self._fences: dict[str, EpochSource] = {}
        self._fence_factory = fences
        self._epochs: AssignmentEpochs[_Batch] = AssignmentEpochs(
            name, self._lock, self._fence, timeout=fence_timeout, clock=clock, later=self._later, ready=self._restart,
            failed=self._finish)
        self._abandoned = False
        self._stopped = False
        self._wake = threading.Event()
        self._restarts: deque[_Batch] = deque()  # batches that waited for an epoch, started by the dispatcher
        self._handed: deque[Callable[[], None]] = deque()  # continuations handed over by driver callbacks
        self._outbox: list[_Outgoing] = []  # the worker's sends, merged
        self._logged_outbox: list[_Outgoing] = []  # atomic batches, merged
        self._read_outbox: list[_Batch] = []  # reads of entities missing the cache, merged (ManyReads)
        self._many_reads = callable(getattr(aggregate, "read_many", None)) and merge_partitions > 1
        self._busy_threads = 0  # batches being dispatched, continuations handed over, retries due
        self.batches = 0
        self.reads = 0
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name=f"rxcqrs-{name}-dispatch", daemon=True)
        self._dispatcher.start()

    # -- partitions (the client's rebalance thread) -------------------------------------------------------
    def watch_partitions(self, source: Assignments) -> None:
        """Called by :func:`~rxcqrs.run`: hear of ``source``'s assignments (and take epochs for them)."""
        self._epochs.source = source
        if self.group is None:
            self.group = source.group_id
        source.on_assign(self.partitions_assigned)
        source.on_revoke(self.partitions_revoked)

    def partitions_assigned(self, tps: list[TopicPartition]) -> None:
        """A new assignment: its entities' cached states are not its own, and (fenced) it needs an epoch."""
        self._forget(tps, renew=self.fenced)

    def partitions_revoked(self, tps: list[TopicPartition]) -> None:
        """Another member may write these partitions' entities now."""
        self._forget(tps, renew=False)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop the cached entities (and epochs) of ``partitions``."""
        self._forget(list(partitions), renew=False)

    def _forget(self, tps: list[TopicPartition], *, renew: bool) -> None:
        gone = set(tps)
        with self._lock:
            for key in [k for k, (_s, tp, _e) in self._cache.items() if tp in gone]:
                del self._cache[key]
            for where in [w for w in self._failed_at if w[1] in gone]:
                del self._failed_at[where]
            parked, request = self._epochs.forget_locked(tps, renew=renew)
        if request is not None:
            self._epochs.ask(tps, request)
        self._restart(parked)  # their records belong to the old assignment: dropped as stale by _start

    def _restart(self, batches: list[_Batch]) -> None:
        """Hand batches that waited to the dispatcher (never started on the rebalance or poll thread)."""
        if batches:
            with self._lock:
                self._restarts.extend(batches)
            self._wake.set()

    # -- fencing (the fencer thread of :class:`~rxcqrs.cassandra.epochs.AssignmentEpochs`) -----------------
    def _fence(self, topic: str) -> EpochSource:
        fence = self._fences.get(topic)
        if fence is None:
            if self.group is None:
                raise ConfigError(f"{self.name}: fenced writes need the consumer group (run the sink from a "
                                  "KafkaSource with rxcqrs.run, or pass group=...)")
            if self._fence_factory is not None:
                fence = self._fence_factory(self.group, topic)
            else:
                assert self.keyspace is not None
                fence = Fence(self.session, self.keyspace, self.group, topic, backoff=self.backoff, clock=self._clock)
            self._fences[topic] = fence
        return fence

    # -- intake (the poll thread) -------------------------------------------------------------------------
    @property
    def takes_batches(self) -> bool:
        """A source's :class:`~rxcqrs.messages.Batch` is taken whole (its ticket settled once every record's
        writes succeeded), unless records are handed on (``then``: the serial flow passes envelopes)."""
        return self.then is None

    def on_next(self, env: Envelope[C]) -> None:
        if type(env) is Batch:
            self._take_batch(env)
            return
        try:
            key = self.aggregate.key(env.value)
        except Exception as exc:
            env.nack(PermanentStageError(f"{self.name}: no entity key for {env.meta}: {exc!r}"))
            return
        self._begin()
        with self._lock:
            refused = self._abandoned
            if not refused:
                self._queue.put(key, env)
        if refused:
            env.nack(abandoned(self.name, f" on {env.meta}"))
            self._end()
            return
        self._wake.set()

    def _take_batch(self, batch: Batch[C]) -> None:
        """One queue item per record (its share of the batch's ticket); a record without a key fails the batch."""
        share = _BatchShare(batch.ticket, len(batch))
        key_of, of = self.aggregate.key, RecordMetadata.of
        items = []
        for value, record in zip(batch.values, batch.records, strict=True):
            meta = of(record)
            try:
                items.append((key_of(value), _Record(value, meta, share)))
            except Exception as exc:
                batch.nack(PermanentStageError(f"{self.name}: no entity key for {meta}: {exc!r}"))
                return
        self._begin(len(items))
        with self._lock:
            refused = self._abandoned
            if not refused:
                put = self._queue.put
                for key, item in items:
                    put(key, item)
        if refused:
            batch.nack(abandoned(self.name, f" on {batch.meta}"))
            self._end(len(items))
            return
        self._wake.set()

    # -- dispatch -----------------------------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        """The engine's worker: continuations of batches first (what the driver's callbacks handed over),
        then new batches (after ``linger``, unless continuations are waiting: a poll's records gather)."""
        while True:
            self._wake.wait()
            if self._stopped:
                return
            self._wake.clear()
            self._run_handed()
            self._flush()
            if self.linger and self._queue.startable and not self._handed:
                time.sleep(self.linger)  # let a burst of records of one poll gather into batches
            with self._lock:
                restarts, self._restarts = list(self._restarts), deque()
                ready = self._queue.take_ready()
                self._busy_threads += 1
            try:
                for batch in restarts:
                    self._start(batch)
                    self._flush_full()
                for key, envelopes in ready:
                    self._start(_Batch(key, envelopes))
                    self._flush_full()
                self._flush()
            finally:
                with self._lock:
                    self._busy_threads -= 1

    def _hand(self, step: Callable[[], None]) -> None:
        """From a driver callback: run ``step`` on the engine's worker, so that the driver's event loop only
        reads and writes the wire (decisions and statements are built elsewhere)."""
        with self._lock:
            self._handed.append(step)
            self._busy_threads += 1  # until it ran (see quiet)
        self._wake.set()

    def _run_handed(self) -> None:
        handed = self._handed
        while handed:
            step = handed.popleft()
            try:
                step()
            except Exception:  # a step settles its own batch's errors; never let one stop the worker
                log.exception("%s: a batch step failed", self.name)
            finally:
                with self._lock:
                    self._busy_threads -= 1
            self._flush_full()

    def _flush_full(self) -> None:
        """Send the outboxes once they hold a full request's worth, so that Cassandra writes while the worker
        decides the rest of a burst (a poll's records, a wave of reads answered)."""
        if len(self._logged_outbox) >= self.merge_partitions or len(self._outbox) >= self.merge_partitions \
                or len(self._read_outbox) >= self.merge_partitions:
            self._flush()

    def quiet(self) -> bool:
        """Nothing to start, no epoch being taken, no retry due: whatever is still in flight waits for a
        request to Cassandra or for the group to confirm an epoch (what a test that drives both waits for)."""
        with self._lock:
            return (not self._queue.startable and not self._restarts and not self._handed and not self._outbox
                    and not self._logged_outbox and not self._read_outbox
                    and self._busy_threads == 0 and self._epochs.busy == 0)

    def _start(self, batch: _Batch) -> None:
        """Drop the records of revoked assignments; wait for the partition's epoch; fold from the cache, or read."""
        live, stale = _by_liveness(batch.envelopes)
        if stale:
            batch.envelopes = live
            for env in stale:  # their settle is ignored by the gate: the record is delivered again
                env.count("stale_dropped")
                env.nack(StageError(f"{self.name}: {env.meta} belongs to a revoked or rewound assignment"))
                self._end()
        if not batch.envelopes or self._behind_failed(batch):
            self._release(batch, [])
            return
        epoch: int | None = None
        request: int | None = None
        with self._lock:
            if self._abandoned:
                parked = False
            elif self.fenced:  # parked until the assignment's epoch comes (asked for if nothing told of it)
                epoch, request = self._epochs.epoch_or_park_locked(batch.tp, batch)
                parked = epoch is None
            else:
                parked = False
            cached = None if parked else self._cached(batch.key, epoch)
        if self._abandoned:
            self._finish(batch, abandoned(self.name, batch.where()))
            return
        if request is not None:
            self._epochs.ask([batch.tp], request)
        if parked:
            return
        batch.epoch = epoch
        self.batches += 1
        if cached is not None:
            batch.stored = cached
            self._fold(batch)
        else:
            self._read(batch)

    def _behind_failed(self, batch: _Batch) -> bool:
        """Whether ``batch`` follows a failed record of its entity in its partition (nacked: delivered again
        after it). An entity records the highest offset it applied per partition, so applying a later record
        first would make the failed one look applied when it comes again. A batch from that offset or before
        (the redelivery) clears the mark, as does a new assignment of the partition."""
        where = (batch.key, batch.tp)
        with self._lock:
            failed_at = self._failed_at.get(where)
            if failed_at is None:
                return False
            if batch.envelopes[0].meta.offset <= failed_at:
                del self._failed_at[where]
                return False
        error = StageError(f"{self.name}: {batch.where().strip()} follows a failed record of its entity at "
                           f"{batch.tp.topic}/{batch.tp.partition}@{failed_at}; delivered again after it")
        for env in batch.envelopes:
            env.count("behind_failed")
            env.nack(error)
            self._end()
        return True

    def _cached(self, key: Hashable, epoch: int | None) -> Stored[Any] | None:
        """Under the lock: the cached state of ``key`` if it belongs to ``epoch``."""
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[2] != epoch:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return entry[0]

    # -- the steps of a batch (driver callback threads) ---------------------------------------------------
    def _request(self, statement: Any, done: Callable[[Any], None], failed: Callable[..., None],
                 batches: Sequence[_Batch] = (), *, made_here: bool = False) -> bool:
        """Send ``statement`` (for ``batches``): ``done(rows)`` or ``failed(error)`` later, from a driver thread;
        if it cannot be sent, ``failed(error, sent=False)`` at once and False. ``made_here``: a batch request
        made for this one send (a retry makes another), emptied once answered (see :mod:`.answers`)."""
        if tracing.ACTIVE and batches:
            done, failed = _traced_request(batches, done, failed)
        try:
            future = self.session.execute_async(statement)
        except Exception as exc:
            failed(exc, sent=False)
            return False
        on_answer(future, done, failed, batch=statement if made_here else None)
        return True

    def _execute(self, batch: _Batch, statement: Any, on_rows: Callable[[Any], None], *, sent_is_unknown: bool
                 ) -> None:
        def failed(error: BaseException, sent: bool = sent_is_unknown) -> None:
            self._failed(batch, error, sent=sent)

        self._request(statement, lambda rows: self._hand(lambda: on_rows(rows)), failed, (batch,))

    def _read(self, batch: _Batch, serial: bool = False) -> None:
        batch.step = "resolve" if serial else "read"
        self.reads += 1
        if not serial and self._many_reads and threading.current_thread() is self._dispatcher:
            self._read_outbox.append(batch)  # sent merged with other entities' reads (see _send_reads)
            return
        self._read_alone(batch, serial)

    def _read_alone(self, batch: _Batch, serial: bool = False) -> None:
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
                self._next_step(batch, "state")
                return
            batch.count("unknown_resolved_not_applied")
        self._fold(batch)

    def _fold(self, batch: _Batch) -> None:
        """Decide every command of the batch over the state; then the steps, from the decisions on."""
        stored: Stored[Any] = batch.stored
        state, applied = stored.state, dict(stored.applied)
        batch.index_early = False
        rejected: list[tuple[Any, RecordMetadata, str]] = []
        records: list[Any] = []
        published: list[Any] = []
        last_offset: int | None = None
        seen = batch.redelivered
        first_fold = seen is None
        if seen is not None and any(stored.handled(env.meta) for i, env in enumerate(batch.envelopes)
                                    if i not in seen):
            # a record that was new to the entity is applied now: this batch's own earlier conditional write
            # landed (its answer was lost, or it completed after a read that said otherwise): never apply twice
            batch.count("unknown_resolved_applied")
            self._remember(batch, stored)
            self._next_step(batch, "state")
            return
        redelivered: set[int] = set()  # (first fold) the records the entity had applied already
        known = stored.applied
        try:
            for i, env in enumerate(batch.envelopes):
                meta = env.meta
                if known.get(meta.partition, -1) >= meta.offset:  # stored.handled(meta)
                    if first_fold:
                        redelivered.add(i)
                    if self.idempotent:
                        if first_fold:
                            env.count("redelivered_skipped")
                        continue
                    if first_fold:
                        env.count("redelivered_reapplied")
                decision = self.aggregate.decide(state, env.value, meta)
                if isinstance(decision, Rejection):
                    rejected.append((env.value, meta, decision.reason))
                else:
                    state = decision.state
                    if self.log_events:
                        records += decision.records
                    if decision.published and self.publisher is not None:
                        published += [tracing.traced(r, meta) for r in decision.published] if tracing.ACTIVE \
                            else decision.published
                applied[meta.partition] = max(meta.offset, applied.get(meta.partition, -1))
                last_offset = meta.offset
            if first_fold:
                batch.redelivered = redelivered
            if last_offset is None:  # every record was already applied: only log the redeliveries
                self._next_step(batch, "state")
                return
            if self.fenced:
                assert batch.epoch is not None
                batch.after = Stored(state, stored.seq, applied)
                batch.state_write = self.aggregate.write(batch.key, state, applied,
                                                         write_timestamp(batch.epoch, last_offset))
            else:
                batch.after = Stored(state, (stored.seq or 0) + 1, applied)
                batch.state_write = self.aggregate.update(batch.key, stored, state, applied)
            batch.decisions = (self.aggregate.record_rejections(batch.key, rejected) if rejected else []) + records
            batch.index_early = bool(records)
        except Exception as exc:  # a bug in decide/write: retrying cannot help
            self._finish(batch, PermanentStageError(f"{self.name}: {exc!r}{batch.where()}"))
            return
        if published:
            self._publish(batch, published)
            return
        self._next_step(batch, "read")

    def _publish(self, batch: _Batch, records: list[Any]) -> None:
        """Publish the batch's decided events before anything of it is written (a crash after this decides and
        publishes them again, with the same ids); the steps follow once every record was delivered."""
        batch.step = "publish"
        assert self.publisher is not None

        def published(error: BaseException | None) -> None:
            if error is None:
                batch.count("events_published", len(records))
                self._hand(_then(self._next_step, batch, "read"))
            else:
                self._hand(lambda: self._finish(batch, permanent(self.name, batch.where(), error)))

        self.publisher.publish(records, published)

    def _next_step(self, batch: _Batch, done: str) -> None:
        """Run the step after ``done`` (``"read"``: the batch was just decided); the event log's steps go at once.
        The retries of a batch until its state is written (reads, decisions, the state, and in conditional mode
        the reads and decisions again after a conflict or a failed write) share one backoff; the log's steps,
        after the state, have one of their own."""
        steps = self.steps
        if done == "read" and self.atomic_batches and self.fenced and self.log_events and self._send_atomic(batch):
            return
        if done == "state":
            batch.attempt = 0
        i = 0 if done == "read" else steps.index(done) + 1
        while i < len(steps):
            step, i = steps[i], i + 1
            if step == "state":
                batch.step = step
                if batch.state_write is None:
                    continue
                if not self.fenced:
                    self._write_conditionally(batch)
                    return
                statements = [batch.state_write]
            else:
                parts = [step]
                while step in _LOG_STEPS and i < len(steps) and steps[i] in _LOG_STEPS:
                    step, i = steps[i], i + 1
                    parts.append(step)
                batch.step = step
                try:
                    statements = self._statements(batch, parts)
                except Exception as exc:
                    self._finish(batch, PermanentStageError(f"{self.name}: {exc!r}{batch.where()}"))
                    return
            if statements:
                self._run_all(batch, statements, _then(self._step_done, batch, step))
                return
        self._finish(batch, None)

    def _send_atomic(self, batch: _Batch) -> bool:
        """Every write of a fenced batch (its decisions, state, events and index) as one logged request: all or
        nothing, so the order of the steps needs no round trip of its own; several batches' go together up to
        ``3 * merge_partitions`` partitions, ``batch_rows`` rows and ``batch_bytes``. ``False``: the batch is too
        large (or not of bound statements) and goes step by step."""
        if batch.state_write is None:
            return False
        records = [(env.value, env.meta) for env in batch.envelopes]
        statements = [*batch.decisions, batch.state_write, *self.aggregate.events(batch.key, records),
                      *self.aggregate.index(batch.key, records)]
        size = self._size_of_one(statements)
        if size is None:
            return False
        batch.step = "state"
        then = _then(self._all_done, batch, "index")
        if threading.current_thread() is self._dispatcher:
            self._logged_outbox.append((batch, statements, then, size))
        else:
            self._send_logged(batch, statements, then)
        return True

    def _all_done(self, batch: _Batch, _step: str) -> None:
        batch.count("cassandra_applied")
        assert batch.after is not None
        self._remember(batch, batch.after)
        self._finish(batch, None)

    def _step_done(self, batch: _Batch, step: str) -> None:
        if step == "state":
            batch.count("cassandra_applied")
            assert batch.after is not None
            self._remember(batch, batch.after)
        self._next_step(batch, step)

    def _statements(self, batch: _Batch, steps: list[str]) -> list[Any]:
        """The statements of ``steps`` (sent together)."""
        records = [(env.value, env.meta) for env in batch.envelopes]
        if steps == ["decisions"]:  # with the index of the events they carry: one round trip less per batch
            early = self.aggregate.index(batch.key, records) if batch.index_early else []
            return self._grouped([*batch.decisions, *early])
        out: list[Any] = []
        if "events" in steps:
            out += self.aggregate.events(batch.key, records)
        if "index" in steps and not batch.index_early:
            out += self.aggregate.index(batch.key, records)
        return self._grouped(out)

    def _grouped(self, statements: list[Any]) -> list[Any]:
        """A step's statements as they leave: single rows when they fit one request (the outbox merges them
        with other batches', see :meth:`_flush`; alone they go as one request, see :meth:`_run_all`), else
        unlogged batches per partition."""
        if self._fits_one(statements):
            return statements
        return group_statements(statements, self.batch_rows, self.batch_bytes)

    def _fits_one(self, statements: list[Any]) -> bool:
        """Whether ``statements`` are single rows that fit one unlogged request."""
        return self._size_of_one(statements) is not None

    def _size_of_one(self, statements: list[Any]) -> int | None:
        """The size of ``statements`` (see :func:`.statements_size`) if they are single rows that fit one
        unlogged request, else None."""
        if len(statements) > self.batch_rows or not _mergeable(statements):
            return None
        size = statements_size(statements)
        return size if size <= self.batch_bytes else None

    def _write_conditionally(self, batch: _Batch) -> None:
        self._execute(batch, batch.state_write, lambda rows: self._on_written(batch, rows), sent_is_unknown=True)

    def _on_written(self, batch: _Batch, rows: Any) -> None:
        if was_applied(rows) is False:  # a conflict: another writer moved the entity; read it and fold again
            batch.count("cassandra_not_applied")
            with self._lock:
                self._cache.pop(batch.key, None)
            self._retry(batch, StageError("optimistic-lock conflict"), lambda: self._read(batch))
            return
        self._step_done(batch, "state")

    def _run_all(self, batch: _Batch, statements: list[Any], then: Callable[[], None], merge: bool = True) -> None:
        """Execute idempotent statements together; ``then`` once all succeeded, a retry of all if one failed.
        On the engine's worker, single-row writes wait in the outbox to be sent merged (:meth:`_flush`);
        elsewhere (or not merged) single rows that fit one request go as one unlogged request."""
        if merge and self.merge_partitions > 1 and threading.current_thread() is self._dispatcher \
                and _mergeable(statements):
            self._outbox.append((batch, statements, then, statements_size(statements)))
            return
        made_here = len(statements) > 1 and self._fits_one(statements)
        requests = [_one_request(statements)] if made_here else statements
        left = [len(requests)]
        failed = [False]
        lock = threading.Lock()

        def done(_rows: Any) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0 and not failed[0]
            if last:
                self._hand(then)

        def retry_all(error: BaseException, sent: bool = True) -> None:
            with lock:
                if failed[0]:
                    return
                failed[0] = True
            self._failed(batch, error, sent=sent, again=lambda: self._run_all(batch, statements, then))

        for request in requests:
            if not self._request(request, done, retry_all, (batch,), made_here=made_here):
                return

    def _flush(self) -> None:
        """Send the outboxes: the atomic batches (:meth:`_send_atomic`) as logged requests, and the other
        single-row statements of consecutive batches as unlogged ones, each within :func:`requests_of`' bounds.
        Every statement is idempotent, so a request that failed or whose outcome is unknown is retried per
        batch; a request refused for good is sent again per batch, so that only the batch at fault fails."""
        if not self._outbox and not self._logged_outbox and not self._read_outbox:
            return
        with self._lock:
            items, self._outbox = self._outbox, []
            logged, self._logged_outbox = self._logged_outbox, []
            reads, self._read_outbox = self._read_outbox, []
            self._busy_threads += 1  # until every request left (see quiet)
        try:
            for i in range(0, len(reads), self.merge_partitions):
                self._send_reads(reads[i:i + self.merge_partitions])
            for chunk in requests_of(logged, 3 * self.merge_partitions, self.batch_rows, self.batch_bytes):
                self._send_merged(chunk, logged=True)
            for chunk in requests_of(items, self.merge_partitions, self.batch_rows, self.batch_bytes):
                self._send_merged(chunk)
        finally:
            with self._lock:
                self._busy_threads -= 1

    def _send_merged(self, chunk: list[_Outgoing], logged: bool = False) -> None:
        if len(chunk) == 1 and not logged:
            batch, statements, then, _size = chunk[0]
            self._send(batch, statements, then)
            return
        request = _one_request([statement for _batch, statements, _then, _size in chunk for statement in statements],
                               logged=logged)

        def done(_rows: Any) -> None:
            for _batch, _statements, then, _size in chunk:
                self._hand(then)

        def failed(error: BaseException, sent: bool = True) -> None:
            if classify(error, sent=sent) is Outcome.PERMANENT:
                if logged and len(chunk) == 1:
                    self._failed(chunk[0][0], error, sent=sent)
                    return
                for item in chunk:  # find the batch at fault: each alone, at once
                    self._hand(_then_send(self._send_logged if logged else self._send, item))
                return
            for item in chunk:
                again = _then_send(self._send_logged, item) if logged else _then_send(self._run_all, item)
                self._failed(item[0], error, sent=sent, again=again)

        self._request(request, done, failed, [item[0] for item in chunk], made_here=True)

    def _send_reads(self, batches: list[_Batch]) -> None:
        """One request reading the entities of ``batches``; each batch goes on with its entity's rows. A failure
        is each batch's (a read is retried alone); a request refused for good is sent again per batch, so that
        only the batch at fault fails."""
        if len(batches) == 1:
            self._read_alone(batches[0])
            return
        aggregate: Any = self.aggregate
        try:
            statement = aggregate.read_many([b.key for b in batches])
        except Exception as exc:
            for batch in batches:
                self._finish(batch, PermanentStageError(f"{self.name}: {exc!r}{batch.where()}"))
            return

        def done(rows: Any) -> None:
            found: dict[Any, list[Any]] = {}
            for row in rows:
                found.setdefault(aggregate.key_of_row(row), []).append(row)
            for batch in batches:
                self._hand(partial(self._on_read, batch, found.get(batch.key, []), False))

        def failed(error: BaseException, sent: bool = False) -> None:
            if classify(error, sent=False) is Outcome.PERMANENT:
                for batch in batches:
                    self._hand(partial(self._read_alone, batch))
                return
            for batch in batches:
                self._failed(batch, error, sent=False)

        self._request(statement, done, failed, batches)

    def _send_logged(self, batch: _Batch, statements: list[Any], then: Callable[[], None]) -> None:
        """One batch's atomic writes as a logged request of their own."""
        self._send_merged([(batch, statements, then, 0)], logged=True)  # alone: no size is asked

    def _send(self, batch: _Batch, statements: list[Any], then: Callable[[], None]) -> None:
        """:meth:`_run_all` without the outbox."""
        self._run_all(batch, statements, then, merge=False)

    # -- outcomes -----------------------------------------------------------------------------------------
    def _failed(self, batch: _Batch, error: BaseException, *, sent: bool,
                again: Callable[[], None] | None = None) -> None:
        outcome = classify(error, sent=sent)
        batch.count(f"cassandra_{outcome.value}")
        if outcome is Outcome.PERMANENT:
            self._finish(batch, permanent(self.name, batch.where(), error))
        elif again is not None:  # an idempotent step (fenced state included): the same statements again
            self._retry(batch, error, again)
        elif outcome is Outcome.UNKNOWN:  # the conditional write may have applied: read (serially) and see
            self._retry(batch, error, lambda: self._read(batch, serial=True))
        elif batch.step == "state":  # the conditional write failed before anything applied: decide again
            self._retry(batch, error, lambda: self._read(batch))
        else:
            self._retry(batch, error, lambda: self._read(batch, serial=batch.step == "resolve"))

    def _retry(self, batch: _Batch, error: BaseException, step: Callable[[], None]) -> None:
        if self._abandoned:
            self._finish(batch, abandoned(self.name, batch.where()))
            return
        if self._later(batch.attempt, step):
            batch.attempt += 1
            batch.count("retries")
            return
        if batch.step == "resolve":
            failure: StageError = UnknownOutcomeError(
                f"{self.name}: the outcome of the write{batch.where()} is unknown and could not be read "
                f"({error!r}); the flow stops and the records are delivered again after a restart")
            failure.__cause__ = error
        else:
            failure = exhausted(self.name, batch.where(), batch.attempt, error, self.backoff)
        self._finish(batch, failure)

    def _later(self, attempt: int, step: Callable[[], None]) -> bool:
        """``step`` after the backoff's delay for retry ``attempt`` (False: the backoff gave up)."""
        def due() -> None:
            try:
                step()
            finally:
                with self._lock:
                    self._busy_threads -= 1

        with self._lock:
            self._busy_threads += 1
        if retry_later(self.backoff, attempt, due, self._clock):
            return True
        with self._lock:
            self._busy_threads -= 1
        return False

    def _remember(self, batch: _Batch, stored: Stored[Any]) -> None:
        with self._lock:
            if self.fenced and self._epochs.epoch_locked(batch.tp) != batch.epoch:
                return  # revoked or assigned again while the batch ran: its state is not the new epoch's
            self._cache[batch.key] = (stored, batch.tp, batch.epoch)
            self._cache.move_to_end(batch.key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _finish(self, batch: _Batch, error: BaseException | None) -> None:
        if error is not None and batch.envelopes:
            with self._lock:  # before the nacks: the entity's later records wait for these (see _behind_failed)
                self._cache.pop(batch.key, None)
                where = (batch.key, batch.tp)
                first = batch.envelopes[0].meta.offset
                self._failed_at[where] = min(first, self._failed_at.get(where, first))
        then = self.then
        shares: dict[_BatchShare, int] = {}  # a source batch's records: its share settled once per engine batch
        for env in batch.envelopes:
            if type(env) is _Record and then is None:
                shares[env.ticket] = shares.get(env.ticket, 0) + 1
            elif error is not None:
                env.nack(error)
            elif then is None:
                env.ack()
            else:
                then(env)
        for share, records in shares.items():
            if error is None:
                share.done(records)
            else:
                share.failed(error)
        self._release(batch, batch.envelopes)

    def _release(self, batch: _Batch, settled: list[Envelope[Any]]) -> None:
        """The batch's key is free again: what gathered for it meanwhile goes at once, as its next batch."""
        with self._lock:
            following = self._queue.release(batch.key, chain=not self._abandoned)
            wake = following is None and self._queue.items > 0
        if settled:
            self._end(len(settled))
        if following is not None:
            self._start(_Batch(batch.key, following))
        elif wake:
            self._wake.set()

    # -- shutdown -----------------------------------------------------------------------------------------
    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            waiting = self._queue.drain()
            parked = self._epochs.abandon_locked()
        for env in waiting:
            env.nack(abandoned(self.name, f" on {env.meta}"))
            self._end()
        for batch in parked:
            self._finish(batch, abandoned(self.name, batch.where()))

    def close(self) -> None:
        self._stopped = True
        self._wake.set()
        self._epochs.close()
        if self.publisher is not None:  # the engine owns its publisher
            self.publisher.close(failed=self.upstream_error is not None)


def _traced_request(batches: Sequence[_Batch], done: Callable[[Any], None], failed: Callable[..., None]
                    ) -> tuple[Callable[[Any], None], Callable[..., None]]:
    """``done`` and ``failed`` that first end a span of the request (:mod:`rxcqrs.tracing`) with its outcome."""
    metas = [env.meta for batch in batches for env in batch.envelopes[:1]]
    span = tracing.request(batches[0].step, metas, sum(len(b.envelopes) for b in batches))

    def traced_done(rows: Any) -> None:
        tracing.request_done(span, "answered")
        done(rows)

    def traced_failed(error: BaseException, sent: bool = True) -> None:
        tracing.request_done(span, classify(error, sent=sent).value)
        failed(error, sent=sent)

    return traced_done, traced_failed
