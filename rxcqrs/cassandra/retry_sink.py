"""CassandraRetrySink (an observer) and cassandra_retry_flow (the serial variant's operator).

Your function turns a command into a statement (or ``(query, params)``, or ``None`` for nothing to write).
It runs on a small worker pool, so it may read first (optimistic locking: read the version, then
``UPDATE ... IF version = ?``). A lightweight transaction that was not applied calls the function again, so
it re-reads; transient errors are retried with the shared backoff; the element itself is retried.
A write whose outcome is unknown is never simply run again: ``resolve(command[, meta])`` reads whether it
took effect, and ``record_unknown(command[, meta], error)`` gives the statement that records it for the
query side when it cannot tell (see :mod:`rxcqrs.cassandra.executor`). Commands with the same order key
(by default the Kafka partition) are never in flight together.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from reactivex import Observable

from rxcqrs.backoff import Backoff
from rxcqrs.cassandra.executor import CassandraExecutor
from rxcqrs.cassandra.stage import ExecutorSink, OrderBy, order_key
from rxcqrs.clock import SYSTEM, Clock
from rxcqrs.messages import Envelope

__all__ = ["CassandraRetrySink", "cassandra_retry_flow"]

T = TypeVar("T")
CommandFn = Callable[..., Any]


def _call(fn: CommandFn, item: Any, with_meta: bool) -> Callable[..., Any]:
    """``fn`` bound to the item's value (and metadata): ``fn(value[, meta], *more)``."""
    if isinstance(item, Envelope):
        args = (item.value, item.meta) if with_meta else (item.value,)
    else:
        args = (item,)
    return lambda *more: fn(*args, *more)


def _optional(fn: CommandFn | None, item: Any, with_meta: bool) -> Callable[..., Any] | None:
    return None if fn is None else _call(fn, item, with_meta)


class CassandraRetrySink(ExecutorSink):
    """Execute ``fn(command)`` (or ``fn(command, meta)`` with ``with_meta``) per envelope; ack on success."""

    def __init__(self, session: Any, fn: CommandFn, *, max_concurrency: int = 16, backoff: Backoff | None = None,
                 order_by: OrderBy = "partition", retry_not_applied: bool = True, with_meta: bool = False,
                 idempotent: bool = False, resolve: CommandFn | None = None,
                 record_unknown: CommandFn | None = None, name: str = "cassandra_retry_sink",
                 clock: Clock = SYSTEM) -> None:
        super().__init__()
        self.fn = fn
        self.order_by = order_by
        self.retry_not_applied = retry_not_applied
        self.with_meta = with_meta
        self.idempotent = idempotent
        self.resolve = resolve
        self.record_unknown = record_unknown
        self.executor = CassandraExecutor(session, max_concurrency=max_concurrency, backoff=backoff,
                                          workers=max_concurrency, name=name, clock=clock)

    def on_next(self, item: Any) -> None:
        self._begin()
        self.executor.submit(item if isinstance(item, Envelope) else None, _call(self.fn, item, self.with_meta),
                             self._ok, self._bad, key=order_key(self.order_by, item),
                             retry_not_applied=self.retry_not_applied, idempotent=self.idempotent,
                             resolve=_optional(self.resolve, item, self.with_meta),
                             record_unknown=_optional(self.record_unknown, item, self.with_meta))


def cassandra_retry_flow(session: Any, fn: CommandFn, *, max_concurrency: int = 16, backoff: Backoff | None = None,
                         order_by: OrderBy = "partition", retry_not_applied: bool = True, with_meta: bool = False,
                         idempotent: bool = False, resolve: CommandFn | None = None,
                         record_unknown: CommandFn | None = None, name: str = "cassandra_retry_flow"
                         ) -> Callable[[Observable[Envelope[T]]], Observable[Envelope[T]]]:
    """Like :class:`CassandraRetrySink`, but passes each envelope on (unchanged) once its command succeeded,
    in partition order: the serial variant (command, then event log). Failures nack and are not passed on.

    Downstream runs on the flow's own emitter thread, never on the driver's event loop (a blocking call
    there, such as preparing a statement, would deadlock the driver)."""
    from rxcqrs.cassandra.results import statement_results

    return statement_results(session, lambda env: _call(fn, env, with_meta), None, max_concurrency=max_concurrency,
                             backoff=backoff, order_by=order_by, workers=max_concurrency,
                             retry_not_applied=retry_not_applied, idempotent=idempotent,
                             resolve=lambda env: _optional(resolve, env, with_meta),
                             record_unknown=lambda env: _optional(record_unknown, env, with_meta), name=name)
