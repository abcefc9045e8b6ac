"""Operators that run one statement per envelope and pass its result on, in input order per partition:
``cassandra_conditional`` and ``cassandra_bound_query``. Results are handed downstream on the operator's own
thread, never on the driver's."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import reactivex
from reactivex import Observable, abc

from rxcqrs.backoff import Backoff
from rxcqrs.cassandra.executor import CassandraExecutor, Job, was_applied
from rxcqrs.cassandra.stage import OrderBy, order_key
from rxcqrs.exceptions import DrainTimeoutError
from rxcqrs.messages import Envelope
from rxcqrs.sink import SinkBase

__all__ = ["cassandra_conditional", "cassandra_bound_query", "statement_results"]


def statement_results(session: Any, make: Callable[[Envelope[Any]], Callable[[], Any]],
                      result: Callable[[Any], Any] | None = None, *, max_concurrency: int = 16,
                      backoff: Backoff | None = None, order_by: OrderBy = "partition", workers: int = 0,
                      retry_not_applied: bool = False, idempotent: bool = False,
                      resolve: Callable[[Envelope[Any]], Callable[[], bool | None] | None] = lambda _env: None,
                      record_unknown: Callable[[Envelope[Any]], Callable[[BaseException], Any] | None] = (
                          lambda _env: None),
                      name: str = "cassandra_results"
                      ) -> Callable[[Observable[Envelope[Any]]], Observable[Envelope[Any]]]:
    """The shared mechanism: execute ``make(env)()`` per envelope, then emit ``env.with_value(result(rows))``
    (``env`` itself when ``result`` is None) on an emitter thread. ``workers`` > 0 runs ``make`` on a pool
    (it may block, e.g. read before a conditional write). ``resolve`` and ``record_unknown`` give, per
    envelope, what the executor uses when a write's outcome is unknown.

    On upstream completion it waits for every job; on an upstream error (a source stopping with records still
    in flight) it waits at most ``SinkBase.abandon_timeout`` (after a drain that ran out of time: not at all)
    and abandons the rest (they stay uncommitted)."""

    def _op(source: Observable[Envelope[Any]]) -> Observable[Envelope[Any]]:
        def subscribe(observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
                      ) -> abc.DisposableBase:
            executor = CassandraExecutor(session, max_concurrency=max_concurrency, backoff=backoff,
                                         workers=workers, name=name)
            outbox: "queue.SimpleQueue[tuple[str, Any]]" = queue.SimpleQueue()

            def emitter() -> None:
                while True:
                    kind, value = outbox.get()
                    if kind == "next":
                        try:
                            observer.on_next(value)
                        except Exception as exc:
                            value.nack(exc)
                    elif kind == "completed":
                        observer.on_completed()
                        return
                    else:
                        observer.on_error(value)
                        return

            threading.Thread(target=emitter, name=f"rxcqrs-{name}-emitter", daemon=True).start()

            def ok(job: Job, rows: Any) -> None:
                if job.env is not None:
                    outbox.put(("next", job.env if result is None else job.env.with_value(result(rows))))

            def bad(job: Job, error: BaseException) -> None:
                if job.env is not None:
                    job.env.nack(error)

            def on_next(env: Envelope[Any]) -> None:
                executor.submit(env, make(env), ok, bad, key=order_key(order_by, env),
                                retry_not_applied=retry_not_applied, idempotent=idempotent, resolve=resolve(env),
                                record_unknown=record_unknown(env))

            def finish(kind: str, value: Any) -> None:
                if kind == "completed":
                    executor.wait_idle()
                elif not executor.wait_idle(0.0 if isinstance(value, DrainTimeoutError) else SinkBase.abandon_timeout):
                    executor.abandon()
                executor.close(wait=kind == "completed")
                outbox.put((kind, value))

            return source.subscribe(on_next, lambda e: finish("error", e), lambda: finish("completed", None),
                                    scheduler=scheduler)

        return reactivex.create(subscribe)

    return _op


def cassandra_conditional(session: Any, **options: Any
                          ) -> Callable[[Observable[Envelope[Any]]], Observable[Envelope[Any]]]:
    """Envelope[conditional statement] -> Envelope[None if applied, else the row that prevented it]."""
    def rejected(rows: Any) -> Any:
        return None if was_applied(rows) is not False else rows[0]

    return statement_results(session, lambda env: lambda: env.value, rejected, name="cassandra_conditional",
                             **options)


def cassandra_bound_query(session: Any, prepared: Any, bind: Callable[[Any, Any], Any], **options: Any
                          ) -> Callable[[Observable[Envelope[Any]]], Observable[Envelope[Any]]]:
    """Envelope[value] -> Envelope[rows of ``bind(value, prepared)``] (the first page; use CassandraQuery for
    results larger than a page)."""
    return statement_results(session, lambda env: lambda: bind(env.value, prepared), lambda rows: list(rows or []),
                             name="cassandra_bound_query", **options)
