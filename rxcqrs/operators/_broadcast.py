from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import reactivex
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable

from rxcqrs.exceptions import ConfigError
from rxcqrs.messages import Batch, Envelope
from rxcqrs.operators._batch import batch_aware, takes_batches

__all__ = ["Branch", "branch_", "broadcast_", "AckAll", "Ending", "split_stages"]


class AckAll(abc.ObserverBase[Any]):
    """The end of a pipeline without a sink: whatever arrives there is done."""

    takes_batches = True

    def on_next(self, value: Any) -> None:
        if isinstance(value, (Envelope, Batch)):
            value.ack()

    def on_error(self, error: Exception) -> None:
        pass

    def on_completed(self) -> None:
        pass


class Ending(abc.ObserverBase[Any]):
    """Forwards to ``sink``; once the sink handled the terminal event, tells ``on_end(error or None)``."""

    def __init__(self, sink: Any, on_end: Callable[[Exception | None], None]) -> None:
        self._sink = sink
        self._on_end = on_end
        self.on_next = sink.on_next  # type: ignore[method-assign]  # items go straight through (one call less each)

    def on_next(self, value: Any) -> None:
        self._sink.on_next(value)

    def on_error(self, error: Exception) -> None:
        try:
            self._sink.on_error(error)
        finally:
            self._on_end(error)

    def on_completed(self) -> None:
        try:
            self._sink.on_completed()
        finally:
            self._on_end(None)


def _is_observer(stage: Any) -> bool:
    return isinstance(stage, abc.ObserverBase) or (
        not callable(stage) and all(hasattr(stage, m) for m in ("on_next", "on_error", "on_completed")))


def split_stages(stages: Sequence[Any]) -> tuple[list[Callable[[Observable[Any]], Observable[Any]]], Any]:
    """Operators first, optionally one observer (the sink) last."""
    if not stages:
        return [], AckAll()
    *operators, last = stages
    for op in operators:
        if _is_observer(op) or not callable(op):
            raise ConfigError(f"only the last stage may be an observer (sink); got {op!r} in the middle")
    if _is_observer(last):
        return list(operators), last
    if not callable(last):
        raise ConfigError(f"a stage must be an operator or an observer, got {last!r}")
    return [*operators, last], AckAll()


@dataclass(frozen=True)
class Branch:
    """One leg of a broadcast: operators, then a sink (an observer); without a sink envelopes are acked."""

    operators: tuple[Callable[[Observable[Any]], Observable[Any]], ...]
    sink: Any


def branch_(*stages: Any) -> Branch:
    operators, sink = split_stages(stages)
    return Branch(tuple(operators), sink)


class _Guard:
    """Where a branch meets the shared subject: an exception from the branch becomes a nack of that branch's
    share of the envelope, so it can never reach the other branches as ``on_error``. A batch goes on whole
    to a branch whose every stage takes batches, as its envelopes to any other."""

    def __init__(self, index: int, leg: Branch) -> None:
        self.index = index
        self.unbatch = not (all(takes_batches(op) for op in leg.operators) and takes_batches(leg.sink))

    def __call__(self, source: Observable[Any]) -> Observable[Any]:
        def subscribe(observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
                      ) -> abc.DisposableBase:
            def guarded(env: Any) -> None:
                try:
                    observer.on_next(env)
                except Exception as exc:
                    env.count("branch_errors")
                    env.nack(exc)

            def on_next(shares: list[Any]) -> None:
                item = shares[self.index]
                if self.unbatch and type(item) is Batch:
                    for env in item.envelopes():
                        guarded(env)
                else:
                    guarded(item)

            return source.subscribe(on_next, observer.on_error, observer.on_completed, scheduler=scheduler)

        return reactivex.create(subscribe)


class _Join:
    """Completes the broadcast's output when every branch completed; fails it on the first branch error."""

    def __init__(self, n: int, observer: abc.ObserverBase[Any]) -> None:
        self._remaining = n
        self._observer = observer
        self._lock = threading.Lock()
        self._finished = False

    def end(self, sink: Any) -> abc.ObserverBase[Any]:
        return Ending(sink, lambda error: self._complete() if error is None else self._fail(error))

    def _fail(self, error: Exception) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        self._observer.on_error(error)

    def _complete(self) -> None:
        with self._lock:
            self._remaining -= 1
            if self._remaining or self._finished:
                return
            self._finished = True
        self._observer.on_completed()


def broadcast_(*branches: Any) -> Callable[[Observable[Envelope[Any]]], Observable[Any]]:
    if len(branches) < 1:
        raise ConfigError("broadcast needs at least one branch")
    legs = [b if isinstance(b, Branch) else branch_(b) for b in branches]
    n = len(legs)

    def _op(source: Observable[Envelope[Any]]) -> Observable[Any]:
        def subscribe(observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
                      ) -> abc.DisposableBase:
            # publish() + subscribe every branch + connect(): share() could start a synchronous source before
            # the second branch subscribed, and that branch would miss records.
            published = source.pipe(ops.map(lambda env: env.split(n)), ops.publish())  # type: ignore[attr-defined]
            join = _Join(n, observer)
            subscriptions: list[abc.DisposableBase | None] = [
                published.pipe(_Guard(i, leg), *leg.operators).subscribe(join.end(leg.sink), scheduler=scheduler)
                for i, leg in enumerate(legs)
            ]
            subscriptions.append(published.connect(scheduler=scheduler))
            return CompositeDisposable(*[s for s in subscriptions if s is not None])

        return reactivex.create(subscribe)

    _op.stages = [stage for leg in legs for stage in (*leg.operators, leg.sink)]  # type: ignore[attr-defined]
    return batch_aware(_op)  # it splits a batch like an envelope; each branch's guard decides for its branch
