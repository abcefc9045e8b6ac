"""A commit the group refuses because it moved on (rebalance, new generation) is told apart from a failed
commit by both clients, and a final commit refused that way is not an error of the flow."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from kafka.errors import KafkaTimeoutError, RebalanceInProgressError

from rxcqrs.exceptions import GroupMovedOnError
from rxcqrs.kafka.confluent import ConfluentConsumer
from rxcqrs.kafka.kafka_python import KafkaPythonConsumer
from rxcqrs.messages import TopicPartition

OFFSETS = {TopicPartition("t", 0): 5}


class Refusing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def commit(self, *_args: Any, **_kwargs: Any) -> None:
        raise self.error


@pytest.mark.parametrize("code", [KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
                                  KafkaError.UNKNOWN_MEMBER_ID])
def test_confluent_tells_a_group_that_moved_on(code: int) -> None:
    consumer = ConfluentConsumer(Refusing(KafkaException(KafkaError(code))), config={"group.id": "g"})
    with pytest.raises(GroupMovedOnError, match="refused the commit"):
        consumer.commit(OFFSETS, 1.0)


def test_confluent_keeps_other_commit_errors() -> None:
    consumer = ConfluentConsumer(Refusing(KafkaException(KafkaError(KafkaError._TIMED_OUT))), config={"group.id": "g"})
    with pytest.raises(KafkaException) as raised:
        consumer.commit(OFFSETS, 1.0)
    assert not isinstance(raised.value, GroupMovedOnError)


def test_kafka_python_tells_a_group_that_moved_on() -> None:
    with pytest.raises(GroupMovedOnError):
        KafkaPythonConsumer(Refusing(RebalanceInProgressError())).commit(OFFSETS, 1.0)
    with pytest.raises(KafkaTimeoutError):
        KafkaPythonConsumer(Refusing(KafkaTimeoutError())).commit(OFFSETS, 1.0)
