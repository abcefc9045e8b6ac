from __future__ import annotations

import logging
from typing import Any

import reactivex
from reactivex import Observable, abc

from rxcqrs.acks import Ticket
from rxcqrs.messages import Envelope
from rxcqrs.metrics import Metrics

__all__ = ["Spy", "spy_"]

log = logging.getLogger("rxcqrs.spy")


class Spy:
    """Counts what passes one point of a pipeline: pushed, and how each envelope ended
    downstream (acked / nacked), plus terminal events. ``metrics.snapshot()`` reads them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.metrics = Metrics()

    def _watch(self, env: Envelope[Any]) -> Envelope[Any]:
        parent = env.ticket

        def settle(error: BaseException | None) -> None:
            self.metrics.incr("acked" if error is None else "nacked")
            if error is None:
                parent.ack()
            else:
                parent.nack(error)

        return Envelope(env.value, env.meta, Ticket(settle, parent.count))

    def __call__(self, source: Observable[Any]) -> Observable[Any]:
        def subscribe(observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
                      ) -> abc.DisposableBase:
            def on_next(value: Any) -> None:
                self.metrics.incr("pushed")
                log.debug("%s: %r", self.name, value)
                observer.on_next(self._watch(value) if isinstance(value, Envelope) else value)

            def on_error(error: Exception) -> None:
                self.metrics.incr("errors")
                observer.on_error(error)

            def on_completed() -> None:
                self.metrics.incr("completed")
                observer.on_completed()

            return source.subscribe(on_next, on_error, on_completed, scheduler=scheduler)

        return reactivex.create(subscribe)


def spy_(name: str) -> Spy:
    return Spy(name)

