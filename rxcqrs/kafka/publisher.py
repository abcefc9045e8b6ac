"""KafkaPublisher: send a group of records and hear once, when every one was delivered or one failed for good.

What the command engine publishes before it writes a batch's state (an aggregate's event stream): the
records go through a :class:`~rxcqrs.kafka.KafkaSink` (its retries of transient errors with backoff, its
topic check, its clear errors), as one :class:`~rxcqrs.messages.Batch` with a ticket of its own. ``done``
runs on a client thread; a record sent again after a retriable error may reach the topic twice (the
subscriber tells repeats by their event ids).
"""

from __future__ import annotations

from typing import Any, Callable

from rxcqrs.acks import Ticket
from rxcqrs.exceptions import StageError
from rxcqrs.kafka.client import ProducerClient
from rxcqrs.kafka.settings import ProducerSettings
from rxcqrs.kafka.sink import KafkaSink
from rxcqrs.messages import Batch, OutgoingRecord

__all__ = ["KafkaPublisher", "Published"]

#: ``done(None)`` once every record was delivered, ``done(error)`` at the first that failed for good
Published = Callable[[BaseException | None], None]


class KafkaPublisher:
    """Publishes groups of records to ``topic`` with a producer of ``producer``'s settings (or one you own)."""

    def __init__(self, topic: str, producer: ProducerSettings | ProducerClient | None = None, **sink: Any) -> None:
        self.topic = topic
        self.sink = KafkaSink(topic, producer, **sink)

    def check(self) -> None:
        """Raise the clear error of a topic that cannot be published to (missing: rxcqrs never creates it)."""
        error = self.sink._refusal(self.topic)
        if error is not None:
            raise error

    def publish(self, records: list[OutgoingRecord], done: Published) -> None:
        """Send ``records`` (in order); ``done`` once with the outcome of all of them."""
        self.sink.on_next(Batch(records, (), Ticket(done)))

    @property
    def sent(self) -> int:
        return self.sink.sent

    def close(self, failed: bool = False) -> None:
        """Wait for every send (``failed``: at most the sink's ``abandon_timeout``), then close the producer if
        this publisher made it."""
        if failed:
            self.sink.on_error(StageError("the stage that published stopped"))
        else:
            self.sink.on_completed()
