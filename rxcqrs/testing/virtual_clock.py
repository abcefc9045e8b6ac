"""A virtual clock for the fast test tier (see :mod:`rxcqrs.clock`).

Its time moves only by :meth:`VirtualClock.advance` and by :meth:`VirtualClock.sleep` (a sleeper moves time
forward by what it sleeps, so a retry loop on one thread runs its whole backoff at once). A thread that waits
(:meth:`VirtualClock.wait`) returns when its event is set or when someone has moved the time past its
deadline; while it waits it looks at both every millisecond of real time.
"""

from __future__ import annotations

import threading

__all__ = ["VirtualClock"]

_SLICE = 0.001  # real seconds between two looks of a waiting thread


class VirtualClock:
    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._moved = threading.Condition(self._lock)

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the time ``seconds`` forward (waiters whose deadline passed return); the new time."""
        with self._moved:
            self._now += max(0.0, seconds)
            self._moved.notify_all()
            return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        deadline = None if timeout is None else self.now() + max(0.0, timeout)
        while not event.is_set():
            with self._moved:
                if deadline is not None and self._now >= deadline:
                    return False
                self._moved.wait(_SLICE)
        return True
