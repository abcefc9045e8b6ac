"""cassandra_bind: an operator from (value, PreparedStatement) to a BoundStatement via your bind function."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from reactivex import Observable, abc

from rxcqrs.messages import Envelope
from rxcqrs.operators._envelope import emit, envelope_operator

__all__ = ["cassandra_bind"]

T = TypeVar("T")


def cassandra_bind(prepared: Any, bind: Callable[[T, Any], Any]
                   ) -> Callable[[Observable[Envelope[T]]], Observable[Envelope[Any]]]:
    """``bind(value, prepared)`` returns a ``BoundStatement`` (e.g. ``prepared.bind((a, b))``); a bind that
    raises (a wrong value type) nacks that envelope."""

    def handle(env: Envelope[Any], observer: abc.ObserverBase[Any]) -> None:
        emit(observer, env.with_value(bind(env.value, prepared)))

    return envelope_operator(handle, "cassandra_bind")
