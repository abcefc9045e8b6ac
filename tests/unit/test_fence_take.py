"""Fence.take against a scripted session: conflicts and transient errors take the next epoch, a permanent error
is raised as it is, and the retries end at the deadline or with the backoff (on a virtual clock)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from cassandra import InvalidRequest, OperationTimedOut, Unavailable

from rxcqrs.backoff import Backoff
from rxcqrs.cassandra.fence import FIRST_EPOCH, Fence
from rxcqrs.exceptions import RetriesExhaustedError
from rxcqrs.testing import VirtualClock
from tests.helpers import advancing


class _Result:
    def __init__(self, row: Any) -> None:
        self._row = row

    def one(self) -> Any:
        return self._row


class ScriptedSession:
    """The fence row in memory; ``script`` says what each conditional write does before it applies: ``"moved"``
    (another writer took the epoch first), an exception (raised), or nothing left (applied)."""

    def __init__(self, script: list[Any], epoch: int | None = None) -> None:
        self.epoch = epoch
        self.script = list(script)
        self.writes = 0
        self.cluster = SimpleNamespace(profile_manager=SimpleNamespace(default=SimpleNamespace(
            serial_consistency_level=None)))

    def prepare(self, query: str) -> Any:
        return SimpleNamespace(query_string=query, consistency_level=None)

    def execute(self, statement: Any, params: Any = None, **_: Any) -> _Result:
        query = statement.query_string
        if query.startswith("SELECT"):
            return _Result(None if self.epoch is None else SimpleNamespace(epoch=self.epoch))
        self.writes += 1
        step = self.script.pop(0) if self.script else None
        if isinstance(step, Exception):
            raise step
        if step == "moved":
            self.epoch = (self.epoch or FIRST_EPOCH) + 1  # the other writer's epoch
            return _Result((False,))
        wanted = params[2] if query.startswith("INSERT") else params[0]
        self.epoch = wanted
        return _Result((True,))


def _fence(session: ScriptedSession, clock: VirtualClock, backoff: Backoff | None = None) -> Fence:
    return Fence(session, "ks", "group", "topic", backoff=backoff or Backoff(0.1, 10.0, 0.0), clock=clock)


def test_the_first_epoch_then_the_next() -> None:
    session, clock = ScriptedSession([]), VirtualClock()
    fence = _fence(session, clock)
    assert fence.take() == FIRST_EPOCH
    assert fence.take() == FIRST_EPOCH + 1


def test_a_conflict_and_a_lost_answer_take_the_next_epoch() -> None:
    session, clock = ScriptedSession(["moved", OperationTimedOut("lost"), Unavailable("down")], epoch=5000), \
        VirtualClock()
    out = advancing(clock, lambda: _fence(session, clock).take(deadline=clock.now() + 60), 0.05)
    assert out == {"value": 5002}  # 5001 went to the other writer; the lost answer's epoch is skipped (harmless)
    assert session.writes == 4


def test_a_permanent_error_is_raised_as_it_is() -> None:
    session, clock = ScriptedSession([InvalidRequest("no such table")]), VirtualClock()
    with pytest.raises(InvalidRequest):
        _fence(session, clock).take()
    assert session.writes == 1


def test_retries_end_at_the_deadline() -> None:
    session, clock = ScriptedSession([Unavailable("down")] * 1000, epoch=5000), VirtualClock()
    started = clock.now()
    out = advancing(clock, lambda: _fence(session, clock).take(deadline=started + 5.0), 0.05)
    error = out["error"]
    assert isinstance(error, RetriesExhaustedError) and isinstance(error.__cause__, Unavailable)
    assert "group/topic" in str(error) and f"after {session.writes} attempts" in str(error)
    assert clock.now() - started <= 5.0 + 0.05


def test_without_a_deadline_retries_end_with_the_backoff() -> None:
    session, clock = ScriptedSession(["moved"] * 1000, epoch=5000), VirtualClock()
    out = advancing(clock, lambda: _fence(session, clock, Backoff(0.1, 1.0, 0.0)).take(), 0.05)
    assert isinstance(out["error"], RetriesExhaustedError)
    assert session.writes == 5  # delays 0.1, 0.2, 0.4, 0.8; the next (1.6, capped at 1.0) is the backoff's end
