"""The liveness watchdog of a source: notices a client call that never returns.

The poll thread announces each call to its consumer client (``with watchdog.call("poll"): ...``). A thread of
the watchdog's own looks at the call in progress; once one has run longer than ``stuck_timeout`` it calls
``on_stuck(what, seconds)`` exactly once per call. The source answers by interrupting the client (the one
thing another thread may do to it, see :mod:`rxcqrs.kafka`) and, back on the poll thread, replacing it.
The other liveness check, "no assignment in time", needs no thread: the poll loop makes it itself.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["Watchdog"]


class Watchdog:
    def __init__(self, name: str, stuck_timeout: float, on_stuck: Callable[[str, float], None]) -> None:
        self.stuck_timeout = stuck_timeout
        self._on_stuck = on_stuck
        self._lock = threading.Lock()
        self._call: tuple[str, float, int] | None = None  # what, since, serial number
        self._serial = 0
        self._fired = -1
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"rxcqrs-watchdog-{name}", daemon=True)
        self._thread.start()

    @contextmanager
    def call(self, what: str) -> Iterator[None]:
        """Wrap one client call of the poll thread."""
        with self._lock:
            self._serial += 1
            self._call = (what, time.monotonic(), self._serial)
        try:
            yield
        finally:
            with self._lock:
                self._call = None

    def _watch(self) -> None:
        period = min(1.0, self.stuck_timeout / 4)
        while not self._stopped.wait(period):
            with self._lock:
                current = self._call
                if current is None or current[2] == self._fired:
                    continue
                what, since, serial = current
                elapsed = time.monotonic() - since
                if elapsed < self.stuck_timeout:
                    continue
                self._fired = serial
            self._on_stuck(what, elapsed)

    def stop(self) -> None:
        self._stopped.set()
