"""What a source fetched and has not emitted yet, and its emission downstream (the poll thread only).

:class:`FetchBuffers` keeps each partition's fetched records with the assignment epoch they were fetched
under and a round-robin turn over partitions; :class:`Emitter` takes runs from it, asks the committer to
admit each (a record of a revoked or rewound partition is dropped: it will be fetched again) and emits it
as an :class:`~rxcqrs.messages.Envelope` (one record) or a :class:`~rxcqrs.messages.Batch` (a partition's
run). A downstream observer that raises nacks what it was given; it never kills the source.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from reactivex import abc

from rxcqrs import tracing
from rxcqrs.kafka.client import Record
from rxcqrs.kafka.committer import Committer
from rxcqrs.messages import Batch, Envelope, RecordMetadata, TopicPartition
from rxcqrs.metrics import Metrics

__all__ = ["Demand", "FetchBuffers", "Emitter"]

log = logging.getLogger(__name__)


class Demand:
    """What downstream asked for: unbounded (``manual=False``) or the sum of ``request(n)`` calls minus what
    was emitted. ``request`` may come from any thread, the rest from the poll thread."""

    def __init__(self, manual: bool) -> None:
        self.manual = manual
        self._lock = threading.Lock()
        self._left = 0

    def request(self, n: int) -> None:
        with self._lock:
            self._left += n

    def allows(self, n: int) -> int:
        """How many of ``n`` records may be emitted now."""
        if not self.manual:
            return n
        with self._lock:
            return min(n, self._left)

    def took(self, n: int) -> None:
        if self.manual:
            with self._lock:
                self._left -= n


class FetchBuffers:
    """Fetched records per partition, in offset order, and the partitions' turn."""

    def __init__(self) -> None:
        self._buffers: dict[TopicPartition, tuple[int, deque[Record]]] = {}
        self._ring: deque[TopicPartition] = deque()  # partitions with buffered records, in emission turn
        #: records buffered over all partitions
        self.count = 0

    def __bool__(self) -> bool:
        return bool(self._ring)

    def holds(self, tp: TopicPartition) -> bool:
        return tp in self._buffers

    def add(self, tp: TopicPartition, epoch: int, records: list[Record]) -> None:
        """Append ``records`` of ``tp`` fetched under ``epoch`` (records of an older epoch are dropped)."""
        current = self._buffers.get(tp)
        if current is None or current[0] != epoch:
            if current is not None:
                self.count -= len(current[1])
            else:
                self._ring.append(tp)
            self._buffers[tp] = (epoch, deque(records))
        else:
            current[1].extend(records)
        self.count += len(records)

    def take(self, limit: int) -> tuple[TopicPartition, int, list[Record]]:
        """The partition whose turn it is, its epoch, and up to ``limit`` of its records (taken out; the
        partition goes to the back of the turn)."""
        tp = self._ring.popleft()
        epoch, records = self._buffers[tp]
        popleft = records.popleft
        run = [popleft()] if limit == 1 else [popleft() for _ in range(min(limit, len(records)))]
        self.count -= len(run)
        if records:
            self._ring.append(tp)
        else:
            del self._buffers[tp]
        return tp, epoch, run

    def first_offset(self, tp: TopicPartition) -> int | None:
        """The offset of ``tp``'s first buffered record, if any."""
        buffered = self._buffers.get(tp)
        return int(buffered[1][0].offset) if buffered and buffered[1] else None

    def clear(self) -> None:
        self._buffers.clear()
        self._ring.clear()
        self.count = 0


class Emitter:
    """Emits buffered records downstream, at most ``allowed`` per call (see :meth:`emit`)."""

    def __init__(self, buffers: FetchBuffers, committer: Committer, metrics: Metrics, batches: bool) -> None:
        self.buffers = buffers
        self.committer = committer
        self.metrics = metrics
        self.batches = batches

    def emit(self, observer: abc.ObserverBase[Any], allowed: int) -> int:
        """Emit up to ``allowed`` records round-robin over partitions; the number emitted."""
        return self._emit_batches(observer, allowed) if self.batches else self._emit_records(observer, allowed)

    def _emit_records(self, observer: abc.ObserverBase[Envelope[bytes | None]], allowed: int) -> int:
        emitted = 0
        buffers, halted, admit = self.buffers, self.committer.halted, self.committer.admit
        while emitted < allowed and buffers:
            tp, epoch, (record,) = buffers.take(1)
            if halted(tp):
                continue  # rewinding: it will be fetched again
            ticket_epoch = admit(tp, record.offset, epoch)
            if ticket_epoch is None:
                continue  # revoked or rewound since the poll: it will be fetched again
            emitted += 1
            self._emit_one(observer, tp, ticket_epoch, record)
        return emitted

    def _emit_batches(self, observer: abc.ObserverBase[Batch[bytes | None]], allowed: int) -> int:
        emitted = 0
        buffers, halted, admit = self.buffers, self.committer.halted, self.committer.admit
        while emitted < allowed and buffers:
            tp, epoch, run = buffers.take(allowed - emitted)
            take = len(run)
            if halted(tp):
                continue
            first = run[0].offset
            ticket_epoch = admit(tp, first, epoch, last=run[-1].offset, records=take)
            if ticket_epoch is None:
                continue
            emitted += take
            if tracing.ACTIVE:
                for record in run:
                    tracing.record_started(record)
            ticket = self.committer.ticket(tp, ticket_epoch, first, self.metrics.incr)
            try:
                observer.on_next(Batch([record.value for record in run], run, ticket))
            except Exception as exc:
                log.warning("downstream raised on a batch of %d from %s/%d@%d: %r", take, tp.topic, tp.partition,
                            first, exc)
                ticket.nack(exc)
        return emitted

    def _emit_one(self, observer: abc.ObserverBase[Envelope[bytes | None]], tp: TopicPartition, epoch: int,
                  record: Record) -> None:
        meta = RecordMetadata.of(record)
        if tracing.ACTIVE:
            tracing.record_started(record)
        ticket = self.committer.ticket(tp, epoch, record.offset, self.metrics.incr)
        try:
            observer.on_next(Envelope(record.value, meta, ticket))
        except Exception as exc:
            log.warning("downstream raised on %s: %r", meta, exc)
            ticket.nack(exc)
