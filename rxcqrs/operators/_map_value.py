from __future__ import annotations

from typing import Any, Callable, TypeVar

from reactivex import Observable, abc

from rxcqrs.messages import Batch, Envelope
from rxcqrs.operators._envelope import emit, envelope_operator, stage_error

__all__ = ["map_value_", "map_envelope_", "filter_value_", "tap_"]

T = TypeVar("T")
U = TypeVar("U")


def map_value_(mapper: Callable[[T], U]) -> Callable[[Observable[Envelope[T]]], Observable[Envelope[U]]]:
    def handle(env: Envelope[Any], observer: abc.ObserverBase[Any]) -> None:
        emit(observer, env.with_value(mapper(env.value)))

    def handle_batch(batch: Batch[Any], observer: abc.ObserverBase[Any], one: Callable[[Envelope[Any]], None]
                     ) -> None:
        mapped: list[Any] = []
        append = mapped.append
        try:
            for value in batch.values:
                append(mapper(value))
        except Exception as exc:  # only the failing record is nacked: the batch goes on as single records
            envelopes = batch.envelopes()
            for env, value in zip(envelopes, mapped, strict=False):  # the values mapped before the failure
                emit(observer, env.with_value(value))
            failed = envelopes[len(mapped)]
            failed.count("map_value_errors")
            failed.nack(stage_error("map_value", failed, exc))
            for env in envelopes[len(mapped) + 1:]:
                one(env)
            return
        emit(observer, batch.with_values(mapped))

    return envelope_operator(handle, "map_value", handle_batch)


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
