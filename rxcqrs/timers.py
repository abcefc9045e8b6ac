"""Delayed calls for retries: one daemon thread and a heap per clock, instead of a thread per retry.

:func:`call_later` runs on wall time; ``timers(clock).call_later`` on any :class:`~rxcqrs.clock.Clock`
(a virtual one in tests: its calls run once the test has moved the time past them). A timer thread ends
when it has nothing left to run and starts again with the next call. The registry of :func:`timers` does not
keep a clock alive: a clock nothing else refers to goes, with its timers.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import weakref
from typing import Any, Callable

from rxcqrs.clock import SYSTEM, Clock

__all__ = ["Timers", "call_later", "timers"]

log = logging.getLogger(__name__)


class Timers:
    def __init__(self, clock: Clock = SYSTEM) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._added = threading.Event()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the timer thread after ``delay`` seconds of the clock."""
        with self._lock:
            heapq.heappush(self._heap, (self._clock.now() + max(0.0, delay), next(self._ids), fn))
            self._added.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rxcqrs-timers", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._heap:
                    self._thread = None
                    return
                due, _, fn = self._heap[0]
                wait = due - self._clock.now()
                if wait <= 0:
                    heapq.heappop(self._heap)
                else:
                    self._added.clear()
            if wait > 0:
                self._clock.wait(self._added, wait)
                continue
            try:
                fn()
            except Exception:  # a retry callback must settle its own errors; never kill the timer thread
                log.exception("delayed call failed")


_lock = threading.Lock()
#: a clock's timers refer to it weakly (a value referring to its key strongly would keep both forever)
_by_clock: "weakref.WeakKeyDictionary[Any, Timers]" = weakref.WeakKeyDictionary()
#: clocks that cannot be referred to weakly (slotted without ``__weakref__``): kept for the process
_kept: dict[int, tuple[Clock, Timers]] = {}


def timers(clock: Clock) -> Timers:
    """The timers of ``clock`` (one thread per clock)."""
    with _lock:
        try:
            found = _by_clock.get(clock)
            if found is None:
                found = _by_clock[clock] = Timers(weakref.proxy(clock))
        except TypeError:  # not weakly referable
            kept = _kept.get(id(clock))
            if kept is None:
                kept = _kept[id(clock)] = (clock, Timers(clock))
            found = kept[1]
        return found


def call_later(delay: float, fn: Callable[[], None]) -> None:
    """Run ``fn`` on the wall-time timer thread after ``delay`` seconds."""
    timers(SYSTEM).call_later(delay, fn)
