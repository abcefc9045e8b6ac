"""Fenced writes: epochs that order a table's writers, and the record of which protocol writes a table.

The command engine's default protocol (``write_protocol="fenced"``) writes an entity's state with a plain
``INSERT ... USING TIMESTAMP epoch * 2**40 + offset``: ``offset`` is the last source offset folded into
the state, ``epoch`` the writer's epoch for the partition assignment it holds. Cassandra keeps the write
with the highest timestamp, so

* a retried or redelivered write (same epoch, same offset) carries the same timestamp and, the fold being
  deterministic, the same content: an unknown outcome is simply sent again;
* within an assignment a later state always wins over an earlier one, whatever order the writes land in;
* any write of a newer assignment wins over every write of an older one: a *zombie* (a member that stalled
  past its session timeout while another took its partitions) can no longer overwrite the new owner.

A writer takes an epoch for every assignment it receives with one lightweight transaction on the fence row
of its consumer group and topic (:meth:`Fence.take`, ``UPDATE ... SET epoch = ? IF epoch = ?``; a conflict
or an unknown outcome simply takes the next one: skipped epochs are harmless). Epochs start at
:data:`FIRST_EPOCH`, so every fenced timestamp (about 4.5e15) exceeds wall-clock microseconds (1.7e15
today) and beats rows written earlier with ordinary timestamps.

Conditional statements cannot carry ``USING TIMESTAMP`` (a Paxos write is stamped with its ballot, i.e. the
wall clock), so the two protocols must never write one table: fenced rows would make later conditional
writes lose silently. :func:`claim_table` records the protocol (and, for fenced writes, the consumer group)
of each table in ``rxcqrs_writers`` and refuses a switch while the table has rows, and a second group.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal

from rxcqrs.backoff import Backoff, retry_until
from rxcqrs.cassandra.identifiers import identifier, qualified
from rxcqrs.cassandra.outcomes import Outcome, classify
from rxcqrs.cassandra.schema import create_table, prepare, prepare_serial
from rxcqrs.clock import SYSTEM, Clock
from rxcqrs.exceptions import ConfigError, RetriesExhaustedError, SchemaError

__all__ = ["WriteProtocol", "WRITE_PROTOCOLS", "FIRST_EPOCH", "EPOCH_SHIFT", "write_timestamp", "Fence",
           "create_fence_tables", "claim_table", "TableClaim"]

log = logging.getLogger(__name__)

WriteProtocol = Literal["fenced", "conditional"]
WRITE_PROTOCOLS: tuple[str, ...] = ("fenced", "conditional")
#: the first epoch a fence hands out: 4096 * 2**40 is about 4.5e15 microseconds, beyond any wall clock
FIRST_EPOCH = 4096
#: bits of the timestamp left for the source offset (2**40: a trillion offsets per partition)
EPOCH_SHIFT = 40
_OFFSET_LIMIT = 1 << EPOCH_SHIFT
FENCES_TABLE = "rxcqrs_fences"
WRITERS_TABLE = "rxcqrs_writers"


def check_protocol(protocol: str) -> WriteProtocol:
    if protocol not in WRITE_PROTOCOLS:
        raise ConfigError(f"write protocol must be one of {', '.join(WRITE_PROTOCOLS)}, got {protocol!r}")
    return protocol  # type: ignore[return-value]


def write_timestamp(epoch: int, offset: int) -> int:
    """The write timestamp of a state folded up to ``offset`` under ``epoch``."""
    if not 0 <= offset < _OFFSET_LIMIT:
        raise ConfigError(f"source offset {offset} does not fit a fenced timestamp (0 <= offset < 2**40)")
    return (epoch << EPOCH_SHIFT) | offset


def create_fence_tables(session: Any, keyspace: str) -> None:
    """The fence rows (one per consumer group and topic) and the record of each table's writers."""
    create_table(session, keyspace, FENCES_TABLE, {"consumer_group": "text", "topic": "text", "epoch": "bigint"},
                 ["consumer_group", "topic"])
    create_table(session, keyspace, WRITERS_TABLE,
                 {"table_name": "text", "protocol": "text", "consumer_group": "text"}, ["table_name"])


class Fence:
    """The epochs of one consumer group on one topic. :meth:`take` blocks (a few round trips): call it on a
    thread of your own, never on a driver callback."""

    def __init__(self, session: Any, keyspace: str, group: str, topic: str, *, backoff: Backoff | None = None,
                 clock: Clock = SYSTEM) -> None:
        self.session = session
        self._clock = clock
        self.group = group
        self.topic = topic
        self.backoff = backoff or Backoff(0.05, 10.0)
        self.table = qualified(keyspace, FENCES_TABLE)
        self._lock = threading.Lock()
        self._prepared: tuple[Any, Any, Any] | None = None

    def _statements(self) -> tuple[Any, Any, Any]:
        with self._lock:
            if self._prepared is None:
                read = prepare_serial(self.session, f"SELECT epoch FROM {self.table} WHERE consumer_group = ? "
                                                    "AND topic = ?")
                first = prepare(self.session, f"INSERT INTO {self.table} (consumer_group, topic, epoch) "
                                              "VALUES (?, ?, ?) IF NOT EXISTS")
                step = prepare(self.session, f"UPDATE {self.table} SET epoch = ? WHERE consumer_group = ? "
                                             "AND topic = ? IF epoch = ?")
                self._prepared = (read, first, step)
            return self._prepared

    def current(self) -> int | None:
        """The last epoch handed out (a serial read), or None before the first."""
        read, _, _ = self._statements()
        row = self.session.execute(read, (self.group, self.topic)).one()
        return None if row is None else int(row.epoch)

    def take(self, deadline: float | None = None) -> int:
        """A new epoch, higher than every epoch handed out before. Retries conflicts, transient errors and
        unknown outcomes (each a fresh read, then the next epoch) until ``deadline`` (on the fence's clock)
        or the backoff's end; then :class:`RetriesExhaustedError`."""
        read, first, step = self._statements()
        attempts = 0

        def attempt(_left: float) -> int:
            nonlocal attempts
            attempts += 1
            row = self.session.execute(read, (self.group, self.topic)).one()
            if row is None:
                seen, wanted = None, FIRST_EPOCH
                result = self.session.execute(first, (self.group, self.topic, wanted)).one()
            else:
                seen = int(row.epoch)
                wanted = seen + 1
                result = self.session.execute(step, (wanted, self.group, self.topic, seen)).one()
            if result is not None and not bool(result[0]):
                raise _Moved(f"the fence moved from {seen} meanwhile")
            log.info("fence %s/%s: epoch %d", self.group, self.topic, wanted)
            return wanted

        try:  # on a thread of its own: backing off there blocks nobody
            return retry_until(attempt, deadline, _retried, self.backoff, self._clock, give_up=True)
        except Exception as exc:
            if not _retried(exc):
                raise
            raise RetriesExhaustedError(f"could not take an epoch of {self.group}/{self.topic} after {attempts} "
                                        f"attempts: {exc!r}") from exc


class _Moved(Exception):
    """Another writer took the epoch this one wanted (taken again: the next epoch)."""


def _retried(error: Exception) -> bool:
    """Whether :meth:`Fence.take` tries again after ``error``: a conflict, a transient error, an unknown outcome."""
    return isinstance(error, _Moved) or classify(error) is not Outcome.PERMANENT


@dataclass(frozen=True)
class TableClaim:
    """Who writes a table: its protocol and (fenced) the consumer group that owns it."""

    table: str
    protocol: WriteProtocol
    group: str | None


def claim_table(session: Any, keyspace: str, table: str, protocol: WriteProtocol, group: str | None) -> TableClaim:
    """Record that ``protocol`` (and, fenced, ``group``) writes ``keyspace.table``, or check that it already
    does. Refused with :class:`SchemaError`: a switch of protocol while the table has rows, and fenced writes
    of a second consumer group (its epochs are not ordered with the owner's)."""
    check_protocol(protocol)
    name = qualified(keyspace, table)
    writers = qualified(keyspace, WRITERS_TABLE)
    identifier(table, "table")
    owner = group if protocol == "fenced" else None
    for _ in range(5):
        row = session.execute(f"SELECT protocol, consumer_group FROM {writers} WHERE table_name = %s",
                              (table,)).one()
        if row is None:
            found = _has_rows(session, name)
            if found and protocol == "fenced":  # rows from before protocols were recorded: conditional ones
                raise SchemaError(
                    f"{name} has rows written without a record of their protocol (conditional writes, before "
                    "fenced writes existed): switching to fenced writes would let those rows' wall-clock timestamps "
                    "lose to fenced ones silently; keep --write-protocol conditional for it, or use a new keyspace")
            applied = session.execute(f"INSERT INTO {writers} (table_name, protocol, consumer_group) VALUES "
                                      "(%s, %s, %s) IF NOT EXISTS", (table, protocol, owner)).one()
            if applied is None or bool(applied[0]):
                return TableClaim(name, protocol, owner)
            continue  # another writer claimed it meanwhile: check its claim
        if row.protocol != protocol:
            if _has_rows(session, name):
                harm = ("its fenced timestamps would beat every later conditional write" if protocol == "conditional"
                        else "its rows' wall-clock timestamps would lose to fenced ones")
                raise SchemaError(f"{name} is written with the {row.protocol} protocol and has rows: switching to "
                                  f"{protocol} writes is refused ({harm}, silently); use --write-protocol "
                                  f"{row.protocol} for it, or a new keyspace")
            session.execute(f"UPDATE {writers} SET protocol = %s, consumer_group = %s WHERE table_name = %s",
                            (protocol, owner, table))
            return TableClaim(name, protocol, owner)
        if protocol == "fenced" and row.consumer_group not in (None, owner):
            raise SchemaError(
                f"{name} is written by consumer group {row.consumer_group!r} with fenced writes; a second group "
                f"({owner!r}) would write with epochs not ordered with its own and freeze its entities silently: "
                f"use --group {row.consumer_group}, or a new keyspace")
        if protocol == "fenced" and row.consumer_group is None:
            session.execute(f"UPDATE {writers} SET consumer_group = %s WHERE table_name = %s", (owner, table))
        return TableClaim(name, protocol, owner if protocol == "fenced" else row.consumer_group)
    raise SchemaError(f"could not record the writers of {name}: it kept changing")


def _has_rows(session: Any, name: str) -> bool:
    return session.execute(f"SELECT * FROM {name} LIMIT 1").one() is not None
