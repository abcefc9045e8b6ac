"""Running a flow: ``run(source, *stages)`` subscribes the pipeline and returns a :class:`Flow` handle.

The handle never blocks: stop or drain it from a notebook cell, read its live metrics, wait with a timeout.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol, runtime_checkable

from reactivex import Observable, abc

from rxcqrs.exceptions import FlowError
from rxcqrs.metrics import Metrics
from rxcqrs.operators._batch import fit_batches
from rxcqrs.operators._broadcast import Ending, split_stages
from rxcqrs.partitions import attach_watchers

__all__ = ["run", "Flow", "Source"]


@runtime_checkable
class Source(Protocol):
    """What a flow needs from a source (:class:`~rxcqrs.kafka.KafkaSource` is one): the observable it
    subscribes, whether it emits batches, its metrics, how to stop it and how long its drain may take, and how
    many records it has committed. Any other observable of envelopes runs too, as a plain observable."""

    metrics: Metrics

    @property
    def observable(self) -> Observable[Any]: ...

    @property
    def emits_batches(self) -> bool: ...

    @property
    def drain_timeout(self) -> float: ...

    def stop(self, drain: bool = True, timeout: float | None = None) -> None: ...

    def records_committed(self) -> int: ...


class Flow:
    """A running pipeline: ``stop()``, ``wait()``, ``metrics``, ``error``."""

    def __init__(self, source: Source | None, sink: Any) -> None:
        self.source = source
        self.sink = sink
        self.metrics: Metrics = source.metrics if source is not None else Metrics()
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._subscription: abc.DisposableBase | None = None

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop emitting; with ``drain`` finish in-flight records, commit, close. Returns at once."""
        if self.source is not None:
            self.source.stop(drain=drain, timeout=timeout)
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

    def committed(self) -> int:
        """Records this flow has committed so far."""
        return self.source.records_committed() if self.source is not None else self.metrics.get("acked")

    def until(self, count: int | None = None, timeout: float | None = None, *, stop: bool = True
              ) -> dict[str, Any]:
        """Notebook-friendly running (like Quix Streams' ``app.run(count=, timeout=)``): return once ``count``
        records were committed by this flow, or ``timeout`` seconds passed, or the flow ended; then (with
        ``stop``) drain and stop it. Returns the metrics. Raises the flow's error if it failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running and (count is None or self.committed() < count):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self._done.wait(0.05 if left is None else min(0.05, left))  # sampling the commit count
        if stop and self.running:
            self.stop()
            drain = self.source.drain_timeout if self.source is not None else 60.0
            self.wait(max(5.0, drain + 10.0))
        elif not self.running:
            self.wait(0)
        return self.metrics.snapshot()

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


def run(source: Source | Observable[Any], *stages: Any) -> Flow:
    """Subscribe ``source`` (a :class:`Source` such as :class:`~rxcqrs.kafka.KafkaSource`, or any observable of
    envelopes) through
    ``stages`` (operators, optionally a sink last). Envelopes that reach the end without a sink are acked. A
    source that emits batches has them split into envelopes before the first stage that does not take them.
    Stages that keep state per partition assignment (``watch_partitions``) are told of the source's
    assignments before it is subscribed (:mod:`rxcqrs.partitions`)."""
    known = source if isinstance(source, Source) else None
    observable: Observable[Any] = known.observable if known is not None else source  # type: ignore[assignment]
    operators, sink = split_stages(stages)
    attach_watchers(source, [*operators, sink])
    if known is not None and known.emits_batches:
        operators = fit_batches(operators, sink)
    flow = Flow(known, sink)
    flow._subscription = observable.pipe(*operators).subscribe(Ending(sink, flow._ended))
    return flow
