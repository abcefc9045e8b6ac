"""How every contender's run finds its end: a progress condition polled every 2 ms (standard library only, so
that :mod:`benchmarks.revision` can load it beside another revision's modules)."""

from __future__ import annotations

import threading
import time
from typing import Callable

__all__ = ["wait_for"]


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    """Return once ``condition()`` holds (found within 2 ms); :class:`TimeoutError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark run did not finish")
        event.wait(0.002)
