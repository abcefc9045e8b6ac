"""The engine under every Cassandra stage: async execution with bounded concurrency, per-key order, retries.

* ``execute_async`` only; results come back on the driver's event-loop thread, which must never block, so
  a user function that reads before it writes (optimistic locking) runs on a small worker pool instead.
* At most ``max_concurrency`` requests in flight; jobs with the same key (by default the Kafka partition)
  never run together, so commands of one partition are applied in order.
* Transient errors (timeouts, unavailable, overloaded, no host) and lightweight transactions that were not
  applied are retried with the shared backoff; the job itself is retried (dendrites' retry lost it).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from rxcqrs.backoff import Backoff
from rxcqrs.exceptions import ConfigError, NotAppliedError, RetriesExhaustedError, StageError
from rxcqrs.messages import Envelope
from rxcqrs.timers import call_later

__all__ = ["CassandraExecutor", "was_applied", "is_transient", "is_unattempted", "Job"]

log = logging.getLogger(__name__)

StatementFn = Callable[[], Any]


def was_applied(rows: Any) -> bool | None:
    """``[applied]`` of a lightweight transaction's result rows (the async callback gets rows, not a
    ResultSet); ``None`` if the statement was not conditional."""
    if not rows or not isinstance(rows, list):
        return None
    first = rows[0]
    if isinstance(first, dict):
        return first.get("[applied]")
    fields = getattr(first, "_fields", ())
    if fields and fields[0] == "applied":
        return bool(first[0])
    return None


def is_unattempted(error: BaseException) -> bool:
    """The coordinator did not apply anything: always safe to retry."""
    from cassandra import Unavailable
    from cassandra.cluster import NoHostAvailable
    from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage

    return isinstance(error, (Unavailable, NoHostAvailable, OverloadedErrorMessage, IsBootstrappingErrorMessage))


def is_transient(error: BaseException) -> bool:
    """Worth retrying; timeouts leave the outcome unknown (the write may have been applied)."""
    from cassandra import OperationTimedOut, ReadTimeout, WriteTimeout
    from cassandra.connection import ConnectionException

    return is_unattempted(error) or isinstance(error, (WriteTimeout, ReadTimeout, OperationTimedOut,
                                                       ConnectionException))


@dataclass
class Job:
    env: Envelope[Any] | None
    make: StatementFn
    on_success: Callable[["Job", Any], None]
    on_failure: Callable[["Job", BaseException], None]
    key: Hashable
    retry_not_applied: bool
    retry_timeouts: bool
    attempt: int = 0
    last_error: BaseException | None = field(default=None, repr=False)

    def count(self, name: str) -> None:
        if self.env is not None:
            self.env.count(name)


class CassandraExecutor:
    def __init__(self, session: Any, *, max_concurrency: int = 32, backoff: Backoff | None = None,
                 workers: int = 0, name: str = "cassandra") -> None:
        if max_concurrency < 1:
            raise ConfigError("max_concurrency must be >= 1")
        self.session = session
        self.max_concurrency = max_concurrency
        self.backoff = backoff or Backoff()
        self.name = name
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"rxcqrs-{name}") if workers else None
        self._lock = threading.Condition()
        self._pending: dict[Hashable, deque[Job]] = {}
        self._ready: deque[Hashable] = deque()
        self._busy: set[Hashable] = set()
        self._running = 0
        self._submitted = 0  # submitted and not finished
        self._local = threading.local()
        self.retries = 0
        self.executed = 0

    # -- public -------------------------------------------------------------------------------------------
    def submit(self, env: Envelope[Any] | None, make: StatementFn, on_success: Callable[[Job, Any], None],
               on_failure: Callable[[Job, BaseException], None], *, key: Hashable = None,
               retry_not_applied: bool = False, retry_timeouts: bool = True) -> None:
        job = Job(env, make, on_success, on_failure, key if key is not None else object(), retry_not_applied,
                  retry_timeouts)
        with self._lock:
            self._submitted += 1
            self._pending.setdefault(job.key, deque()).append(job)
            if job.key not in self._busy and job.key not in self._ready:
                self._ready.append(job.key)
            startable = self._take_startable()
        self._dispatch_all(startable)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._submitted

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self._submitted == 0, timeout)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    # -- scheduling ---------------------------------------------------------------------------------------
    def _take_startable(self) -> list[Job]:
        """Under the lock: jobs that may start now (a free slot, their key not busy)."""
        out = []
        while self._running < self.max_concurrency and self._ready:
            key = self._ready.popleft()
            queue = self._pending.get(key)
            if not queue:
                self._pending.pop(key, None)
                continue
            job = queue.popleft()
            if not queue:
                del self._pending[key]
            self._busy.add(key)
            self._running += 1
            out.append(job)
        return out

    def _dispatch_all(self, jobs: list[Job]) -> None:
        """Start jobs; a job that finishes synchronously (e.g. the session is closed) must not recurse into
        the next one, so nested calls on one thread only queue and the outermost call drains."""
        queue = getattr(self._local, "queue", None)
        if queue is not None:
            queue.extend(jobs)
            return
        self._local.queue = deque(jobs)
        try:
            while self._local.queue:
                self._dispatch(self._local.queue.popleft())
        finally:
            self._local.queue = None

    def _dispatch(self, job: Job) -> None:
        if self._pool is not None:
            self._pool.submit(self._attempt, job)
        else:
            self._attempt(job)

    def _attempt(self, job: Job) -> None:
        try:
            statement = job.make()
        except Exception as exc:  # includes driver errors from the function's own reads
            self._failed(job, exc)
            return
        if statement is None:  # nothing to write (e.g. a deterministic rejection the function recorded)
            self._finish(job, None, None)
            return
        query, params = statement if isinstance(statement, tuple) else (statement, None)
        try:
            future = self.session.execute_async(query, params)
        except Exception as exc:
            self._failed(job, exc)
            return
        future.add_callbacks(self._rows, self._errback, callback_args=(job,), errback_args=(job,))

    def _rows(self, rows: Any, job: Job) -> None:
        self.executed += 1
        if job.retry_not_applied and was_applied(rows) is False:
            self._retry(job, NotAppliedError(f"{self.name}: lightweight transaction not applied "
                                             "(optimistic-lock conflict)"))
            return
        self._finish(job, rows, None)

    def _errback(self, error: BaseException, job: Job) -> None:
        self._failed(job, error)

    def _failed(self, job: Job, error: BaseException) -> None:
        if is_unattempted(error) or (job.retry_timeouts and is_transient(error)):
            self._retry(job, error)
            return
        self._finish(job, None, error)

    def _retry(self, job: Job, error: BaseException) -> None:
        delay = self.backoff.delay(job.attempt)
        job.last_error = error
        if delay is None:
            exhausted = RetriesExhaustedError(
                f"{self.name}: gave up after {job.attempt} retries (backoff reached its maximum "
                f"{self.backoff.max_delay}s); last error: {error!r}")
            exhausted.__cause__ = error
            self._finish(job, None, exhausted)
            return
        job.attempt += 1
        self.retries += 1
        job.count("retries")
        log.info("%s: retry %d in %.2fs after %r", self.name, job.attempt, delay, error)
        call_later(delay, lambda: self._dispatch_all([job]))

    def _finish(self, job: Job, rows: Any, error: BaseException | None) -> None:
        try:
            if error is None:
                job.on_success(job, rows)
            else:
                if not isinstance(error, StageError):
                    wrapped = StageError(f"{self.name}: {error!r}")
                    wrapped.__cause__ = error
                    error = wrapped
                job.on_failure(job, error)
        except Exception:  # a callback must never break the executor's bookkeeping
            log.exception("%s: completion callback failed", self.name)
        finally:
            with self._lock:
                self._running -= 1
                self._busy.discard(job.key)
                if job.key in self._pending:
                    self._ready.append(job.key)
                startable = self._take_startable()
                self._submitted -= 1
                if self._submitted == 0:
                    self._lock.notify_all()
            self._dispatch_all(startable)
