from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import reactivex
from reactivex import Observable, abc

from rxcqrs.messages import Envelope
from rxcqrs.operators._envelope import stage_error

__all__ = ["map_async_"]


def map_async_(fn: Callable[[Any], Any], max_concurrency: int = 4, name: str = "map_async"
               ) -> Callable[[Observable[Envelope[Any]]], Observable[Envelope[Any]]]:
    """``fn(value)`` (blocking I/O allowed) on a pool of ``max_concurrency`` threads; results are emitted in
    input order (Akka's mapAsync); a raising ``fn`` nacks that envelope; completion waits for every call."""

    def _op(source: Observable[Envelope[Any]]) -> Observable[Envelope[Any]]:
        def subscribe(observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
                      ) -> abc.DisposableBase:
            pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix=f"rxcqrs-{name}")
            pending: deque[tuple[Envelope[Any], Future[Any]]] = deque()
            lock = threading.Lock()
            idle = threading.Condition(lock)

            def drain(_done: Future[Any] | None = None) -> None:
                with lock:  # emit every finished call at the head, in input order, one thread at a time
                    while pending and pending[0][1].done():
                        env, future = pending.popleft()
                        error = future.exception()
                        if error is not None:
                            env.nack(stage_error(name, env, error))
                        else:
                            try:
                                observer.on_next(env.with_value(future.result()))
                            except Exception as exc:
                                env.nack(exc)
                    if not pending:
                        idle.notify_all()

            def on_next(env: Envelope[Any]) -> None:
                future = pool.submit(fn, env.value)
                with lock:
                    pending.append((env, future))
                future.add_done_callback(drain)

            def finish() -> None:
                with lock:
                    idle.wait_for(lambda: not pending)
                pool.shutdown(wait=True)

            def on_completed() -> None:
                finish()
                observer.on_completed()

            def on_error(error: Exception) -> None:
                finish()
                observer.on_error(error)

            return source.subscribe(on_next, on_error, on_completed, scheduler=scheduler)

        return reactivex.create(subscribe)

    return _op
