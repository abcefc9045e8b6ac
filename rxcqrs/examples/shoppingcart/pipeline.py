"""The CQRS pipelines of the example (:func:`~rxcqrs.cassandra.pipelines.aggregate_pipeline` over the cart's
store: batched, parallel or serial, all on the one command engine), and the producer side."""

from __future__ import annotations

import uuid
from typing import Any, Iterable

import reactivex

from rxcqrs.cassandra.pipelines import MODES, Mode, aggregate_pipeline
from rxcqrs.examples.shoppingcart.codec import command_codec
from rxcqrs.examples.shoppingcart.domain import Command
from rxcqrs.examples.shoppingcart.generator import partition_for
from rxcqrs.examples.shoppingcart.store import CartStore
from rxcqrs.examples.shoppingcart.tuning import CART_WRITES, CONDITIONAL_CART_WRITES
from rxcqrs.flow import Flow
from rxcqrs.kafka import KafkaSink, ProducerSettings
from rxcqrs.messages import OutgoingRecord
from rxcqrs.operators import DeadLetters, decode

__all__ = ["Mode", "MODES", "start_pipeline", "publish_commands"]


def start_pipeline(source: Any, store: CartStore, *, mode: Mode = "batched", dead_letters: DeadLetters,
                   concurrency: int | None = None, merge_partitions: int = 10, atomic_batches: bool = True,
                   producer: Any = None, schema_registry: str | None = None) -> Flow:
    """Subscribe the example pipeline to ``source`` (a KafkaSource) and return the running :class:`Flow`;
    with ``schema_registry`` (a URL) the commands are read in the Confluent wire format, each writer schema
    resolved to the command schema. ``concurrency``: carts written at once (default: the tuning's, for batched
    mode with the store's write protocol)."""
    if concurrency is None:
        paxos = mode == "batched" and store.write_protocol == "conditional"
        concurrency = CONDITIONAL_CART_WRITES if paxos else CART_WRITES
    decoded = decode(command_codec(schema_registry), require_uuid_key=True, dead_letters=dead_letters)
    return aggregate_pipeline(source, decoded, store, mode=mode, name="carts", idempotent=store.idempotent,
                              max_concurrency=concurrency, merge_partitions=merge_partitions,
                              atomic_batches=atomic_batches, producer=producer)


def publish_commands(commands: Iterable[Command], topic: str, partitions: int,
                     producer: ProducerSettings | None = None, extra: Iterable[OutgoingRecord] = (),
                     schema_registry: str | None = None) -> int:
    """Send commands with a KafkaSink: key = a fresh event id (UUID string), partition from the cart id; raw
    Avro, or with ``schema_registry`` (a URL) the Confluent wire format under the topic's subject."""
    codec = command_codec(schema_registry, topic)
    records = [OutgoingRecord(codec.encode(cmd), str(uuid.uuid4()).encode(), topic,
                              partition=partition_for(cmd.cart_id, partitions)) for cmd in commands]
    records += list(extra)
    sink = KafkaSink(topic, producer or ProducerSettings())
    reactivex.from_iterable(records).subscribe(sink)
    sink.raise_if_failed()
    return sink.sent
