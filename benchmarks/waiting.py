"""How every contender's run finds its end: a progress condition, checked again whenever the source commits
(standard library only, so that :mod:`benchmarks.revision` can load it beside another revision's modules)."""

from __future__ import annotations

import threading
import time
from typing import Callable

__all__ = ["wait_for"]


def wait_for(condition: Callable[[], bool], timeout: float, changes: threading.Condition | None = None) -> None:
    """Return once ``condition()`` holds; :class:`TimeoutError` after ``timeout`` seconds. ``changes``: notified
    whenever the condition may have changed (``Committer.progress``, after every commit), checked again then and
    at least every 0.5 s. Without it the condition is polled every 2 ms, which costs the contender's process CPU
    of its own (about 4 µs per command on 20,000 commands, measured)."""
    deadline = time.monotonic() + timeout
    wake = changes or threading.Condition()
    with wake:  # a notifier takes it too, so no change is missed between a check and the wait
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("benchmark run did not finish")
            wake.wait(min(0.5, left) if changes else 0.002)
