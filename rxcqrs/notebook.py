"""Watching flows from a notebook: sample a flow's live metrics into a pandas DataFrame while it runs.

::

    recorder = record(flow, every=0.2)          # samples on a thread of its own
    flow.until(count=5000, timeout=120)
    frame = recorder.stop()                     # one row per sample, one column per figure, "t" in seconds
    frame.plot(x="t", y=["records_in", "committed"])
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

__all__ = ["Recorder", "record"]


class Recorder:
    def __init__(self, flow: Any, every: float = 0.2, extra: dict[str, Callable[[], Any]] | None = None) -> None:
        self.flow = flow
        self.every = every
        self.extra = dict(extra or {})
        self.rows: list[dict[str, Any]] = []
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rxcqrs-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.every) or not self.flow.running:
                self.sample()
                return

    def sample(self) -> None:
        row = {"t": round(time.monotonic() - self._started, 3)}
        row.update({k: v for k, v in self.flow.metrics.snapshot().items() if isinstance(v, (int, float))})
        for name, read in self.extra.items():
            row[name] = read()
        self.rows.append(row)

    def stop(self) -> Any:
        """Stop sampling; the samples as a DataFrame (counters as they were, plus ``rate``: records/s)."""
        import pandas as pd

        self._stop.set()
        self._thread.join(10)
        frame = pd.DataFrame(self.rows).fillna(0)
        if "records_in" in frame:
            frame["rate"] = frame["records_in"].diff().fillna(0) / frame["t"].diff().replace(0, float("nan"))
            frame["rate"] = frame["rate"].fillna(0)
        return frame


def record(flow: Any, every: float = 0.2, **extra: Callable[[], Any]) -> Recorder:
    """Start sampling ``flow`` (and ``extra`` figures: name -> function) every ``every`` seconds."""
    return Recorder(flow, every, extra)
