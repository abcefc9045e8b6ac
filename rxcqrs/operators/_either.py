from __future__ import annotations

import logging
from typing import Any, Callable

import reactivex
from reactivex import Observable, abc

from rxcqrs.either import Left, Right
from rxcqrs.messages import Envelope
from rxcqrs.operators._envelope import emit, envelope_operator

__all__ = ["collect_right_", "flatten_", "route_either_"]

log = logging.getLogger("rxcqrs.either")


def collect_right_(on_left: Callable[[Envelope[Any]], Any] | None = None
                   ) -> Callable[[Observable[Envelope[Any]]], Observable[Envelope[Any]]]:
    def handle(env: Envelope[Any], observer: abc.ObserverBase[Any]) -> None:
        value = env.value
        if isinstance(value, Right):
            emit(observer, env.with_value(value.value))
            return
        if isinstance(value, Left):
            env.count("lefts")
            (on_left or (lambda e: log.warning("left at %s: %r", e.meta, e.value.value)))(env)
            env.ack()  # handled: a Left is an answer, not a failure of the stream
            return
        raise TypeError(f"collect_right expects Left or Right values, got {value!r}")

    return envelope_operator(handle, "collect_right")


def flatten_() -> Callable[[Observable[Envelope[Any]]], Observable[Envelope[Any]]]:
    def handle(env: Envelope[Any], observer: abc.ObserverBase[Any]) -> None:
        items = list(env.value)
        if not items:
            env.ack()
            return
        for item, child in zip(items, env.split(len(items)), strict=True):
            emit(observer, child.with_value(item))

    return envelope_operator(handle, "flatten")


def route_either_(left: abc.ObserverBase[Any], right: abc.ObserverBase[Any]
                  ) -> Callable[[Observable[Envelope[Any]]], Observable[Any]]:
    """Lefts (unwrapped) to ``left``, Rights (unwrapped) to ``right``; completes when both completed."""

    def _op(source: Observable[Envelope[Any]]) -> Observable[Any]:
        def subscribe(observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
                      ) -> abc.DisposableBase:
            def on_next(env: Envelope[Any]) -> None:
                target = right if isinstance(env.value, Right) else left
                try:
                    target.on_next(env.with_value(env.value.value))
                except Exception as exc:
                    env.nack(exc)

            def on_error(error: Exception) -> None:
                left.on_error(error)
                right.on_error(error)
                observer.on_error(error)

            def on_completed() -> None:
                left.on_completed()
                right.on_completed()
                observer.on_completed()

            return source.subscribe(on_next, on_error, on_completed, scheduler=scheduler)

        return reactivex.create(subscribe)

    return _op
