"""Batches in a pipeline: which stages take them whole, and splitting them into envelopes before one that
does not (so a stage never sees a :class:`~rxcqrs.messages.Batch` it does not expect)."""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import reactivex
from reactivex import Observable, abc

from rxcqrs.messages import Batch

__all__ = ["takes_batches", "batch_aware", "unbatch_", "fit_batches"]

Op = TypeVar("Op", bound=Callable[..., Any])


def takes_batches(stage: Any) -> bool:
    """Whether ``stage`` (an operator or a sink) handles a :class:`Batch` whole."""
    return bool(getattr(stage, "takes_batches", False))


def batch_aware(op: Op) -> Op:
    """Mark an operator as one that takes batches. It must take envelopes too: a batch may reach it as single
    records (after a stage that fell back to them), and a source without ``batches`` sends only envelopes."""
    op.takes_batches = True  # type: ignore[attr-defined]
    return op


def unbatch_() -> Callable[[Observable[Any]], Observable[Any]]:
    """Each batch as its envelopes (each settling its share of the batch's ticket); anything else as is."""

    def _op(source: Observable[Any]) -> Observable[Any]:
        def subscribe(observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
                      ) -> abc.DisposableBase:
            def on_next(item: Any) -> None:
                if type(item) is Batch:
                    for env in item.envelopes():
                        observer.on_next(env)
                else:
                    observer.on_next(item)

            return source.subscribe(on_next, observer.on_error, observer.on_completed, scheduler=scheduler)

        return reactivex.create(subscribe)

    return _op


def fit_batches(operators: Sequence[Callable[[Observable[Any]], Observable[Any]]], sink: Any | None
                ) -> list[Callable[[Observable[Any]], Observable[Any]]]:
    """``operators`` with an :func:`unbatch_` before the first one that does not take batches, or at the end
    when ``sink`` (``None``: a subscriber we do not know) does not."""
    for i, op in enumerate(operators):
        if not takes_batches(op):
            return [*operators[:i], unbatch_(), *operators[i:]]
    if sink is not None and takes_batches(sink):
        return list(operators)
    return [*operators, unbatch_()]
