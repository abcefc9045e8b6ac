"""The three pipelines of an aggregate, all on the one command engine (:class:`AggregateSink`).

batched (the default)::

    source -> decode -> AggregateSink(store): per entity, its waiting commands decided over the cached state;
                        the rejections, the decided events and their bucket index, then one state write

parallel (the mission's broadcast: command branch and event-log branch jointly gate the commit)::

    source -> decode -> broadcast -+-> AggregateSink(store, log_events=False)       (rejections, state)
                                   +-> map_envelope(delivery_statement) -> CassandraSink   (the event log)
serial::

    source -> decode -> aggregate_flow(store) -> map_envelope(delivery_statement) -> CassandraSink

Either way a record is committed only once its state and its events are written; with an event stream
(``DeciderStore(events_topic=...)``) also only once its decided events were published, before the writes.
The event-log branch of the parallel and serial pipelines logs every delivery (``Decider(logged=...)``),
since it does not see the state.
"""

from __future__ import annotations

from typing import Any, Literal

from rxcqrs.cassandra.aggregate import AggregateSink
from rxcqrs.cassandra.aggregate_flow import aggregate_flow
from rxcqrs.cassandra.decider_store import DeciderStore
from rxcqrs.cassandra.sink import CassandraSink
from rxcqrs.exceptions import ConfigError
from rxcqrs.flow import Flow, run
from rxcqrs.kafka.publisher import KafkaPublisher
from rxcqrs.kafka.settings import ProducerSettings
from rxcqrs.operators import branch, broadcast, map_envelope

__all__ = ["Mode", "MODES", "aggregate_pipeline"]

Mode = Literal["batched", "parallel", "serial"]
MODES = ("batched", "parallel", "serial")


def aggregate_pipeline(source: Any, decoded: Any, store: DeciderStore[Any, Any, Any], *, mode: Mode = "batched",
                       name: str | None = None, producer: ProducerSettings | None = None, **engine: Any) -> Flow:
    """Run ``source -> decoded -> `` the ``mode`` pipeline of ``store``'s aggregate; ``engine``: options of
    :class:`AggregateSink` (the write protocol and keyspace come from the store). A store with an event
    stream publishes to it with a producer of ``producer`` (its topic must exist)."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "batched":
        store.decider.require_logged(mode)
    session = store.session
    options = {"write_protocol": store.write_protocol, "keyspace": store.keyspace, "name": name or store.name,
               **engine}
    if store.stream is not None and "publisher" not in options:
        publisher = KafkaPublisher(store.stream.topic, producer or ProducerSettings())
        publisher.check()
        options["publisher"] = publisher
    if mode == "batched":
        return run(source, decoded, AggregateSink(session, store, **options))
    to_event = map_envelope(lambda env: store.delivery_statement(env.value, env.meta))
    concurrency = options.get("max_concurrency", 32)
    events = CassandraSink(session, max_concurrency=2 * concurrency, name="event-log")
    if mode == "parallel":
        return run(source, decoded, broadcast(AggregateSink(session, store, log_events=False, **options),
                                              branch(to_event, events)))
    return run(source, decoded, aggregate_flow(session, store, **options), to_event, events)
