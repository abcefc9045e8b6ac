"""The CQRS pipelines of the example, and the producer side. All three run the one command engine
(:class:`~rxcqrs.cassandra.AggregateSink`) with the store's write protocol (fenced by default).

batched (the default)::

    KafkaSource -> decode (poison -> <topic>.dlq) -> AggregateSink(store): per cart, the waiting commands
                   folded over the cached cart, the rejections, one state write, then their events

parallel (the mission's broadcast: command branch and event-log branch jointly gate the commit)::

    KafkaSource -> decode -> broadcast -+-> AggregateSink(store, log_events=False)   (rejections, state)
                                        +-> map_envelope(event) -> CassandraSink      (the event log)
serial::

    KafkaSource -> decode -> aggregate_flow(store) -> map_envelope(event) -> CassandraSink

Either way the offset is committed only once the state and the event are both written.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterable, Literal

import reactivex

from rxcqrs.cassandra import CassandraSink
from rxcqrs.cassandra.aggregate import AggregateSink
from rxcqrs.cassandra.aggregate_flow import aggregate_flow
from rxcqrs.examples.shoppingcart.codec import command_codec
from rxcqrs.examples.shoppingcart.domain import Command
from rxcqrs.examples.shoppingcart.generator import partition_for
from rxcqrs.examples.shoppingcart.store import CartStore
from rxcqrs.examples.shoppingcart.tuning import CART_WRITES
from rxcqrs.flow import Flow, run
from rxcqrs.kafka import KafkaSink, ProducerSettings
from rxcqrs.messages import OutgoingRecord
from rxcqrs.operators import DeadLetters, branch, broadcast, decode, map_envelope

__all__ = ["Mode", "MODES", "start_pipeline", "publish_commands"]


Mode = Literal["batched", "parallel", "serial"]
MODES = ("batched", "parallel", "serial")


def start_pipeline(source: Any, store: CartStore, *, mode: Mode = "batched", dead_letters: DeadLetters,
                   concurrency: int = CART_WRITES, merge_partitions: int = 10) -> Flow:
    """Subscribe the example pipeline to ``source`` (a KafkaSource) and return the running :class:`Flow`."""
    session = store.session
    decoded = decode(command_codec(), require_uuid_key=True, dead_letters=dead_letters)
    engine = {"write_protocol": store.write_protocol, "idempotent": store.idempotent, "max_concurrency": concurrency,
              "merge_partitions": merge_partitions}
    if mode == "batched":
        return run(source, decoded, AggregateSink(session, store, name="carts", **engine))  # type: ignore[arg-type]
    to_event = map_envelope(lambda env: store.event_statement(env.value, env.meta))  # type: ignore[arg-type]
    events = CassandraSink(session, max_concurrency=2 * concurrency, name="event-log")
    if mode == "parallel":
        carts = AggregateSink(session, store, log_events=False, name="carts", **engine)  # type: ignore[arg-type]
        return run(source, decoded, broadcast(carts, branch(to_event, events)))
    if mode == "serial":
        return run(source, decoded, aggregate_flow(session, store, name="carts", **engine), to_event, events)
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
