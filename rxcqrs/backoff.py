"""The one exponential backoff shared by every retrying stage (Kafka and Cassandra alike), and
:func:`retry_until`, the one loop that retries a blocking call until a deadline.

delay(n) = min(max, min * 2**n) * (1 + random() * random_factor); a stage retries while the delay is below
``max`` and gives up once it reaches it (with the defaults 100 ms, 30 s, 0.2: about nine retries).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Callable, TypeVar

from rxcqrs.clock import SYSTEM, Clock
from rxcqrs.exceptions import ConfigError

__all__ = ["Backoff", "retry_until"]

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    min_delay: float = 0.1
    max_delay: float = 30.0
    random_factor: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.min_delay <= self.max_delay:
            raise ConfigError(f"backoff needs 0 < min_delay <= max_delay, got {self.min_delay}, {self.max_delay}")
        if not 0 <= self.random_factor <= 1:
            raise ConfigError(f"backoff random_factor must be in [0, 1], got {self.random_factor}")

    def base_delay(self, attempt: int) -> float:
        """The delay before jitter: ``min(max, min * 2**attempt)``."""
        if attempt >= 30:
            return self.max_delay
        return min(self.max_delay, self.min_delay * (2 ** max(attempt, 0)))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float | None:
        """Seconds to wait before retry number ``attempt`` (0-based), or ``None``: give up."""
        base = self.base_delay(attempt)
        if base >= self.max_delay:
            return None
        return base * (1 + rand() * self.random_factor)

    def with_(self, **changes: float) -> "Backoff":
        return replace(self, **changes)


def retry_until(attempt: Callable[[float], T], deadline: float | None, transient: Callable[[Exception], bool],
                backoff: Backoff = Backoff(min_delay=0.05, max_delay=2.0, random_factor=0.0),
                clock: Clock = SYSTEM, *, give_up: bool = False) -> T:
    """``attempt(seconds_left)`` until it returns; after an error that ``transient`` accepts, again after the
    backoff's delay while that delay ends before ``deadline`` (on ``clock``; ``None``: no deadline, and
    ``seconds_left`` is infinite). The delay is capped at the backoff's maximum and never gives up early, unless
    ``give_up``: then it is :meth:`Backoff.delay` (jittered), and once that gives up so does the loop. Any other
    error, or the last transient one, is raised."""
    tries = 0
    while True:
        try:
            return attempt(math.inf if deadline is None else max(0.0, deadline - clock.now()))
        except Exception as exc:
            if not transient(exc):
                raise
            delay = backoff.delay(tries) if give_up else backoff.base_delay(tries)
            if delay is None or (deadline is not None and clock.now() + delay >= deadline):
                raise
        clock.sleep(delay)
        tries += 1
