"""What the Cassandra sinks and flows share: an executor, per-partition ordering, settle-on-completion."""

from __future__ import annotations

from typing import Any, Callable, Hashable, Literal

from rxcqrs.cassandra.executor import CassandraExecutor, Job
from rxcqrs.messages import Envelope
from rxcqrs.sink import SinkBase

__all__ = ["OrderBy", "order_key", "ExecutorSink"]

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


class ExecutorSink(SinkBase):
    """A sink over a :class:`CassandraExecutor`: settle each envelope when its job finished."""

    executor: CassandraExecutor

    def _ok(self, job: Job, _rows: Any) -> None:
        if job.env is not None:
            job.env.ack()
        self._end()

    def _bad(self, job: Job, error: BaseException) -> None:
        if job.env is not None:
            job.env.nack(error)
        else:
            self._fail(error)
        self._end()

    def abandon(self) -> None:
        self.executor.abandon()

    def close(self) -> None:
        self.executor.close(wait=self.upstream_error is None)
