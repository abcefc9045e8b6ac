"""The values that flow through rxcqrs: record metadata, envelopes (value + metadata + ticket), outgoing records."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Generic, NamedTuple, TypeVar

from rxcqrs.acks import Ticket
from rxcqrs.exceptions import PoisonRecordError

__all__ = ["TopicPartition", "RecordMetadata", "Envelope", "OutgoingRecord", "Headers"]

T = TypeVar("T")
U = TypeVar("U")

Headers = tuple[tuple[str, bytes], ...]


class TopicPartition(NamedTuple):
    """Same shape as ``kafka.TopicPartition`` (also a namedtuple), so the two compare equal."""

    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class RecordMetadata:
    """Where a consumed record came from (dendrites' ConsumerRecordMetadata)."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # milliseconds since the epoch
    timestamp_type: int = 0  # 0 = CreateTime (set by the producer), 1 = LogAppendTime (set by the broker)
    key: bytes | None = None
    headers: Headers = ()

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def timestamp_utc(self) -> datetime:
        """The record timestamp as a timezone-aware UTC datetime (same on every redelivery)."""
        return datetime.fromtimestamp(self.timestamp / 1000, tz=timezone.utc)

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def key_uuid(self) -> uuid.UUID:
        """The key as a UUID (the event id); raises :class:`PoisonRecordError` if it is missing or not a UUID."""
        if self.key is None:
            raise PoisonRecordError(f"record {self.topic}/{self.partition}@{self.offset} has no key; a UUID key "
                                    "(the event id) is required")
        try:
            return uuid.UUID(self.key.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise PoisonRecordError(f"record {self.topic}/{self.partition}@{self.offset} key {self.key[:64]!r} is "
                                    "not a UUID string; a UUID key (the event id) is required") from None

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


@dataclass(frozen=True, slots=True)
class Envelope(Generic[T]):
    """A value plus the metadata of the record it came from, plus the ticket that settles that record."""

    value: T
    meta: RecordMetadata
    ticket: Ticket = field(default_factory=Ticket.untracked, compare=False, repr=False)

    def ack(self) -> None:
        self.ticket.ack()

    def nack(self, error: BaseException) -> None:
        self.ticket.nack(error)

    def count(self, name: str, amount: int = 1) -> None:
        """Report a per-record metric (e.g. ``retries``) to the flow this record came from."""
        self.ticket.count(name, amount)

    def with_value(self, value: U) -> "Envelope[U]":
        return Envelope(value, self.meta, self.ticket)

    def split(self, n: int) -> "list[Envelope[T]]":
        return [Envelope(self.value, self.meta, t) for t in self.ticket.split(n)]


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """What a :class:`~rxcqrs.kafka.KafkaSink` sends: ``topic`` defaults to the sink's topic."""

    value: bytes | None
    key: bytes | None = None
    topic: str | None = None
    headers: Headers = ()
    partition: int | None = None
    timestamp_ms: int | None = None
