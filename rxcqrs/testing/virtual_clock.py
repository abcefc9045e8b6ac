"""A virtual clock for the fast test tier (see :mod:`rxcqrs.clock`).

Its time moves only by :meth:`VirtualClock.advance` and by :meth:`VirtualClock.sleep` (a sleeper moves time
forward by what it sleeps, so a retry loop on one thread runs its whole backoff at once). A thread that waits
(:meth:`VirtualClock.wait`) returns as soon as its event is set, or once someone has moved the time past its
deadline: it notices that within a millisecond of real time after a move (up to 50 ms when the time has not
moved for a while, so idle waiters cost nothing).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

__all__ = ["VirtualClock"]

_FIRST_LOOK = 0.001  # real seconds between two looks of a waiting thread at the time, doubling while it
_LAST_LOOK = 0.05  # does not move, up to this


class VirtualClock:
    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._moves = 0

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the time ``seconds`` forward (waiters whose deadline passed return); the new time."""
        with self._lock:
            self._now += max(0.0, seconds)
            self._moves += 1
            return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        if timeout is None:
            return event.wait()
        with self._lock:
            deadline = self._now + max(0.0, timeout)
            seen = self._moves
        look = _FIRST_LOOK
        while True:
            with self._lock:
                if self._now >= deadline:
                    return event.is_set()
                if self._moves != seen:
                    seen, look = self._moves, _FIRST_LOOK
            if event.wait(look):
                return True
            look = min(look * 2, _LAST_LOOK)

    def advance_until(self, predicate: Callable[[], Any], step: float, within: float = 3_600.0,
                      what: str = "condition", real_timeout: float = 10.0) -> float:
        """Move the time forward ``step`` at a time (a real millisecond apart, so the threads that wait on it
        run) until ``predicate()`` holds; the virtual seconds that took. ``TimeoutError`` naming ``what`` after
        ``within`` virtual or ``real_timeout`` real seconds."""
        started, real_deadline = self.now(), time.monotonic() + real_timeout
        while not predicate():
            if self.now() - started >= within or time.monotonic() >= real_deadline:
                raise TimeoutError(f"{what}: not reached after {self.now() - started:g} virtual seconds")
            self.advance(step)
            time.sleep(_FIRST_LOOK)
        return self.now() - started
