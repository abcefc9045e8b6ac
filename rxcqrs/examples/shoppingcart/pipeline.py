"""The CQRS pipelines of the example, and the producer side.

batched (the default)::

    KafkaSource -> decode (poison -> <topic>.dlq) -> AggregateSink(store): per cart, the waiting commands
                   folded over the cached cart, one conditional write, then their events (unlogged batches)

parallel::

    KafkaSource -> decode (poison -> <topic>.dlq) -> broadcast -+-> CassandraRetrySink(store.command)
                                                                +-> map_envelope(event) -> CassandraSink
serial::

    KafkaSource -> decode -> cassandra_retry_flow(store.command) -> map_envelope(event) -> CassandraSink

Either way the offset is committed only once the command and its event are both written.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterable, Literal

import reactivex

from rxcqrs.cassandra import CassandraRetrySink, CassandraSink, cassandra_retry_flow
from rxcqrs.cassandra.aggregate import AggregateSink
from rxcqrs.examples.shoppingcart.codec import command_codec
from rxcqrs.examples.shoppingcart.domain import Command
from rxcqrs.examples.shoppingcart.generator import partition_for
from rxcqrs.examples.shoppingcart.store import CartStore
from rxcqrs.examples.shoppingcart.tuning import CART_WRITES
from rxcqrs.flow import Flow, run
from rxcqrs.kafka import KafkaSink, ProducerSettings
from rxcqrs.messages import Envelope, OutgoingRecord
from rxcqrs.operators import DeadLetters, branch, broadcast, decode, map_envelope

__all__ = ["Mode", "MODES", "start_pipeline", "publish_commands", "by_cart"]


Mode = Literal["batched", "parallel", "serial"]
MODES = ("batched", "parallel", "serial")


def by_cart(env: Any) -> Any:
    """Order per cart (finer than per partition, and still every cart's commands in order)."""
    return env.value.cart_id if isinstance(env, Envelope) else None


def start_pipeline(source: Any, store: CartStore, *, mode: Mode = "batched", dead_letters: DeadLetters,
                   concurrency: int = 32) -> Flow:
    """Subscribe the example pipeline to ``source`` (a KafkaSource) and return the running :class:`Flow`."""
    session = store.session
    decoded = decode(command_codec(), require_uuid_key=True, dead_letters=dead_letters)
    if mode == "batched":
        carts = AggregateSink(session, store, idempotent=store.idempotent, max_concurrency=CART_WRITES,
                              name="carts")
        if hasattr(source, "on_revoke"):
            source.on_revoke(carts.forget)  # another member may write those carts now
        return run(source, decoded, carts)
    to_event = map_envelope(lambda env: store.event_statement(env.value, env.meta))  # type: ignore[arg-type]
    events = CassandraSink(session, max_concurrency=2 * concurrency, name="event-log")
    # an unknown outcome is resolved by a serial read of the cart, or recorded for the query side
    if mode == "parallel":
        commands = CassandraRetrySink(session, store.command, with_meta=True, order_by=by_cart,
                                      max_concurrency=concurrency, resolve=store.was_applied,
                                      record_unknown=store.record_unknown, name="commands")
        return run(source, decoded, broadcast(commands, branch(to_event, events)))
    if mode == "serial":
        command_flow = cassandra_retry_flow(session, store.command, with_meta=True, order_by=by_cart,
                                            max_concurrency=concurrency, resolve=store.was_applied,
                                            record_unknown=store.record_unknown, name="commands")
        return run(source, decoded, command_flow, to_event, events)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def publish_commands(commands: Iterable[Command], topic: str, partitions: int,
                     producer: ProducerSettings | None = None, extra: Iterable[OutgoingRecord] = ()) -> int:
    """Send commands with a KafkaSink: key = a fresh event id (UUID string), partition from the cart id."""
    codec = command_codec()
    records = [OutgoingRecord(codec.encode(cmd), str(uuid.uuid4()).encode(), topic,
                              partition=partition_for(cmd.cart_id, partitions)) for cmd in commands]
    records += list(extra)
    sink = KafkaSink(topic, producer or ProducerSettings())
    reactivex.from_iterable(records).subscribe(sink)
    sink.raise_if_failed()
    return sink.sent
