from __future__ import annotations

from typing import Any, Callable, TypeVar

from reactivex import Observable, abc

from rxcqrs.messages import Envelope
from rxcqrs.operators._envelope import emit, envelope_operator

__all__ = ["map_value_", "map_envelope_", "filter_value_", "tap_"]

T = TypeVar("T")
U = TypeVar("U")


def map_value_(mapper: Callable[[T], U]) -> Callable[[Observable[Envelope[T]]], Observable[Envelope[U]]]:
    def handle(env: Envelope[Any], observer: abc.ObserverBase[Any]) -> None:
        emit(observer, env.with_value(mapper(env.value)))

    return envelope_operator(handle, "map_value")


def map_envelope_(mapper: Callable[[Envelope[T]], U]) -> Callable[[Observable[Envelope[T]]], Observable[Envelope[U]]]:
    def handle(env: Envelope[Any], observer: abc.ObserverBase[Any]) -> None:
        emit(observer, env.with_value(mapper(env)))

    return envelope_operator(handle, "map_envelope")


def filter_value_(predicate: Callable[[T], bool]) -> Callable[[Observable[Envelope[T]]], Observable[Envelope[T]]]:
    def handle(env: Envelope[Any], observer: abc.ObserverBase[Any]) -> None:
        if predicate(env.value):
            emit(observer, env)
        else:
            env.ack()  # filtered out is done: it must not hold back the commit

    return envelope_operator(handle, "filter_value")


def tap_(action: Callable[[Envelope[T]], Any]) -> Callable[[Observable[Envelope[T]]], Observable[Envelope[T]]]:
    def handle(env: Envelope[Any], observer: abc.ObserverBase[Any]) -> None:
        action(env)
        emit(observer, env)

    return envelope_operator(handle, "tap")
