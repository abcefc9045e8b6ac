"""aggregate_flow: the command engine as an operator (the serial variant: the state, then what follows).

Each envelope is passed on once its entity's state (and its rejections) are written; the stages after it
log the event, and acking it there settles the record. Records whose writes failed are nacked and not
passed on. Downstream runs on the operator's own emitter thread, never on the driver's event loop.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import reactivex
from reactivex import Observable, abc

from rxcqrs.cassandra.aggregate import Aggregate, AggregateSink
from rxcqrs.messages import Envelope

__all__ = ["aggregate_flow"]


def aggregate_flow(session: Any, aggregate: Aggregate[Any, Any, Any], **options: Any
                   ) -> Callable[[Observable[Envelope[Any]]], Observable[Envelope[Any]]]:
    """Like :class:`AggregateSink` (same options) with ``log_events=False``, passing envelopes on."""
    outbox: "queue.SimpleQueue[tuple[str, Any]]" = queue.SimpleQueue()
    options.setdefault("name", "aggregate_flow")
    engine = AggregateSink(session, aggregate, log_events=False, then=lambda env: outbox.put(("next", env)),
                           **options)
    subscribed = threading.Lock()

    def _op(source: Observable[Envelope[Any]]) -> Observable[Envelope[Any]]:
        def subscribe(observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
                      ) -> abc.DisposableBase:
            if not subscribed.acquire(blocking=False):
                raise RuntimeError("an aggregate_flow can be subscribed once (its engine holds the entities)")

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

            threading.Thread(target=emitter, name=f"rxcqrs-{engine.name}-emitter", daemon=True).start()

            def completed() -> None:
                engine.on_completed()
                outbox.put(("completed", None))

            def failed(error: Exception) -> None:
                engine.on_error(error)
                outbox.put(("error", error))

            return source.subscribe(engine.on_next, failed, completed, scheduler=scheduler)

        return reactivex.create(subscribe)

    _op.watch_partitions = engine.watch_partitions  # type: ignore[attr-defined]
    _op.engine = engine  # type: ignore[attr-defined]
    return _op
