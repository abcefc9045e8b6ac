"""Reads of the admin helpers go on past a dead broker (another node is tried) and stop on a real error."""

from __future__ import annotations

import time

import pytest
from kafka.errors import KafkaConnectionError, TopicAuthorizationFailedError, UnknownTopicOrPartitionError

from rxcqrs.kafka import admin


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
    assert admin._retrying(read) == "read" and len(calls) == 3  # type: ignore[arg-type]


@pytest.mark.parametrize("error", [TopicAuthorizationFailedError(), UnknownTopicOrPartitionError()])
def test_an_error_that_another_try_cannot_fix_is_raised_at_once(error: Exception) -> None:
    calls, read = failing(1, error)
    with pytest.raises(type(error)):
        admin._retrying(read)  # type: ignore[arg-type]
    assert len(calls) == 1


def test_retries_end_at_the_deadline() -> None:
    calls, read = failing(10**6, KafkaConnectionError("111 ECONNREFUSED"))
    started = time.monotonic()
    with pytest.raises(KafkaConnectionError):
        admin._retrying(read, deadline=started + 0.5)  # type: ignore[arg-type]
    assert time.monotonic() - started < 2.5 and len(calls) >= 2
