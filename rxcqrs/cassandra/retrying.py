"""When a command stage retries, and the errors it ends with: one place for every Cassandra stage.

Every retry waits the shared backoff's delay (:class:`~rxcqrs.backoff.Backoff`) on the timer thread and
gives up when the backoff does; a stage that was abandoned at shutdown never schedules another attempt.
"""

from __future__ import annotations

from typing import Callable

from rxcqrs.backoff import Backoff
from rxcqrs.clock import SYSTEM, Clock
from rxcqrs.exceptions import PermanentStageError, RetriesExhaustedError, StageError
from rxcqrs.timers import timers

__all__ = ["retry_later", "exhausted", "permanent", "abandoned"]


def retry_later(backoff: Backoff, attempt: int, step: Callable[[], None], clock: Clock = SYSTEM) -> bool:
    """Run ``step`` after the delay of retry number ``attempt`` (on ``clock``'s timer thread); False (nothing
    scheduled) once the backoff gives up."""
    delay = backoff.delay(attempt)
    if delay is None:
        return False
    timers(clock).call_later(delay, step)
    return True


def exhausted(name: str, where: str, attempts: int, error: BaseException, backoff: Backoff) -> StageError:
    failure = RetriesExhaustedError(f"{name}: gave up{where} after {attempts} retries (the backoff reached its "
                                    f"maximum {backoff.max_delay:g}s); last error: {error!r}")
    failure.__cause__ = error
    return failure


def permanent(name: str, where: str, error: BaseException) -> StageError:
    failure = PermanentStageError(f"{name}: {error!r}{where} cannot succeed by retrying")
    failure.__cause__ = error
    return failure


def abandoned(name: str, where: str = "") -> StageError:
    return StageError(f"{name}: abandoned at shutdown{where} (not acked: delivered again)")
