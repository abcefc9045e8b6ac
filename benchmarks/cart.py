"""The shopping cart end to end: rxcqrs against hand-written loops, on the same topic, each into a keyspace of
its own, every final state verified against the fold of the topic, and the CPU of the whole process (every
thread, the clients' native ones included) per command.

Hand-written contenders (confluent-kafka, the fastest client, + the cassandra-driver; the same tables and
statements as CartStore):

* ``hand cart-batched, conditional``: polls of 2,000; the poll's decisions written first (per cart an
  unlogged batch of its refused commands and its accepted commands' events, as rxcqrs writes them before the
  state); per cart one conditional write (``IF seq = ?``) advancing the state by every command of the poll
  (cached state, read only on a miss or a conflict), then its bucket index; commit after each poll. The design
  rxcqrs' batched mode follows.
* ``hand cart-batched, fenced``: the same loop with one epoch taken at the start and a plain
  ``INSERT ... USING TIMESTAMP epoch * 2**40 + offset`` per cart per poll instead of the conditional write.
* ``hand per-command``: per cart in order, 32 carts at a time: read, conditional write, event insert;
  commit after each poll.
* ``naive``: one record at a time: read, conditional write, event insert, commit. Run for a fixed time on a
  prefix of the topic; verified on what it committed.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.waiting import wait_for as _wait
from rxcqrs.cassandra.aggregate import Stored
from rxcqrs.cassandra.decider_store import event_id
from rxcqrs.cassandra.fence import Fence, write_timestamp
from rxcqrs.examples.shoppingcart.codec import command_codec
from rxcqrs.examples.shoppingcart.domain import Cart, Command, Rejected, apply, event_of, fold
from rxcqrs.examples.shoppingcart.store import CartStore
from rxcqrs.kafka.settings import default_bootstrap
from rxcqrs.messages import RecordMetadata

BOOTSTRAP = default_bootstrap()  # $RXCQRS_KAFKA_BOOTSTRAP: the same servers as every other contender
Result = tuple[float, dict[str, Any]]


def keyspace(name: str) -> str:
    return f"bench_{name}_{uuid.uuid4().hex[:6]}"


def verify(session: Any, ks: str, topic: str, limits: dict[int, int] | None = None) -> bool:
    """Every cart equals the fold of the topic's commands (below ``limits`` per partition, if given), and
    every refused command is recorded once (by its source partition and offset)."""
    from rxcqrs.kafka.admin import read_topic

    codec = command_codec()
    per_cart: dict[uuid.UUID, list[Command]] = defaultdict(list)
    refused: set[tuple[uuid.UUID, int, int]] = set()
    states: dict[uuid.UUID, Cart | None] = {}
    for record in read_topic(topic, bootstrap_servers=BOOTSTRAP, limits=limits):
        cmd = codec.decode(record.value)
        per_cart[cmd.cart_id].append(cmd)
        result = apply(states.get(cmd.cart_id), cmd)
        if isinstance(result, Rejected):
            refused.add((cmd.cart_id, record.partition, record.offset))
        else:
            states[cmd.cart_id] = result
    expected = {cid: cart for cid, cmds in per_cart.items() if (cart := fold(cmds)) is not None}
    store = CartStore(session, ks)
    recorded = [(r.cart_id, r.source_partition, r.source_offset) for r in session.execute(
        f"SELECT cart_id, source_partition, source_offset FROM {store.rejections_table}", timeout=120)]
    return dict(store.all_carts()) == expected and set(recorded) == refused


class Timed:
    """Wall time and the process's CPU (every thread) of one run."""

    def __enter__(self) -> "Timed":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def result(self, commands: int, **info: Any) -> Result:
        return commands / self.wall, {"cpu_us": round(self.cpu / commands * 1e6, 1), **info}


def _consumer(topic: str, group: str) -> Any:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "max.partition.fetch.bytes": 1024 * 1024})
    consumer.subscribe([topic])
    return consumer


def _polled(consumer: Any, codec: Any, size: int = 2000) -> tuple[int, dict[uuid.UUID, list[tuple[Command,
                                                                                               RecordMetadata]]]]:
    per_cart: dict[uuid.UUID, list[tuple[Command, RecordMetadata]]] = defaultdict(list)
    messages = consumer.consume(num_messages=size, timeout=0.2)
    for m in messages:
        cmd = codec.decode(m.value())
        per_cart[cmd.cart_id].append((cmd, RecordMetadata(m.topic(), m.partition(), m.offset(), m.timestamp()[1], 0,
                                                          m.key())))
    return len(messages), per_cart


def _fold(row: Stored[Cart], items: list[tuple[Command, RecordMetadata]],
          rejected: list[tuple[Command, RecordMetadata, str]] | None = None) -> tuple[Cart | None, dict[int, int]]:
    """The state after ``items``; the commands refused are added to ``rejected``."""
    state, applied = row.state, dict(row.applied)
    for cmd, meta in items:
        result = apply(state, cmd)
        if isinstance(result, Rejected):
            if rejected is not None:
                rejected.append((cmd, meta, result.reason))
        else:
            state = result
        applied[meta.partition] = meta.offset
    return state, applied


def _record_decisions(session: Any, store: CartStore, folded: dict[uuid.UUID, list[tuple[Command, RecordMetadata]]],
                      rejected: dict[uuid.UUID, list[Any]]) -> None:
    """A poll's decisions before any state that records them: per cart an unlogged batch of its refused
    commands and the events of its accepted ones."""
    from cassandra.query import BatchStatement, BatchType

    futures = []
    for cid, items in folded.items():
        refused = rejected.get(cid, [])
        skipped = {meta.offset for _c, meta, _r in refused}
        batch = BatchStatement(BatchType.UNLOGGED)
        for statement in store.record_rejections(cid, refused):
            batch.add(statement)
        for cmd, meta in items:
            if meta.offset not in skipped:
                batch.add(store.log.insert(session, cid, event_id(meta, 0), meta.timestamp_utc,
                                           store.payload(event_of(cmd)), meta))
        if len(batch):
            futures.append(session.execute_async(batch))
    for future in futures:
        future.result()


def _index(session: Any, store: CartStore, per_cart: dict[uuid.UUID, list[tuple[Command, RecordMetadata]]]) -> None:
    futures = [session.execute_async(store.log.bucket_index(session, cid, items[0][1].timestamp_utc))
               for cid, items in per_cart.items()]
    for future in futures:
        future.result()


def hand_cart_batched(session: Any, topic: str, ks: str, total: int, protocol: str = "conditional") -> Result:
    store = CartStore(session, ks, write_protocol=protocol)  # type: ignore[arg-type]
    store.create()
    store.prepare()
    codec = command_codec()
    group = f"g.{ks}"
    cache: dict[uuid.UUID, Stored[Cart]] = {}
    done = 0
    with Timed() as timed:
        consumer = _consumer(topic, group)
        epoch = Fence(session, ks, group, topic).take() if protocol == "fenced" else 0
        while done < total:
            count, per_cart = _polled(consumer, codec)
            done += count
            pending = dict(per_cart)
            while pending:
                misses = [cid for cid in pending if cid not in cache]
                for cid, future in [(cid, session.execute_async(store.read(cid))) for cid in misses]:
                    cache[cid] = store.stored(list(future.result()))
                writes, folded, rejected = [], {}, {}
                for cid, items in pending.items():
                    refused: list[tuple[Command, RecordMetadata, str]] = []
                    folded[cid] = _fold(cache[cid], items, refused)
                    if refused:
                        rejected[cid] = refused
                _record_decisions(session, store, pending, rejected)
                for cid, items in pending.items():
                    row = cache[cid]
                    state, applied = folded[cid]
                    if protocol == "fenced":
                        statement = store.write(cid, state, applied, write_timestamp(epoch, items[-1][1].offset))
                    else:
                        statement = store.update(cid, row, state, applied)
                    writes.append((cid, Stored(state, (row.seq or 0) + 1, applied), session.execute_async(statement)))
                conflicts = {}
                for cid, after, future in writes:
                    answer = future.result().one()
                    if answer is None or answer[0]:
                        cache[cid] = after
                    else:
                        cache.pop(cid)
                        conflicts[cid] = pending[cid]
                pending = conflicts
            _index(session, store, per_cart)
            if count:
                consumer.commit(asynchronous=False)
    consumer.close()  # like every contender, timed until its last commit
    return timed.result(total, verified=verify(session, ks, topic))


def _command(session: Any, store: CartStore, cmd: Command, meta: RecordMetadata) -> None:
    """Read, decide, record a refusal, write conditionally (again after a conflict); skip what the cart already
    applied."""
    while True:
        row = store.row(cmd.cart_id)
        if row.handled(meta):
            return
        refused: list[tuple[Command, RecordMetadata, str]] = []
        state, applied = _fold(row, [(cmd, meta)], refused)
        for statement in store.record_rejections(cmd.cart_id, refused):
            session.execute(statement)
        if session.execute(store.update(cmd.cart_id, row, state, applied)).one()[0]:
            return


def hand_per_command(session: Any, topic: str, ks: str, total: int) -> Result:
    store = CartStore(session, ks, write_protocol="conditional")
    store.create()
    store.prepare()
    codec = command_codec()
    pool = ThreadPoolExecutor(32)

    def run_cart(items: list[tuple[Command, RecordMetadata]]) -> None:
        for cmd, meta in items:
            _command(session, store, cmd, meta)
            session.execute(store.delivery_statement(cmd, meta))

    done = 0
    with Timed() as timed:
        consumer = _consumer(topic, f"g.{ks}")
        while done < total:
            count, per_cart = _polled(consumer, codec)
            done += count
            for future in [pool.submit(run_cart, items) for items in per_cart.values()]:
                future.result()
            if count:
                consumer.commit(asynchronous=False)
    consumer.close()
    pool.shutdown()
    return timed.result(total, verified=verify(session, ks, topic))


def naive(session: Any, topic: str, ks: str, seconds: float) -> Result:
    store = CartStore(session, ks, write_protocol="conditional")
    store.create()
    codec = command_codec()
    done = 0
    limits: dict[int, int] = {}
    with Timed() as timed:
        consumer = _consumer(topic, f"g.{ks}")
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            for m in consumer.consume(num_messages=1, timeout=0.2):
                cmd = codec.decode(m.value())
                meta = RecordMetadata(m.topic(), m.partition(), m.offset(), m.timestamp()[1], 0, m.key())
                _command(session, store, cmd, meta)
                session.execute(store.delivery_statement(cmd, meta))
                consumer.commit(message=m, asynchronous=False)
                limits[m.partition()] = m.offset() + 1
                done += 1
    consumer.close()
    rate, info = timed.result(max(done, 1), verified=verify(session, ks, topic, limits), records=done)
    return rate, info


def rxcqrs_mode(session: Any, topic: str, ks: str, total: int, mode: str, idempotent: bool = True,
                protocol: str = "fenced") -> Result:
    """In process, as ``cart consume`` runs it (its defaults: :mod:`rxcqrs.examples.shoppingcart.tuning`),
    timed from the source's start (client start-up and the group join included) until every record is
    committed."""
    from rxcqrs.examples.shoppingcart.pipeline import start_pipeline
    from rxcqrs.kafka import KafkaSink, ProducerSettings
    from rxcqrs.operators import DeadLetters

    store = CartStore(session, ks, idempotent=idempotent, write_protocol=protocol)  # type: ignore[arg-type]
    store.create()
    dead = KafkaSink(producer=ProducerSettings())
    with Timed() as timed:
        source = example_source(topic, f"g.{ks}")
        flow = start_pipeline(source, store, mode=mode, dead_letters=DeadLetters(dead))  # type: ignore[arg-type]
        wait_committed(source, total, 1800, flow)
    flow.stop_and_wait()
    dead.on_completed()
    return timed.result(total, verified=verify(session, ks, topic))


def wait_committed(source: Any, total: int, timeout: float, flow: Any = None) -> None:
    """Return once ``source`` committed ``total`` records (or ``flow`` stopped), woken by its commits."""
    _wait(lambda: source.committer.records_committed() >= total or (flow is not None and not flow.running), timeout,
          source.committer.progress)


def example_source(topic: str, group: str) -> Any:
    """A KafkaSource as ``cart consume`` makes it (:mod:`rxcqrs.examples.shoppingcart.tuning`)."""
    from rxcqrs.examples.shoppingcart.tuning import BATCHES, MAX_POLL_RECORDS, PREFETCH, WINDOW
    from rxcqrs.kafka import ConsumerSettings, KafkaSource, SourceSettings

    return KafkaSource(topic, ConsumerSettings(group_id=group, max_poll_records=MAX_POLL_RECORDS),
                       SourceSettings(max_in_flight=WINDOW, prefetch=PREFETCH, batches=BATCHES))


