"""The one clock seam: every deadline, interval and backoff of the framework reads time and waits through a
:class:`Clock`.

Production code uses :data:`SYSTEM` (``time.monotonic``, ``time.sleep``, ``Event.wait``). Tests pass a
:class:`~rxcqrs.testing.virtual_clock.VirtualClock` instead, whose time moves only when the test (or a
sleeping caller) moves it, so timeouts of seconds or minutes are tested without waiting for them.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["Clock", "SystemClock", "SYSTEM"]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean something)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""
        ...

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Wait until ``event`` is set (True) or ``timeout`` seconds of this clock have passed (False)."""
        ...


class SystemClock:
    """Wall time: ``time.monotonic``, ``time.sleep`` and ``Event.wait``."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        return event.wait(timeout)


SYSTEM: Clock = SystemClock()
