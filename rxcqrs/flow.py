"""Running a flow: ``run(source, *stages)`` subscribes the pipeline and returns a :class:`Flow` handle.

The handle never blocks: stop or drain it from a notebook cell, read its live metrics, wait with a timeout.
"""

from __future__ import annotations

import threading
from typing import Any

from reactivex import Observable, abc

from rxcqrs.exceptions import FlowError
from rxcqrs.metrics import Metrics
from rxcqrs.operators._broadcast import Ending, split_stages

__all__ = ["run", "Flow"]


class Flow:
    """A running pipeline: ``stop()``, ``wait()``, ``metrics``, ``error``."""

    def __init__(self, source: Any, sink: Any) -> None:
        self.source = source
        self.sink = sink
        self.metrics: Metrics = getattr(source, "metrics", None) or Metrics()
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._subscription: abc.DisposableBase | None = None

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop emitting; with ``drain`` finish in-flight records, commit, close. Returns at once."""
        stop = getattr(self.source, "stop", None)
        if stop is not None:
            stop(drain=drain, timeout=timeout)
        elif self._subscription is not None:
            self._subscription.dispose()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the flow ended; True if it did. Raises the flow's error, if it failed."""
        finished = self._done.wait(timeout)
        if finished and self.error is not None:
            raise self.error
        return finished

    def wait_quietly(self, timeout: float | None = None) -> bool:
        """Like :meth:`wait`, without raising: read :attr:`error` afterwards."""
        return self._done.wait(timeout)

    def stop_and_wait(self, timeout: float = 120.0) -> None:
        self.stop()
        if not self.wait(timeout):
            raise FlowError(f"the flow did not stop within {timeout}s")

    def _ended(self, error: Exception | None) -> None:
        self.error = error
        self._done.set()

    def __repr__(self) -> str:
        state = "running" if self.running else ("failed" if self.error else "completed")
        return f"<Flow {state} {self.metrics.snapshot()}>"


def run(source: Any, *stages: Any) -> Flow:
    """Subscribe ``source`` (a :class:`~rxcqrs.kafka.KafkaSource` or any observable of envelopes) through
    ``stages`` (operators, optionally a sink last). Envelopes that reach the end without a sink are acked."""
    observable: Observable[Any] = getattr(source, "observable", source)
    operators, sink = split_stages(stages)
    flow = Flow(source, sink)
    flow._subscription = observable.pipe(*operators).subscribe(Ending(sink, flow._ended))
    return flow
