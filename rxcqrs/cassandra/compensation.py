"""Restoring the right state after redeliveries: compensation by count, and rebuild from the log.

Counting log rows does not count applications: a crash between the service write and the event-log write
(in either order, parallel or serial) leaves an event applied twice but logged once, or logged twice but
applied once. Two exact ways out:

* **Idempotent commands** (no compensation needed): the command write records the event's source
  partition/offset atomically with the state change (same conditional update of the same row), so a
  redelivered command is recognised and skipped. Costs a wider row and a read per command.
* **Rebuild** (:class:`Rebuilder`): the log holds every applied event at least once, so the right state is
  the fold of the distinct logged events in order. Entities whose state disagrees with that fold are
  rewritten from it under optimistic locking. Works for any command, costs a read of the entity's log.

:class:`Compensator` is the generic "event applied k times instead of once -> corrective commands" tool
(for any k and sign, and idempotent). It is exact when you know k: by
default k is the number of loggings, which equals the number of applications only when the command write
and the log write cannot be separated by a crash; pass ``applications=`` when you know better.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Generic, Iterable, Sequence, TypeVar

from rxcqrs.backoff import Backoff
from rxcqrs.cassandra.eventlog import Duplicate, EventLog, LoggedEvent
from rxcqrs.cassandra.executor import was_applied
from rxcqrs.cassandra.identifiers import qualified
from rxcqrs.cassandra.outcomes import Outcome, classify
from rxcqrs.cassandra.schema import create_table, prepare
from rxcqrs.exceptions import RetriesExhaustedError

__all__ = ["Compensator", "CompensationReport", "Rebuilder", "RebuildReport"]

log = logging.getLogger(__name__)
S = TypeVar("S")


@dataclass
class CompensationReport:
    examined: int = 0
    compensated: int = 0
    already_done: int = 0
    statements: int = 0
    details: list[tuple[uuid.UUID, int]] = field(default_factory=list)  # (event id, extra applications fixed)


class Compensator:
    """For each duplicate: ``corrective(duplicate, logged_rows, extra)`` returns the plain (non-conditional)
    statements that undo ``extra`` surplus applications (``extra`` may be negative to redo). They are written
    in one logged batch together with the ledger row ``<ledger>(event_id) = applications - 1``, so a crash
    cannot compensate twice and a second run finds nothing left to do."""

    def __init__(self, session: Any, log: EventLog,
                 corrective: Callable[[Duplicate, list[LoggedEvent], int], Iterable[Any]], *,
                 ledger: str = "compensations",
                 applications: Callable[[Duplicate], int] | None = None) -> None:
        self.session = session
        self.log = log
        self.corrective = corrective
        self.ledger_table = ledger
        self.ledger = qualified(log.keyspace, ledger)
        self.applications = applications or (lambda dup: dup.times_logged)

    def create(self) -> None:
        create_table(self.session, self.log.keyspace, self.ledger_table,
                     {"event_id": "uuid", "entity": "text", "compensated": "int", "updated_at": "timestamp"},
                     ["event_id"])

    def run(self, duplicates: Iterable[Duplicate]) -> CompensationReport:
        from cassandra.query import BatchStatement, BatchType

        read = prepare(self.session, f"SELECT compensated FROM {self.ledger} WHERE event_id = ?")
        write = prepare(self.session, f"INSERT INTO {self.ledger} (event_id, entity, compensated, updated_at) "
                                      "VALUES (?, ?, ?, ?)")
        report = CompensationReport()
        for dup in duplicates:
            report.examined += 1
            row = self.session.execute(read, (dup.event_id,)).one()
            done = row.compensated if row else 0
            target = self.applications(dup) - 1
            extra = target - done
            if extra == 0:
                report.already_done += 1
                continue
            statements = list(self.corrective(dup, self.log.logged(self.session, dup), extra))
            batch = BatchStatement(BatchType.LOGGED)
            for statement in statements:
                if isinstance(statement, tuple):
                    batch.add(*statement)
                else:
                    batch.add(statement)
            batch.add(write, (dup.event_id, str(dup.entity_id), target, datetime.now(timezone.utc)))
            self.session.execute(batch)
            report.compensated += 1
            report.statements += len(statements)
            report.details.append((dup.event_id, extra))
        return report


@dataclass
class RebuildReport:
    examined: int = 0
    rewritten: int = 0
    unchanged: int = 0
    conflicts: int = 0
    details: list[tuple[Any, Any, Any]] = field(default_factory=list)  # (entity, before, after)


class Rebuilder(Generic[S]):
    """Rewrite entities from the fold of their distinct logged events.

    ``fold(events)`` -> the right state (``None``: the entity should not exist); ``read(entity)`` ->
    ``(state, version)`` or ``None``; ``write(entity, state, version)`` -> a conditional statement that
    replaces the state only if the version is still ``version`` (``IF version = ?``, or ``IF NOT EXISTS``
    when ``version`` is ``None``). A conflict re-reads and retries with the shared backoff. Every rewrite is
    recorded in ``<ledger>``; a second run finds every entity equal to its fold and writes nothing.
    """

    def __init__(self, session: Any, log: EventLog, *, fold: Callable[[Sequence[LoggedEvent]], S | None],
                 read: Callable[[Any], tuple[S | None, Any] | None], write: Callable[[Any, S | None, Any], Any],
                 ledger: str = "rebuilds", backoff: Backoff | None = None) -> None:
        self.session = session
        self.log = log
        self.fold = fold
        self.read = read
        self.write = write
        self.ledger_table = ledger
        self.ledger = qualified(log.keyspace, ledger)
        self.backoff = backoff or Backoff()

    def create(self) -> None:
        create_table(self.session, self.log.keyspace, self.ledger_table,
                     {"entity": "text", "at": "timeuuid", "before": "text", "after": "text", "events": "int"},
                     ["entity"], [("at", "ASC")])

    def run(self, entities: Iterable[Any] | None = None) -> RebuildReport:
        """Check ``entities`` (default: every entity in the log) and rewrite those that disagree."""
        from cassandra.util import uuid_from_time

        record = prepare(self.session, f"INSERT INTO {self.ledger} (entity, at, before, after, events) "
                                       "VALUES (?, ?, ?, ?, ?)")
        report = RebuildReport()
        for entity in (entities if entities is not None else self.log.entities(self.session)):
            report.examined += 1
            events = self.log.distinct_events(self.session, entity)
            expected = self.fold(events)
            attempt = 0
            while True:
                current = self.read(entity)
                state = current[0] if current else None
                if state == expected:
                    report.unchanged += 1
                    break
                statement = self.write(entity, expected, current[1] if current else None)
                if statement is not None and self._applied(statement):
                    self.session.execute(record, (str(entity), uuid_from_time(time.time()), repr(state),
                                                  repr(expected), len(events)))
                    report.rewritten += 1
                    report.details.append((entity, state, expected))
                    break
                report.conflicts += 1
                delay = self.backoff.delay(attempt)
                if delay is None:
                    raise RetriesExhaustedError(f"rebuild of {entity} kept conflicting with concurrent writers")
                attempt += 1
                time.sleep(delay)  # a batch tool on its own thread: a plain backoff sleep is fine here
        return report

    def _applied(self, statement: Any) -> bool:
        query, params = statement if isinstance(statement, tuple) else (statement, None)
        try:
            rows = list(self.session.execute(query, params))
        except Exception as exc:
            if classify(exc) in (Outcome.TRANSIENT, Outcome.UNKNOWN):  # the re-read under the lock resolves it
                log.warning("rebuild write failed (%r); will re-read and decide again", exc)
                return False
            raise
        return was_applied(rows) is not False
