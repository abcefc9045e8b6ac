"""The values that flow through rxcqrs: record metadata, envelopes (value + metadata + ticket), batches of
envelopes (values of one partition's consecutive records + one ticket), outgoing records."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, NamedTuple, Sequence, TypeVar

from rxcqrs.acks import Ticket
from rxcqrs.exceptions import PoisonRecordError

__all__ = ["TopicPartition", "RecordMetadata", "Envelope", "Batch", "OutgoingRecord", "Headers"]

T = TypeVar("T")
U = TypeVar("U")

Headers = tuple[tuple[str, bytes], ...]
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class TopicPartition(NamedTuple):
    """Same shape as ``kafka.TopicPartition`` (also a namedtuple), so the two compare equal."""

    topic: str
    partition: int


class RecordMetadata:
    """Where a consumed record came from. Immutable by convention: one is
    made per record on the hot path, so it is a plain slotted class rather than a frozen dataclass (whose
    ``__init__`` costs a ``object.__setattr__`` per field). The UTC time and the key as a UUID are computed
    on first use and kept (several stages ask for them)."""

    __slots__ = ("topic", "partition", "offset", "timestamp", "timestamp_type", "key", "headers", "_utc", "_uuid")

    def __init__(self, topic: str, partition: int, offset: int, timestamp: int, timestamp_type: int = 0,
                 key: bytes | None = None, headers: Headers = ()) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp  # milliseconds since the epoch
        self.timestamp_type = timestamp_type  # 0 = CreateTime (set by the producer), 1 = LogAppendTime (broker)
        self.key = key
        self.headers = headers
        self._utc: datetime | None = None
        self._uuid: uuid.UUID | None = None

    @classmethod
    def of(cls, record: Any) -> "RecordMetadata":
        """The metadata of a consumed record (a :class:`~rxcqrs.kafka.client.Record`); a record that is its own
        metadata (confluent-kafka's) is returned as it is."""
        if isinstance(record, RecordMetadata):
            return record
        headers = record.headers
        return cls(record.topic, record.partition, record.offset, record.timestamp,
                   getattr(record, "timestamp_type", 0) or 0, record.key,
                   tuple((k, v) for k, v in headers) if headers else ())

    def _fields(self) -> tuple[Any, ...]:
        return (self.topic, self.partition, self.offset, self.timestamp, self.timestamp_type, self.key, self.headers)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecordMetadata) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"RecordMetadata(topic={self.topic!r}, partition={self.partition}, offset={self.offset}, "
                f"timestamp={self.timestamp}, timestamp_type={self.timestamp_type}, key={self.key!r}, "
                f"headers={self.headers!r})")

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def timestamp_utc(self) -> datetime:
        """The record timestamp as a timezone-aware UTC datetime (same on every redelivery)."""
        utc = self._utc
        if utc is None:
            utc = self._utc = _EPOCH + timedelta(milliseconds=self.timestamp)
        return utc

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def key_uuid(self) -> uuid.UUID:
        """The key as a UUID (the event id); raises :class:`PoisonRecordError` if it is missing or not a UUID."""
        if self._uuid is not None:
            return self._uuid
        if self.key is None:
            raise PoisonRecordError(f"record {self.topic}/{self.partition}@{self.offset} has no key; a UUID key "
                                    "(the event id) is required")
        try:
            self._uuid = uuid.UUID(self.key.decode("utf-8"))
            return self._uuid
        except (UnicodeDecodeError, ValueError):
            raise PoisonRecordError(f"record {self.topic}/{self.partition}@{self.offset} key {self.key[:64]!r} is "
                                    "not a UUID string; a UUID key (the event id) is required") from None

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


class _Ticketed:
    """What envelopes and batches share: their ``ticket`` settles them, and carries their metrics."""

    __slots__ = ()
    ticket: Ticket

    def ack(self) -> None:
        self.ticket.ack()

    def nack(self, error: BaseException) -> None:
        self.ticket.nack(error)

    def count(self, name: str, amount: int = 1) -> None:
        """Report a per-record metric (e.g. ``retries``) to the flow this record came from."""
        self.ticket.count(name, amount)


class Envelope(_Ticketed, Generic[T]):
    """A value plus the metadata of the record it came from, plus the ticket that settles that record.
    Immutable by convention (a plain slotted class: one is made per record and per stage)."""

    __slots__ = ("value", "meta", "ticket")

    def __init__(self, value: T, meta: RecordMetadata, ticket: Ticket | None = None) -> None:
        self.value = value
        self.meta = meta
        self.ticket = ticket if ticket is not None else Ticket.untracked()

    def __eq__(self, other: object) -> bool:  # the ticket is not part of the identity of an envelope
        return isinstance(other, Envelope) and (self.value, self.meta) == (other.value, other.meta)

    def __hash__(self) -> int:
        return hash((self.meta, id(self.value)))

    def __repr__(self) -> str:
        return f"Envelope(value={self.value!r}, meta={self.meta!r})"

    def with_value(self, value: U) -> "Envelope[U]":
        return Envelope(value, self.meta, self.ticket)

    def split(self, n: int) -> "list[Envelope[T]]":
        return [Envelope(self.value, self.meta, t) for t in self.ticket.split(n)]


class Batch(_Ticketed, Generic[T]):
    """Consecutive records of one partition that a source emits together (``SourceSettings(batches=True)``):
    their values, the consumed records they came from, and one ticket that settles them all (done when every
    record is; failed at the first failure, which rewinds or stops at the batch's first offset).

    Stages that take batches (``takes_batches``: :func:`~rxcqrs.operators.map_value`,
    :class:`~rxcqrs.kafka.KafkaSink`) handle a batch whole, which saves the per-record envelope, ticket,
    metadata and operator calls. :func:`~rxcqrs.run` splits batches into envelopes (:meth:`envelopes`) before
    the first stage that does not take them, so no stage ever sees a batch it does not expect."""

    __slots__ = ("values", "records", "ticket")

    def __init__(self, values: list[T], records: Sequence[Any], ticket: Ticket) -> None:
        self.values = values
        self.records = records
        self.ticket = ticket

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"Batch({len(self.values)} records from {self.meta})"

    @property
    def meta(self) -> RecordMetadata:
        """Where the batch starts (its first record): what errors about the batch name."""
        return RecordMetadata.of(self.records[0])

    def with_values(self, values: list[U]) -> "Batch[U]":
        return Batch(values, self.records, self.ticket)

    def split(self, n: int) -> "list[Batch[T]]":
        """The same batch for ``n`` branches of a broadcast, each with its share of the ticket."""
        return [Batch(self.values, self.records, t) for t in self.ticket.split(n)]

    def envelopes(self) -> list[Envelope[T]]:
        """One envelope per record, each settling its own share of the batch's ticket."""
        tickets = self.ticket.split(len(self.values))
        return [Envelope(value, RecordMetadata.of(record), ticket)
                for value, record, ticket in zip(self.values, self.records, tickets, strict=True)]


class OutgoingRecord(NamedTuple):
    """What a :class:`~rxcqrs.kafka.KafkaSink` sends: ``topic`` defaults to the sink's topic. Immutable (a
    named tuple: one is made per record on the hot path, at a fifth of a frozen dataclass's cost)."""

    value: bytes | None
    key: bytes | None = None
    topic: str | None = None
    headers: Headers = ()
    partition: int | None = None
    timestamp_ms: int | None = None
