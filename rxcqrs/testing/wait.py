"""Wait on a condition with a deadline (never a fixed sleep): for tests, notebooks and scripts."""

from __future__ import annotations

import time
from typing import Any, Callable

__all__ = ["wait_until"]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` (backing off from 0.2 ms to 100 ms) until it returns something truthy, and return it;
    raise ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.0002
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
