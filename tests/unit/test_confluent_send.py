"""The confluent-kafka producer adapter's send, on a stand-in for ``confluent_kafka.Producer``: a full local
queue is waited out, an immediate error is reported, optional fields are passed only when set."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from rxcqrs.kafka.confluent_producer import ConfluentProducer


class StandIn:
    def __init__(self, full: int = 0, error: BaseException | None = None) -> None:
        self.full, self.error = full, error
        self.sent: list[tuple[Any, ...]] = []
        self.flushes = 0

    def produce(self, topic: str, value: Any, key: Any, on_delivery: Any, **options: Any) -> None:
        if self.error is not None:
            raise self.error
        if self.full:
            self.full -= 1
            raise BufferError("Local: Queue full")
        self.sent.append((topic, value, key, options))
        on_delivery(None, None)

    def flush(self, timeout: float = -1) -> int:
        self.flushes += 1
        return 0

    def poll(self, timeout: float) -> int:
        return 0


@pytest.mark.parametrize("options", [{}, {"headers": [("h", b"1")], "partition": 2, "timestamp_ms": 7}])
def test_a_full_queue_is_waited_out_and_the_record_sent_once(options: dict[str, Any]) -> None:
    client = StandIn(full=2)
    producer = ConfluentProducer(client)
    outcomes: list[Any] = []
    producer.send("t", b"v", b"k", options.get("headers"), options.get("partition"), options.get("timestamp_ms"),
                  outcomes.append)
    producer.close(1)
    expected = {"headers": [("h", b"1")], "partition": 2, "timestamp": 7} if options else {}
    assert client.sent == [("t", b"v", b"k", expected)] and outcomes == [None] and client.flushes >= 2


def test_an_error_at_send_is_reported_as_the_outcome() -> None:
    error = KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    producer = ConfluentProducer(StandIn(error=error))
    outcomes: list[Any] = []
    producer.send("t", b"v", None, None, None, None, outcomes.append)
    producer.close(1)
    assert outcomes == [error]
