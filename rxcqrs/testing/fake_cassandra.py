"""A scriptable stand-in for a cassandra-driver ``Session``: ``execute_async`` answers on another thread,
like the driver's event loop, with rows or an error chosen by a handler. For fast executor/stage tests."""

from __future__ import annotations

import collections
import queue
import threading
from typing import Any, Callable

__all__ = ["FakeSession", "FakeResponseFuture", "lwt_row", "MemoryFences", "MemoryFence"]

LwtRow = collections.namedtuple("LwtRow", ["applied"])


def lwt_row(applied: bool) -> list[Any]:
    """The rows a lightweight transaction returns (``[applied]`` is the first column)."""
    return [LwtRow(applied)]


class FakeResponseFuture:
    def __init__(self) -> None:
        self._callbacks: list[tuple[Callable[..., None], Callable[..., None], tuple[Any, ...], tuple[Any, ...]]] = []
        self._result: tuple[bool, Any] | None = None
        self._lock = threading.Lock()

    def add_callbacks(self, callback: Callable[..., None], errback: Callable[..., None], callback_args: Any = (),
                      callback_kwargs: Any = None, errback_args: Any = (), errback_kwargs: Any = None) -> None:
        with self._lock:
            if self._result is None:
                self._callbacks.append((callback, errback, tuple(callback_args), tuple(errback_args)))
                return
        self._fire(callback, errback, tuple(callback_args), tuple(errback_args))

    def _fire(self, callback: Callable[..., None], errback: Callable[..., None], cargs: tuple[Any, ...],
              eargs: tuple[Any, ...]) -> None:
        assert self._result is not None
        ok, value = self._result
        if ok:
            callback(value, *cargs)
        else:
            errback(value, *eargs)

    def _complete(self, ok: bool, value: Any) -> None:
        with self._lock:
            self._result = (ok, value)
            callbacks = list(self._callbacks)
        for cb, eb, cargs, eargs in callbacks:
            self._fire(cb, eb, cargs, eargs)


class FakeSession:
    """``handler(query, params)`` returns rows (a list or ``None``) or raises; it runs on the fake event-loop
    thread, never on the caller's."""

    def __init__(self, handler: Callable[[Any, Any], Any] | None = None) -> None:
        self.handler = handler or (lambda q, p: None)
        self.calls: list[tuple[Any, Any]] = []
        self._queue: "queue.Queue[tuple[FakeResponseFuture, Any, Any] | None]" = queue.Queue()
        self._loop = threading.Thread(target=self._run, name="fake-cassandra-loop", daemon=True)
        self._loop.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, query, params = item
            try:
                future._complete(True, self.handler(query, params))
            except Exception as exc:
                future._complete(False, exc)

    def execute_async(self, query: Any, params: Any = None) -> FakeResponseFuture:
        self.calls.append((query, params))
        future = FakeResponseFuture()
        self._queue.put((future, query, params))
        return future

    def shutdown(self) -> None:
        self._queue.put(None)


class MemoryFences:
    """Fence rows in memory, for the fast tier: ``fences(group, topic)`` is what
    :class:`~rxcqrs.cassandra.AggregateSink` takes as ``fences=``; every sink given the same object shares
    the rows, as members of one group share the Cassandra fence table."""

    def __init__(self, first: int = 4096) -> None:
        self._lock = threading.Lock()
        self._epochs: dict[tuple[str, str], int] = {}
        self._first = first
        self.taken: list[tuple[str, str, int]] = []

    def __call__(self, group: str, topic: str) -> "MemoryFence":
        return MemoryFence(self, group, topic)

    def take(self, group: str, topic: str) -> int:
        with self._lock:
            epoch = self._epochs.get((group, topic), self._first - 1) + 1
            self._epochs[(group, topic)] = epoch
            self.taken.append((group, topic, epoch))
            return epoch


class MemoryFence:
    def __init__(self, rows: MemoryFences, group: str, topic: str) -> None:
        self._rows, self.group, self.topic = rows, group, topic

    def take(self, deadline: float | None = None) -> int:
        return self._rows.take(self.group, self.topic)
