"""What the Cassandra sinks and flows share: an executor, per-partition ordering, settle-on-completion."""

from __future__ import annotations

from typing import Any, Callable, Hashable, Literal

from rxcqrs.backoff import Backoff
from rxcqrs.cassandra.executor import CassandraExecutor
from rxcqrs.messages import Envelope

__all__ = ["OrderBy", "order_key", "make_executor"]

#: "partition": never two jobs of one Kafka partition at once; "key": of one record key; None: no order
OrderBy = Literal["partition", "key"] | Callable[[Any], Hashable] | None


def order_key(order_by: OrderBy, item: Any) -> Hashable:
    if order_by is None:
        return None
    if callable(order_by):
        return order_by(item)
    if not isinstance(item, Envelope):
        return None
    if order_by == "partition":
        return (item.meta.topic, item.meta.partition)
    return (item.meta.topic, item.meta.key)


def make_executor(session: Any, name: str, max_concurrency: int, backoff: Backoff | None, workers: int
                  ) -> CassandraExecutor:
    return CassandraExecutor(session, max_concurrency=max_concurrency, backoff=backoff, workers=workers, name=name)
