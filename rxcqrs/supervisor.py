"""Restart a failed flow, one-for-one, from a small handle.

A flow that fails (the ``stop`` failure policy ends it with the error, after committing what was done) is
started again by ``start()`` after a backoff; the new source resumes from the last commit. Errors that a
restart cannot fix (bad configuration, unsafe identifiers) stop the supervisor at
once, and so does a flow that failed more than ``max_restarts`` times within ``within`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable

from rxcqrs.backoff import Backoff
from rxcqrs.exceptions import ConfigError
from rxcqrs.flow import Flow

__all__ = ["Supervisor", "supervise"]

log = logging.getLogger(__name__)

#: errors a restart cannot fix
PERMANENT: tuple[type[BaseException], ...] = (ConfigError, TypeError, ValueError)


class Supervisor:
    def __init__(self, start: Callable[[], Flow], *, max_restarts: int = 3, within: float = 60.0,
                 backoff: Backoff | None = None, permanent: tuple[type[BaseException], ...] = PERMANENT) -> None:
        if max_restarts < 0 or within <= 0:
            raise ConfigError("max_restarts must be >= 0 and within > 0")
        self._start = start
        self.max_restarts = max_restarts
        self.within = within
        self.backoff = backoff or Backoff(0.5, 30.0, 0.2)
        self.permanent = permanent
        self.restarts = 0
        self.failures: list[BaseException] = []
        self.error: BaseException | None = None
        self.flow: Flow | None = None
        self._stopping = threading.Event()
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rxcqrs-supervisor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        recent: deque[float] = deque()
        try:
            while not self._stopping.is_set():
                self.flow = self._start()
                while not self.flow.wait_quietly(0.5):
                    if self._stopping.is_set():
                        self.flow.stop()
                if self.flow.error is None or self._stopping.is_set():
                    return  # completed (or stopped on purpose)
                error = self.flow.error
                self.failures.append(error)
                now = time.monotonic()
                recent.append(now)
                while recent and now - recent[0] > self.within:
                    recent.popleft()
                if isinstance(error, self.permanent) or isinstance(error.__cause__, self.permanent):
                    log.error("flow failed with a permanent error, not restarting: %r", error)
                    self.error = error
                    return
                if len(recent) > self.max_restarts:
                    log.error("flow failed %d times within %.0fs, giving up: %r", len(recent), self.within, error)
                    self.error = error
                    return
                delay = self.backoff.delay(len(recent) - 1) or self.backoff.max_delay
                log.warning("flow failed (%r); restart %d in %.1fs", error, self.restarts + 1, delay)
                if self._stopping.wait(delay):
                    return
                self.restarts += 1
        except Exception as exc:  # the start function itself failed
            self.error = exc
        finally:
            self.done.set()

    def stop(self) -> None:
        """Stop restarting and drain the running flow."""
        self._stopping.set()
        if self.flow is not None:
            self.flow.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """True once supervision ended; raises the final error if it gave up."""
        finished = self.done.wait(timeout)
        if finished and self.error is not None:
            raise self.error
        return finished


def supervise(start: Callable[[], Flow], **options: object) -> Supervisor:
    """Run ``start()`` (which builds and runs a flow) and restart it when it fails; see :class:`Supervisor`."""
    return Supervisor(start, **options)  # type: ignore[arg-type]
