"""Thread-safe counters and gauges a flow exposes live (records/s, in flight, committed, retries, ...)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

__all__ = ["Metrics"]


class Metrics:
    """Named counters (monotonic) and gauges (sampled by callables); ``snapshot()`` reads them all at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {}
        self._gauges: dict[str, Callable[[], Any]] = {}
        self.started = time.monotonic()

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + amount

    def get(self, name: str) -> int:
        """A counter, or a numeric gauge of that name (0 if neither exists)."""
        with self._lock:
            if name in self._counters:
                return self._counters[name]
        read = self._gauges.get(name)
        if read is None:
            return 0
        try:
            value = read()
        except Exception:
            return 0
        return value if isinstance(value, int) else 0

    def gauge(self, name: str, read: Callable[[], Any]) -> None:
        self._gauges[name] = read

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            values: dict[str, Any] = dict(self._counters)
        for name, read in list(self._gauges.items()):
            try:
                values[name] = read()
            except Exception as exc:  # a gauge must never break a progress display
                values[name] = f"<{exc!r}>"
        values["elapsed_s"] = round(time.monotonic() - self.started, 3)
        return values

    def __repr__(self) -> str:
        return f"Metrics({self.snapshot()})"
