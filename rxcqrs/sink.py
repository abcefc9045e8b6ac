"""Common ground of the sinks: in-flight accounting, completion that waits for in-flight work, a failure slot.

A sink is a reactivex observer. It settles each envelope it receives (ack on success, nack on failure)
from whatever thread its driver calls back on, and never lets ``on_completed`` return while requests are
still in flight: each request is bounded by the sink's own retries and timeouts.
``on_error`` is how a stopping source ends a flow whose drain ran out of time (an outage, say): the sink
then abandons what is left at once (after any other upstream error it waits at most ``abandon_timeout``
seconds first); what is abandoned stays uncommitted and is delivered again after a restart. So no shutdown
waits without a deadline.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from reactivex import abc

from rxcqrs.exceptions import DrainTimeoutError

__all__ = ["SinkBase"]

log = logging.getLogger(__name__)


class SinkBase(abc.ObserverBase[Any]):
    #: seconds ``on_error`` waits for in-flight requests before abandoning them
    abandon_timeout: float = 2.0

    def __init__(self) -> None:
        # in flight is counted under a plain lock (every record passes here twice); the condition is taken
        # only when somebody waits for idleness (``_idle_waiters``), so a record never pays for it
        self._count_lock = threading.Lock()
        self._idle = threading.Condition()
        self._idle_waiters = 0
        self._in_flight = 0
        self.error: BaseException | None = None  # the sink's own fatal error
        self.upstream_error: BaseException | None = None
        self.completed = threading.Event()

    @property
    def in_flight(self) -> int:
        with self._count_lock:
            return self._in_flight

    def _begin(self, n: int = 1) -> None:
        with self._count_lock:
            self._in_flight += n

    def _end(self, n: int = 1) -> None:
        with self._count_lock:
            self._in_flight -= n
            wake = self._in_flight == 0 and self._idle_waiters
        if wake:  # a waiter registered before it looked at the count: it holds or waits on the condition
            with self._idle:
                self._idle.notify_all()

    def _fail(self, error: BaseException) -> None:
        with self._count_lock:
            if self.error is None:
                self.error = error

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is in flight; False on timeout."""
        with self._idle:
            with self._count_lock:
                self._idle_waiters += 1
            try:
                return self._idle.wait_for(lambda: self.in_flight == 0, timeout)
            finally:
                with self._count_lock:
                    self._idle_waiters -= 1

    def close(self) -> None:
        """Release what the sink owns (called once, after the last in-flight request finished)."""

    def abandon(self) -> None:
        """Give up on requests still in flight (shutdown with a deadline); they are not acked."""

    def on_completed(self) -> None:
        self.wait_idle()
        self.close()
        self.completed.set()

    def on_error(self, error: Exception) -> None:
        self.upstream_error = error
        # a drain that ran out of time already waited: abandon at once, so a shutdown keeps its deadline
        wait = 0.0 if isinstance(error, DrainTimeoutError) else self.abandon_timeout
        if not self.wait_idle(wait):
            log.warning("%s: %d requests still in flight %.0fs after the flow failed; abandoned (they were not "
                        "acked, so they are delivered again)", type(self).__name__, self.in_flight, wait)
            self.abandon()
        self.close()
        self.completed.set()

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error
