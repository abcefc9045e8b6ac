"""The engine under every Cassandra stage: async execution with bounded concurrency, per-key order, and a
reaction to each outcome (:mod:`rxcqrs.cassandra.outcomes`).

* ``execute_async`` only; results come back on the driver's event-loop thread, which must never block, so
  a user function that reads before it writes (optimistic locking) runs on a small worker pool instead.
* At most ``max_concurrency`` requests in flight; jobs with the same key (by default the Kafka partition)
  never run together, so commands of one entity are applied in order, retries included.
* **transient** errors and lightweight transactions that were **not applied** are retried with the shared
  backoff (a not-applied job runs its function again, so it decides on fresh state);
* an **unknown** outcome is retried only for idempotent jobs. A read-modify-write job is first *resolved*:
  its ``resolve`` function reads (at serial consistency) whether the write took effect: yes, the job
  succeeded; no, it runs again. If it cannot be resolved, ``record_unknown`` writes a row the query side
  reads (``duplicates`` reports it, ``compensate`` repairs the entity) and the job counts as done; without
  either, it fails with :class:`~rxcqrs.exceptions.UnknownOutcomeError`, which stops the flow;
* **permanent** errors fail the job at once with :class:`~rxcqrs.exceptions.PermanentStageError`.

Each outcome is counted on the record's flow metrics (``cassandra_applied``, ``cassandra_not_applied``,
``cassandra_transient``, ``cassandra_unknown``, ``cassandra_permanent``, ``unknown_resolved_applied``,
``unknown_resolved_not_applied``, ``unknown_recorded``).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from rxcqrs.backoff import Backoff
from rxcqrs.cassandra.answers import on_answer
from rxcqrs.cassandra.keyed import KeyedQueue
from rxcqrs.cassandra.outcomes import Outcome, classify
from rxcqrs.cassandra.retrying import abandoned, exhausted, permanent, retry_later
from rxcqrs.clock import SYSTEM, Clock
from rxcqrs.exceptions import ConfigError, NotAppliedError, StageError, UnknownOutcomeError
from rxcqrs.messages import Envelope

__all__ = ["CassandraExecutor", "was_applied", "is_transient", "Job"]

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
    if fields and fields[0] in ("applied", "[applied]"):
        return bool(first[0])
    return None


def is_transient(error: BaseException) -> bool:
    """Safe to retry as is: nothing was written (or, for reads, nothing could have been)."""
    return classify(error) is Outcome.TRANSIENT


@dataclass(eq=False)
class Job:
    env: Envelope[Any] | None
    make: StatementFn
    on_success: Callable[["Job", Any], None]
    on_failure: Callable[["Job", BaseException], None]
    key: Hashable
    retry_not_applied: bool
    idempotent: bool
    #: reads whether an unknown-outcome write took effect: True, False, or None (cannot tell)
    resolve: Callable[[], bool | None] | None = None
    #: a statement recording an unresolved unknown outcome (given the error), for the query side
    record_unknown: Callable[[BaseException], Any] | None = None
    attempt: int = 0
    phase: str = "run"  # "run", "resolve" or "record"
    unknown: BaseException | None = field(default=None, repr=False)
    queued: bool = False  # started from the per-key queue (its key is released when it finishes)

    def count(self, name: str) -> None:
        if self.env is not None:
            self.env.count(name)

    def where(self) -> str:
        return f" on {self.env.meta}" if self.env is not None else ""


class CassandraExecutor:
    def __init__(self, session: Any, *, max_concurrency: int = 32, backoff: Backoff | None = None,
                 workers: int = 0, name: str = "cassandra_executor", clock: Clock = SYSTEM) -> None:
        if max_concurrency < 1:
            raise ConfigError("max_concurrency must be >= 1")
        self.session = session
        self.max_concurrency = max_concurrency
        self.backoff = backoff or Backoff()
        self.name = name
        self._clock = clock  # times the retries' backoff
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"rxcqrs-{name}") if workers else None
        self._lock = threading.Condition()
        self._queue: KeyedQueue[Job] = KeyedQueue(max_concurrency)
        self._submitted = 0  # submitted and not finished
        self._abandoned = False
        self._local = threading.local()
        self.retries = 0

    # -- public -------------------------------------------------------------------------------------------
    def submit(self, env: Envelope[Any] | None, make: StatementFn, on_success: Callable[[Job, Any], None],
               on_failure: Callable[[Job, BaseException], None], *, key: Hashable = None,
               retry_not_applied: bool = False, idempotent: bool = False,
               resolve: Callable[[], bool | None] | None = None,
               record_unknown: Callable[[BaseException], Any] | None = None) -> None:
        job = Job(env, make, on_success, on_failure, key if key is not None else object(), retry_not_applied,
                  idempotent, resolve, record_unknown)
        with self._lock:
            self._submitted += 1
            if self._abandoned:
                startable = [job]  # fails at once in _attempt
            else:
                self._queue.put(job.key, job)
                startable = self._take_startable()
        self._dispatch_all(startable)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._submitted

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self._submitted == 0, timeout)

    def abandon(self) -> int:
        """Shutdown without waiting: jobs not started yet (and retries not due yet) fail at once, requests on
        the wire finish on their own. Returns how many jobs were still unfinished."""
        with self._lock:
            self._abandoned = True
            waiting = self._queue.drain()
            unfinished = self._submitted
        for job in waiting:
            self._finish(job, None, abandoned(self.name, job.where()))
        return unfinished

    def close(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=not wait)

    # -- scheduling ---------------------------------------------------------------------------------------
    def _take_startable(self) -> list[Job]:
        """Under the lock: jobs that may start now (a free slot, their key not busy)."""
        started = [batch[0] for _key, batch in self._queue.take_ready()]
        for job in started:
            job.queued = True
        return started

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
            try:
                self._pool.submit(self._attempt, job)
                return
            except RuntimeError:  # the pool was shut down (abandoned): fail the job below
                pass
        self._attempt(job)

    def _attempt(self, job: Job) -> None:
        if self._abandoned:
            self._finish(job, None, abandoned(self.name, job.where()))
            return
        if job.phase == "resolve":
            self._resolve(job)
            return
        try:
            statement = job.make()
        except Exception as exc:  # the function's own reads, or a bug in it: nothing was written
            self._failed(job, exc, sent=False)
            return
        if statement is None:  # nothing to write (e.g. a redelivered command that was already applied)
            self._finish(job, None, None)
            return
        query, params = statement if isinstance(statement, tuple) else (statement, None)
        try:
            future = self.session.execute_async(query, params)
        except Exception as exc:
            self._failed(job, exc, sent=False)
            return
        on_answer(future, lambda rows: self._rows(rows, job), lambda error: self._errback(error, job))

    # -- outcomes -----------------------------------------------------------------------------------------
    def _rows(self, rows: Any, job: Job) -> None:
        if job.phase == "record":
            job.count("unknown_recorded")
            log.warning("%s: outcome unknown%s, recorded for the query side: %r", self.name, job.where(),
                        job.unknown)
            self._finish(job, rows, None)
            return
        if was_applied(rows) is False:
            job.count("cassandra_not_applied")
            if job.retry_not_applied:
                self._retry(job, NotAppliedError(f"{self.name}: lightweight transaction not applied "
                                                 "(optimistic-lock conflict)"))
                return
        else:
            job.count("cassandra_applied")
        self._finish(job, rows, None)

    def _errback(self, error: BaseException, job: Job) -> None:
        self._failed(job, error, sent=True)

    def _failed(self, job: Job, error: BaseException, *, sent: bool) -> None:
        outcome = classify(error, sent=sent)
        job.count(f"cassandra_{outcome.value}")
        if outcome is Outcome.TRANSIENT or (outcome is Outcome.UNKNOWN and (job.idempotent or job.phase != "run")):
            self._retry(job, error)  # a resolving read or a recording insert is idempotent too
        elif outcome is Outcome.UNKNOWN:
            job.unknown = error
            if job.resolve is None and job.record_unknown is None:
                self._finish(job, None, _unknown_error(self.name, job, error, "it has no way to find out"))
                return
            job.phase = "resolve"
            self._retry(job, error)
        else:
            self._finish(job, None, permanent(self.name, job.where(), error))

    def _resolve(self, job: Job) -> None:
        """On a worker: ask whether the unknown-outcome write took effect; act on the answer."""
        answer: bool | None = None
        if job.resolve is not None:
            try:
                answer = job.resolve()
            except Exception as exc:
                self._failed(job, exc, sent=False)
                return
        if answer is True:
            job.count("unknown_resolved_applied")
            log.info("%s: unknown outcome%s resolved: it was applied", self.name, job.where())
            self._finish(job, None, None)
        elif answer is False:
            job.count("unknown_resolved_not_applied")
            log.info("%s: unknown outcome%s resolved: not applied, running it again", self.name, job.where())
            job.phase = "run"
            self._attempt(job)
        elif job.record_unknown is not None:
            assert job.unknown is not None
            statement = job.record_unknown(job.unknown)
            job.phase, job.attempt, job.make = "record", 0, lambda: statement
            self._attempt(job)
        else:
            self._finish(job, None, _unknown_error(self.name, job, job.unknown, "reading could not tell"))

    def _retry(self, job: Job, error: BaseException) -> None:
        if retry_later(self.backoff, job.attempt, lambda: self._dispatch_all([job]), self._clock):
            job.attempt += 1
            self.retries += 1
            job.count("retries")
            log.info("%s: retry %d (%s) after %r", self.name, job.attempt, job.phase, error)
        elif job.phase != "run":
            self._finish(job, None, _unknown_error(self.name, job, job.unknown or error,
                                                   f"resolving it kept failing ({error!r})"))
        else:
            self._finish(job, None, exhausted(self.name, job.where(), job.attempt, error, self.backoff))

    def _finish(self, job: Job, rows: Any, error: BaseException | None) -> None:
        try:
            if error is None:
                job.on_success(job, rows)
            else:
                if not isinstance(error, StageError):
                    wrapped = StageError(f"{self.name}: {error!r}{job.where()}")
                    wrapped.__cause__ = error
                    error = wrapped
                job.on_failure(job, error)
        except Exception:  # a callback must never break the executor's bookkeeping
            log.exception("%s: completion callback failed", self.name)
        finally:
            with self._lock:
                if job.queued:
                    self._queue.release(job.key)
                startable = self._take_startable()
                self._submitted -= 1
                if self._submitted == 0:
                    self._lock.notify_all()
            self._dispatch_all(startable)


def _unknown_error(name: str, job: Job, error: BaseException | None, why: str) -> UnknownOutcomeError:
    failure = UnknownOutcomeError(
        f"{name}: the outcome of a write{job.where()} is unknown ({error!r}) and {why}; it was not re-run (it "
        "could apply twice). The flow stops; after a restart the record is delivered again")
    failure.__cause__ = error
    return failure
