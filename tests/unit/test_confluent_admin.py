"""The confluent backend reads offsets through an admin client of its own, and drops it after a failure:
after a broker restart librdkafka's admin client kept a stale leader epoch (FENCED_LEADER_EPOCH forever)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from rxcqrs.kafka.confluent import ConfluentConsumer
from rxcqrs.messages import TopicPartition


class Offset:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class Done:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self, _timeout: float | None = None) -> Any:
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


class FakeAdmin:
    """Answers ListOffsets with ``end`` for every partition, or fails with a fenced leader epoch."""

    def __init__(self, fenced: bool, end: int = 7) -> None:
        self.fenced, self.end = fenced, end

    def list_offsets(self, request: dict[Any, Any], **_options: Any) -> dict[Any, Done]:
        error = KafkaException(KafkaError(KafkaError.FENCED_LEADER_EPOCH))
        return {tp: Done(error if self.fenced else Offset(self.end)) for tp in request}


def test_a_failed_offsets_request_starts_the_next_one_on_a_fresh_admin_client(monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    created: list[FakeAdmin] = []

    def admin_client(_config: dict[str, Any], **_options: Any) -> FakeAdmin:
        created.append(FakeAdmin(fenced=not created))  # the first one is stale, a new one is not
        return created[-1]

    monkeypatch.setattr("confluent_kafka.admin.AdminClient", admin_client)
    consumer = ConfluentConsumer(object(), config={"bootstrap.servers": "127.0.0.1:1", "group.id": "g"})
    tps = [TopicPartition("t", 0), TopicPartition("t", 1)]
    with pytest.raises(KafkaException, match="FENCED_LEADER_EPOCH"):
        consumer.end_offsets(tps, 1.0)
    assert consumer.end_offsets(tps, 1.0) == {tps[0]: 7, tps[1]: 7}
    assert consumer.end_offsets(tps, 1.0) == {tps[0]: 7, tps[1]: 7}
    assert len(created) == 2  # dropped once after the failure, kept while it works
