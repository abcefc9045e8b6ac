"""The building block of rxcqrs operators: a per-envelope (or per-batch) failure nacks that envelope, the stream
goes on."""

from __future__ import annotations

from typing import Any, Callable

import reactivex
from reactivex import Observable, abc

from rxcqrs import tracing
from rxcqrs.exceptions import RxCqrsError, StageError
from rxcqrs.messages import Batch, Envelope
from rxcqrs.operators._batch import batch_aware

__all__ = ["envelope_operator", "emit", "stage_error", "Handler", "BatchHandler"]

Handler = Callable[[Envelope[Any], abc.ObserverBase[Any]], None]
#: ``(batch, downstream, one)``: handles a whole batch; ``one(envelope)`` is the per-envelope path (with its
#: own failure handling), for a batch that must fall back to single records
BatchHandler = Callable[[Batch[Any], abc.ObserverBase[Any], Callable[[Envelope[Any]], None]], None]


class _Downstream(Exception):
    """Carries an exception raised *below* an operator up through it, so only the broadcast guard sees it."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


def emit(observer: abc.ObserverBase[Any], value: Any) -> None:
    try:
        observer.on_next(value)
    except Exception as exc:
        raise _Downstream(exc) from exc


def stage_error(stage: str, env: Envelope[Any] | Batch[Any], exc: BaseException) -> RxCqrsError:
    if isinstance(exc, RxCqrsError):
        return exc
    error = StageError(f"{stage} failed on {env.meta}: {exc!r}")
    error.__cause__ = exc
    return error


def envelope_operator(handle: Handler, name: str, handle_batch: BatchHandler | None = None
                      ) -> Callable[[Observable[Any]], Observable[Any]]:
    """Wrap ``handle(envelope, downstream)``: its own exceptions nack the envelope (counted as
    ``<name>_errors``); exceptions from further downstream pass through untouched. With ``handle_batch`` the
    operator takes batches too (the same rules, for the batch as a whole)."""

    def _op(source: Observable[Any]) -> Observable[Any]:
        def subscribe(observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
                      ) -> abc.DisposableBase:
            def on_next(env: Envelope[Any]) -> None:
                span = tracing.stage(name, env.meta) if tracing.ACTIVE else None
                try:
                    handle(env, observer)
                except _Downstream as wrapped:
                    raise wrapped.error from None
                except Exception as exc:
                    env.count(f"{name}_errors")
                    env.nack(stage_error(name, env, exc))
                finally:
                    if span is not None:
                        span.end()

            if handle_batch is None:
                return source.subscribe(on_next, observer.on_error, observer.on_completed, scheduler=scheduler)
            take_batch = handle_batch

            def on_item(item: Any) -> None:
                if type(item) is not Batch:
                    on_next(item)
                    return
                span = tracing.stage(name, item.records[0]) if tracing.ACTIVE and item.records else None
                try:
                    take_batch(item, observer, on_next)
                except _Downstream as wrapped:
                    raise wrapped.error from None
                except Exception as exc:
                    item.count(f"{name}_errors")
                    item.nack(stage_error(name, item, exc))
                finally:
                    if span is not None:
                        span.end()

            return source.subscribe(on_item, observer.on_error, observer.on_completed, scheduler=scheduler)

        return reactivex.create(subscribe)

    return _op if handle_batch is None else batch_aware(_op)
