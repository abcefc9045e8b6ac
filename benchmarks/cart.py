"""The shopping cart end to end: rxcqrs in each mode against hand-written loops, on the same topic, each
into a keyspace of its own, every final state verified against the fold of the topic.

Hand-written contenders (kafka-python + the cassandra-driver, the same tables and statements as CartStore):

* ``hand cart-batched``: polls of 2,000; per cart one conditional write advancing the state by every
  command of the poll (cached state, read only on a miss or a conflict); the poll's events as unlogged
  batches; commit after each poll. The design rxcqrs' batched mode follows.
* ``hand per-command``: per cart in order, 32 carts at a time: read, conditional write, event insert;
  commit after each poll. What rxcqrs' parallel mode does.
* ``naive``: one record at a time: read, conditional write, event insert, commit. Run for a fixed time on a
  prefix of the topic (it would take minutes on all of it); verified on what it committed.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from rxcqrs.cassandra.aggregate import Stored
from rxcqrs.examples.shoppingcart.codec import command_codec
from rxcqrs.examples.shoppingcart.domain import Command, Rejected, apply, fold
from rxcqrs.examples.shoppingcart.store import CartStore, event_payload
from rxcqrs.kafka.settings import default_bootstrap
from rxcqrs.messages import RecordMetadata

BOOTSTRAP = default_bootstrap()  # $RXCQRS_KAFKA_BOOTSTRAP: the same servers as every other contender


def keyspace(name: str) -> str:
    return f"bench_{name}_{uuid.uuid4().hex[:6]}"


def verify(session: Any, ks: str, topic: str, limits: dict[int, int] | None = None) -> bool:
    """Every cart equals the fold of the topic's commands (below ``limits`` per partition, if given)."""
    from rxcqrs.kafka.admin import read_topic

    codec = command_codec()
    per_cart: dict[uuid.UUID, list[Command]] = defaultdict(list)
    for record in read_topic(topic, bootstrap_servers=BOOTSTRAP, limits=limits):
        cmd = codec.decode(record.value)
        per_cart[cmd.cart_id].append(cmd)
    expected = {cid: cart for cid, cmds in per_cart.items() if (cart := fold(cmds)) is not None}
    return dict(CartStore(session, ks).all_carts()) == expected


def _consumer(topic: str, group: str, max_records: int = 2000) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(topic, bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False,
                         auto_offset_reset="earliest", max_poll_records=max_records,
                         max_partition_fetch_bytes=1024 * 1024)


def _meta(record: Any) -> RecordMetadata:
    return RecordMetadata(record.topic, record.partition, record.offset, record.timestamp, 0, record.key)


def hand_cart_batched(session: Any, topic: str, ks: str, total: int) -> tuple[float, dict[str, Any]]:
    from cassandra.query import BatchStatement, BatchType

    store = CartStore(session, ks)
    store.create()
    store.prepare()
    codec = command_codec()
    consumer = _consumer(topic, f"g.{ks}")
    cache: dict[uuid.UUID, Stored[Any]] = {}
    done = 0
    started = time.perf_counter()
    while done < total:
        polled = consumer.poll(timeout_ms=200, max_records=2000)
        per_cart: dict[uuid.UUID, list[tuple[Command, RecordMetadata]]] = defaultdict(list)
        for records in polled.values():
            for r in records:
                cmd = codec.decode(r.value)
                per_cart[cmd.cart_id].append((cmd, _meta(r)))
                done += 1
        pending = dict(per_cart)
        while pending:
            misses = [cid for cid in pending if cid not in cache]
            for cid, future in [(cid, session.execute_async(store.read_row(cid))) for cid in misses]:
                cache[cid] = store.stored(list(future.result()))
            writes = []
            for cid, items in pending.items():
                row = cache[cid]
                state, applied = row.state, dict(row.applied)
                for cmd, meta in items:
                    result = apply(state, cmd)
                    if not isinstance(result, Rejected):
                        state = result
                    applied[meta.partition] = meta.offset
                writes.append((cid, Stored(state, (row.seq or 0) + 1, applied),
                               session.execute_async(store.update(cid, row, state, applied))))
            conflicts = {}
            for cid, after, future in writes:
                if future.result().one()[0]:
                    cache[cid] = after
                else:
                    cache.pop(cid)
                    conflicts[cid] = pending[cid]
            pending = conflicts
        futures = []
        for cid, items in per_cart.items():
            batch = BatchStatement(BatchType.UNLOGGED)
            for cmd, meta in items:
                batch.add(store.log.insert(session, cid, meta.key_uuid, meta.timestamp_utc, event_payload(cmd), meta))
            futures.append(session.execute_async(batch))
            futures.append(session.execute_async(store.log.bucket_index(session, cid, items[0][1].timestamp_utc)))
        for future in futures:
            future.result()
        if polled:
            consumer.commit()
    took = time.perf_counter() - started
    consumer.close()
    return total / took, {"verified": verify(session, ks, topic)}


def hand_per_command(session: Any, topic: str, ks: str, total: int) -> tuple[float, dict[str, Any]]:
    store = CartStore(session, ks)
    store.create()
    store.prepare()
    codec = command_codec()
    consumer = _consumer(topic, f"g.{ks}")
    pool = ThreadPoolExecutor(32)

    def run_cart(items: list[tuple[Command, RecordMetadata]]) -> None:
        for cmd, meta in items:
            while True:
                statement = store.command(cmd, meta)
                if statement is None or session.execute(statement).one()[0]:
                    break
            session.execute(store.event_statement(cmd, meta))

    done = 0
    started = time.perf_counter()
    while done < total:
        polled = consumer.poll(timeout_ms=200, max_records=2000)
        per_cart: dict[uuid.UUID, list[tuple[Command, RecordMetadata]]] = defaultdict(list)
        for records in polled.values():
            for r in records:
                cmd = codec.decode(r.value)
                per_cart[cmd.cart_id].append((cmd, _meta(r)))
                done += 1
        for future in [pool.submit(run_cart, items) for items in per_cart.values()]:
            future.result()
        if polled:
            consumer.commit()
    took = time.perf_counter() - started
    consumer.close()
    pool.shutdown()
    return total / took, {"verified": verify(session, ks, topic)}


def naive(session: Any, topic: str, ks: str, seconds: float) -> tuple[float, dict[str, Any]]:
    from kafka import TopicPartition

    store = CartStore(session, ks)
    store.create()
    codec = command_codec()
    consumer = _consumer(topic, f"g.{ks}", max_records=1)
    done = 0
    started = time.perf_counter()
    limits: dict[int, int] = {}
    while time.perf_counter() - started < seconds:
        for records in consumer.poll(timeout_ms=200, max_records=1).values():
            for r in records:
                cmd, meta = codec.decode(r.value), _meta(r)
                while True:
                    statement = store.command(cmd, meta)
                    if statement is None or session.execute(statement).one()[0]:
                        break
                session.execute(store.event_statement(cmd, meta))
                consumer.commit({TopicPartition(r.topic, r.partition): _offset(r.offset + 1)})
                limits[r.partition] = r.offset + 1
                done += 1
    took = time.perf_counter() - started
    consumer.close()
    return done / took, {"verified": verify(session, ks, topic, limits), "records": done}


def _offset(offset: int) -> Any:
    from kafka.structs import OffsetAndMetadata

    return OffsetAndMetadata(offset, "", -1)


def rxcqrs_mode(session: Any, topic: str, ks: str, total: int, mode: str, idempotent: bool = True
                ) -> tuple[float, dict[str, Any]]:
    """In process, as ``cart consume`` runs it (its defaults: :mod:`rxcqrs.examples.shoppingcart.tuning`),
    timed from the source's start (client start-up and the group join included) until every record is
    committed."""
    from rxcqrs.examples.shoppingcart.pipeline import start_pipeline
    from rxcqrs.kafka import KafkaSink, ProducerSettings
    from rxcqrs.operators import DeadLetters

    store = CartStore(session, ks, idempotent=idempotent)
    store.create()
    dead = KafkaSink(producer=ProducerSettings())
    started = time.perf_counter()
    source = example_source(topic, f"g.{ks}")
    flow = start_pipeline(source, store, mode=mode, dead_letters=DeadLetters(dead))  # type: ignore[arg-type]
    _wait(lambda: source.committer.records_committed() >= total or not flow.running, 1800)
    took = time.perf_counter() - started
    flow.stop_and_wait()
    dead.on_completed()
    return total / took, {"verified": verify(session, ks, topic), "cpu_s": None}


def example_source(topic: str, group: str) -> Any:
    """A KafkaSource as ``cart consume`` makes it (:mod:`rxcqrs.examples.shoppingcart.tuning`)."""
    from rxcqrs.examples.shoppingcart.tuning import MAX_POLL_RECORDS, PREFETCH, WINDOW
    from rxcqrs.kafka import ConsumerSettings, KafkaSource, SourceSettings

    return KafkaSource(topic, ConsumerSettings(group_id=group, max_poll_records=MAX_POLL_RECORDS),
                       SourceSettings(max_in_flight=WINDOW, prefetch=PREFETCH))


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark run did not finish")
        event.wait(0.05)  # polling a progress condition
