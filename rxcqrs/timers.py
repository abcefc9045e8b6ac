"""Delayed calls for retries: one daemon thread and a heap, instead of a thread per retry."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable

__all__ = ["call_later"]

log = logging.getLogger(__name__)

_lock = threading.Condition()
_heap: list[tuple[float, int, Callable[[], None]]] = []
_ids = itertools.count()
_thread: threading.Thread | None = None


def _run() -> None:
    while True:
        with _lock:
            while not _heap or _heap[0][0] > time.monotonic():
                _lock.wait(None if not _heap else _heap[0][0] - time.monotonic())
            _, _, fn = heapq.heappop(_heap)
        try:
            fn()
        except Exception:  # a retry callback must settle its own errors; never kill the timer thread
            log.exception("delayed call failed")


def call_later(delay: float, fn: Callable[[], None]) -> None:
    """Run ``fn`` on the timer thread after ``delay`` seconds."""
    global _thread
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="rxcqrs-timers", daemon=True)
            _thread.start()
        heapq.heappush(_heap, (time.monotonic() + max(0.0, delay), next(_ids), fn))
        _lock.notify()
