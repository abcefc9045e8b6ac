"""Reads of the admin helpers go on past a dead broker (another node is tried) and stop on a real error; the
shared deadline loop behind them (:func:`rxcqrs.backoff.retry_until`), on a virtual clock."""

from __future__ import annotations

import pytest
from kafka.errors import KafkaConnectionError, TopicAuthorizationFailedError, UnknownTopicOrPartitionError

from rxcqrs.backoff import Backoff, retry_until
from rxcqrs.kafka import admin
from rxcqrs.testing import VirtualClock


def failing(times: int, error: Exception) -> tuple[list[int], object]:
    calls: list[int] = []

    def read() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "read"

    return calls, read


def test_a_refused_connection_is_tried_again() -> None:
    calls, read = failing(2, KafkaConnectionError("111 ECONNREFUSED"))
    clock = VirtualClock()
    started = clock.now()
    assert admin._retrying(read, clock=clock) == "read" and len(calls) == 3  # type: ignore[arg-type]
    assert clock.now() - started == pytest.approx(0.1 + 0.2)  # the backoff, slept on the clock


@pytest.mark.parametrize("error", [TopicAuthorizationFailedError(), UnknownTopicOrPartitionError()])
def test_an_error_that_another_try_cannot_fix_is_raised_at_once(error: Exception) -> None:
    calls, read = failing(1, error)
    with pytest.raises(type(error)):
        admin._retrying(read, clock=VirtualClock())  # type: ignore[arg-type]
    assert len(calls) == 1


def test_retries_end_at_the_deadline() -> None:
    calls, read = failing(10**6, KafkaConnectionError("111 ECONNREFUSED"))
    clock = VirtualClock()
    started = clock.now()
    with pytest.raises(KafkaConnectionError):
        admin._retrying(read, clock=clock)  # type: ignore[arg-type]
    # 0.1, 0.2, ..., then 2 s each; no sleep would end past the 60 s deadline
    assert started + admin.RETRY_FOR - 2.0 <= clock.now() < started + admin.RETRY_FOR and len(calls) == 34


def test_retry_until_passes_what_is_left_and_raises_the_last_transient_error_at_the_deadline() -> None:
    clock = VirtualClock()
    lefts: list[float] = []

    def attempt(left: float) -> str:
        lefts.append(left)
        raise TimeoutError(f"try {len(lefts)}")

    with pytest.raises(TimeoutError, match="try 4"):
        retry_until(attempt, clock.now() + 1.0, lambda e: isinstance(e, TimeoutError),
                    Backoff(min_delay=0.1, max_delay=1.0, random_factor=0.0), clock)
    assert lefts == pytest.approx([1.0, 0.9, 0.7, 0.3])


def test_retry_until_raises_an_error_it_may_not_retry_at_once() -> None:
    clock = VirtualClock()
    started = clock.now()
    with pytest.raises(ValueError):
        retry_until(lambda _left: int("x"), clock.now() + 60, lambda e: isinstance(e, OSError), clock=clock)
    assert clock.now() == started
