"""The projection section of ``make bench``: events/s into each read model of the carts, rxcqrs's projection
beside a hand-written confluent-kafka loop doing the same writes (the same rows, the same timestamps; for the
totals the same logged batch of rows, entity positions and offset per poll), every result verified against the
fold of the command topic."""

from __future__ import annotations

import uuid
from typing import Any, Callable

from benchmarks.cart import BOOTSTRAP, Result, Timed, _wait, wait_committed
from rxcqrs.cassandra.event_stream import StreamEvent
from rxcqrs.cassandra.fence import write_timestamp
from rxcqrs.cassandra.projection import EntityView, Projection, TotalsView
from rxcqrs.examples.shoppingcart.read_models import CARTS_BY_OWNER, ITEM_TOTALS, expected_views, stored_views


def event_stream(session: Any, topic: str, ks: str, partitions: int = 8) -> str:
    """Run the command side once over ``topic`` with the event stream on; return the stream's topic."""
    from rxcqrs.examples.shoppingcart.pipeline import start_pipeline
    from rxcqrs.examples.shoppingcart.store import CartStore
    from rxcqrs.kafka import KafkaSink, KafkaSource, ProducerSettings, SourceSettings, create_topics
    from rxcqrs.kafka.admin import committed_offsets, end_offsets
    from rxcqrs.operators import DeadLetters

    events = f"{topic}.events"
    create_topics({events: partitions}, bootstrap_servers=BOOTSTRAP)
    store = CartStore(session, ks, events_topic=events)
    store.create()
    group = f"g.{ks}.cmds"
    source = KafkaSource(topic, _consumer_settings(group), SourceSettings(batches=True))
    dead = KafkaSink(producer=ProducerSettings(bootstrap_servers=BOOTSTRAP))
    flow = start_pipeline(source, store, dead_letters=DeadLetters(dead),
                          producer=ProducerSettings(bootstrap_servers=BOOTSTRAP))
    ends = end_offsets(topic, bootstrap_servers=BOOTSTRAP)
    _wait(lambda: committed_offsets(group, topic, bootstrap_servers=BOOTSTRAP) == ends, 600)
    flow.stop_and_wait()
    dead.on_completed()
    return events


def _consumer_settings(group: str) -> Any:
    from rxcqrs.kafka import ConsumerSettings

    return ConsumerSettings(group_id=group, bootstrap_servers=BOOTSTRAP)


def expected(topic: str) -> tuple[dict[Any, Any], dict[Any, Any]]:
    from rxcqrs.examples.shoppingcart.codec import command_codec
    from rxcqrs.examples.shoppingcart.domain import fold
    from rxcqrs.kafka.admin import read_topic

    per_cart: dict[uuid.UUID, list[Any]] = {}
    codec = command_codec()
    for record in read_topic(topic, bootstrap_servers=BOOTSTRAP):
        cmd = codec.decode(record.value)
        per_cart.setdefault(cmd.cart_id, []).append(cmd)
    return expected_views((cid, cart) for cid, cmds in per_cart.items() if (cart := fold(cmds)) is not None)


def _verified(session: Any, ks: str, events: str, want: tuple[dict[Any, Any], dict[Any, Any]],
              view: EntityView | TotalsView) -> bool:
    owners, totals = stored_views(_projection(session, ks, events, [CARTS_BY_OWNER, ITEM_TOTALS]), ks)
    return owners == want[0] if view is CARTS_BY_OWNER else totals == want[1]


def _projection(session: Any, ks: str, events: str, views: list[Any]) -> Projection:
    from rxcqrs.examples.shoppingcart.store import CartStore

    stream = CartStore(None, ks, events_topic=events).stream
    assert stream is not None
    return Projection(session, ks, "cart_views", stream, views)


def rxcqrs_projection(session: Any, events: str, ks: str, total: int, view: EntityView | TotalsView,
                      want: tuple[dict[Any, Any], dict[Any, Any]]) -> Result:
    """``Projection(...).sink()`` after a KafkaSource of the stream, timed from the source's start until every
    event is committed."""
    from rxcqrs.flow import run
    from rxcqrs.kafka import KafkaSource

    projection = _projection(session, ks, events, [view])
    _projection(session, ks, events, [CARTS_BY_OWNER, ITEM_TOTALS]).create_schema()
    with Timed() as timed:
        source = KafkaSource(events, _consumer_settings(f"g.{ks}"))
        flow = run(source, projection.sink())
        wait_committed(source, total, 1800, flow)
    flow.stop_and_wait()
    return timed.result(total, verified=_verified(session, ks, events, want, view))


def hand_projection(session: Any, events: str, ks: str, total: int, view: EntityView | TotalsView,
                    want: tuple[dict[Any, Any], dict[Any, Any]]) -> Result:
    """A confluent-kafka loop: poll up to 2,000 events, write what they change, wait, commit."""
    from confluent_kafka import Consumer

    from rxcqrs.cassandra.fence import Fence

    full = _projection(session, ks, events, [CARTS_BY_OWNER, ITEM_TOTALS])
    full.create_schema()
    stream = full.stream
    write = _entity_writes(session, ks, view) if isinstance(view, EntityView) else None
    done = 0
    with Timed() as timed:
        consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"g.{ks}", "enable.auto.commit": False,
                             "auto.offset.reset": "earliest"})
        consumer.subscribe([events])
        totals = None if write is not None else _HandTotals(session, ks, Fence(session, ks, f"g.{ks}", events).take())
        while done < total:
            messages = consumer.consume(num_messages=2000, timeout=0.2)
            if not messages:
                continue
            decoded = [(m.partition() or 0, m.offset() or 0, stream.decode(m.value())) for m in messages]
            if write is not None:
                futures = [session.execute_async(s) for _p, _o, e in decoded for s in write(e)]
            else:
                assert totals is not None
                copies, states = totals.batches(decoded)
                for future in [session.execute_async(b) for b in copies]:
                    future.result()
                futures = [session.execute_async(b) for b in states]
            for future in futures:
                future.result()
            consumer.commit(asynchronous=False)
            done += len(messages)
    consumer.close()  # like every contender, timed until its last commit
    return timed.result(total, verified=_verified(session, ks, events, want, view))


def _entity_writes(session: Any, ks: str, view: EntityView) -> Callable[[StreamEvent[Any, Any]], list[Any]]:
    insert = session.prepare(f"INSERT INTO {ks}.{view.table} (owner, cart_id, items, units) VALUES (?, ?, ?, ?) "
                             "USING TIMESTAMP ?")
    delete = session.prepare(f"DELETE FROM {ks}.{view.table} USING TIMESTAMP ? WHERE owner = ? AND cart_id = ?")

    def writes(e: StreamEvent[Any, Any]) -> list[Any]:
        out = []
        if e.before is not None and (e.after is None or e.after.owner != e.before.owner):
            out.append(delete.bind((e.position, e.before.owner, e.entity)))
        if e.after is not None:
            out.append(insert.bind((e.after.owner, e.entity, len(e.after.items), sum(e.after.items.values()),
                                    e.position)))
        return out

    return writes


class _HandTotals:
    """item_totals by hand: cached rows per (item, partition); per partition and poll the view's rows copied from
    the state (fenced, one unlogged batch), then the partition's state in its one Cassandra partition (its rows,
    entity positions, next offset) as one batch conditional on the owner (what rxcqrs writes); each partition
    claimed once (one lightweight transaction)."""

    def __init__(self, session: Any, ks: str, epoch: int) -> None:
        self.session, self.epoch = session, epoch
        state = f"{ks}.cart_views_state"
        self.read = session.prepare(f"SELECT amounts FROM {state} WHERE stream_topic = 'hand' AND "
                                    "stream_partition = ? AND kind = 'item_totals' AND item = ?")
        self.write = session.prepare(f"INSERT INTO {ks}.item_totals (item, stream_partition, units, carts) "
                                     "VALUES (?, ?, ?, ?) USING TIMESTAMP ?")
        self.claim = session.prepare(f"UPDATE {state} SET owner = ? WHERE stream_topic = 'hand' AND "
                                     "stream_partition = ? IF owner = null")
        self.amounts = session.prepare(f"UPDATE {state} SET amounts = ? WHERE stream_topic = 'hand' AND "
                                       "stream_partition = ? AND kind = ? AND item = ?")
        self.offset_write = session.prepare(f"UPDATE {state} SET next_offset = ? WHERE stream_topic = 'hand' AND "
                                            "stream_partition = ? IF owner = ?")
        self.rows: dict[tuple[Any, int], list[int]] = {}
        self.seen: dict[Any, int] = {}
        self.claimed: set[int] = set()

    def batches(self, decoded: list[tuple[int, int, StreamEvent[Any, Any]]]) -> tuple[list[Any], list[Any]]:
        """The copies, then the states, of a poll."""
        from cassandra.query import BatchStatement, BatchType

        by_partition: dict[int, list[tuple[int, StreamEvent[Any, Any]]]] = {}
        for partition, offset, event in decoded:
            by_partition.setdefault(partition, []).append((offset, event))
        copies, states = [], []
        for partition, items in by_partition.items():
            if partition not in self.claimed:
                assert self.session.execute(self.claim, (self.epoch, partition)).one()[0]
                self.claimed.add(partition)
            changed, positions = set(), {}
            for _offset, event in items:
                if event.position <= self.seen.get(event.entity, -1):
                    continue
                for (item,), delta in ITEM_TOTALS.deltas(event).items():
                    row = self._row(item, partition)
                    row[0] += delta["units"]
                    row[1] += delta["carts"]
                    changed.add(item)
                self.seen[event.entity] = positions[event.entity] = event.position
            stamp = write_timestamp(self.epoch, items[-1][0])
            copy, state = BatchStatement(BatchType.UNLOGGED), BatchStatement(BatchType.UNLOGGED)
            state.add(self.offset_write, (items[-1][0] + 1, partition, self.epoch))
            for item in changed:
                units, carts = self.rows[(item, partition)]
                copy.add(self.write, (item, partition, units, carts, stamp))
                state.add(self.amounts, ({"units": units, "carts": carts}, partition, "item_totals", repr((item,))))
            for entity, position in positions.items():
                state.add(self.amounts, ({"position": position}, partition, ".positions", repr(entity)))
            if changed:
                copies.append(copy)
            states.append(state)
        return copies, states

    def _row(self, item: Any, partition: int) -> list[int]:
        found = self.rows.get((item, partition))
        if found is None:
            row = self.session.execute(self.read, (partition, repr((item,)))).one()
            found = self.rows[(item, partition)] = [row.amounts["units"], row.amounts["carts"]] if row else [0, 0]
        return found


def projection_section(session: Any, commands: int, rounds: int, row: Callable[..., None],
                       produce: Callable[[int, int], str], drop: Callable[[Any, str], None]) -> None:
    """Both read models, rxcqrs beside the hand loop, ``rounds`` interleaved rounds, on one event stream."""
    import statistics

    from benchmarks.cart import keyspace

    topic = produce(200, commands)
    source_ks = keyspace("stream")
    events = event_stream(session, topic, source_ks)
    drop(session, source_ks)
    from rxcqrs.kafka.admin import end_offsets

    total = sum(end_offsets(events, bootstrap_servers=BOOTSTRAP).values())
    want = expected(topic)
    for label, view in (("carts_by_owner (EntityView)", CARTS_BY_OWNER), ("item_totals (TotalsView)", ITEM_TOTALS)):
        contenders = {"rxcqrs projection": rxcqrs_projection, "hand confluent loop": hand_projection}
        rates: dict[str, list[float]] = {n: [] for n in contenders}
        cpus: dict[str, list[float]] = {n: [] for n in contenders}
        checks: dict[str, bool] = {n: True for n in contenders}
        names = list(contenders)
        for i in range(rounds):
            for name in names[i % 2:] + names[:i % 2]:
                ks = keyspace("views")
                rate, info = contenders[name](session, events, ks, total, view, want)
                rates[name].append(rate)
                cpus[name].append(info["cpu_us"])
                checks[name] = checks[name] and bool(info.get("verified"))
                drop(session, ks)
        hand = statistics.median(rates["hand confluent loop"])
        for name in names:
            rate = statistics.median(rates[name])
            row("projection", f"{name} [{label}, {total:,} events]", rate, cpu_us=statistics.median(cpus[name]),
                vs_hand_loop=round(rate / hand, 2), rounds=len(rates[name]), verified=checks[name])
