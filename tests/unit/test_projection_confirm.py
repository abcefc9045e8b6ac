"""A projection uses a new epoch only once the group confirms the member's ownership: a refusal fails at once,
an unknown answer is asked again within ``fence_timeout`` (on a virtual clock)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pytest

from rxcqrs.backoff import Backoff
from rxcqrs.cassandra.projection import ProjectionSink
from rxcqrs.exceptions import StageError
from rxcqrs.messages import TopicPartition
from rxcqrs.testing import VirtualClock
from tests.helpers import advancing

TP = TopicPartition("stream", 0)


class Answers:
    """A source answering ``confirm_ownership`` from a script (``"silent"``: never answers)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.asked = 0

    def confirm_ownership(self, tps: list[TopicPartition], answered: Callable[[bool | None], None]) -> None:
        self.asked += 1
        answer = self.answers.pop(0) if self.answers else None
        if answer != "silent":
            answered(answer)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def sink(clock: VirtualClock) -> Iterator[ProjectionSink]:
    projection = SimpleNamespace(name="totals", totals_views=[])
    made = ProjectionSink(projection, group="g", fence_timeout=30.0, backoff=Backoff(0.5, 10.0, 0.0),  # type: ignore[arg-type]
                          clock=clock)
    yield made
    made.close()


def _confirm(sink: ProjectionSink, clock: VirtualClock, source: Answers) -> dict[str, Any]:
    sink._source = source

    def confirm() -> bool:
        sink._confirm(TP)
        return True

    out = advancing(clock, confirm, 0.25)
    return {"confirmed": True} if out.get("value") else out


def test_a_confirmed_ownership_is_used(sink: ProjectionSink, clock: VirtualClock) -> None:
    source = Answers(True)
    assert _confirm(sink, clock, source) == {"confirmed": True}
    assert source.asked == 1


def test_a_refusal_fails_at_once(sink: ProjectionSink, clock: VirtualClock) -> None:
    source = Answers(False, True)
    out = _confirm(sink, clock, source)
    assert isinstance(out["error"], StageError) and "did not confirm" in str(out["error"])
    assert source.asked == 1


def test_an_unknown_answer_is_asked_again(sink: ProjectionSink, clock: VirtualClock) -> None:
    source = Answers(None, None, True)
    assert _confirm(sink, clock, source) == {"confirmed": True}
    assert source.asked == 3


def test_unknown_answers_end_at_the_fence_timeout(sink: ProjectionSink, clock: VirtualClock) -> None:
    source = Answers(*[None] * 100)
    started = clock.now()
    out = _confirm(sink, clock, source)
    assert isinstance(out["error"], StageError)
    assert clock.now() - started <= 30.0 + 0.25 and source.asked == 6  # after 0.5, 1, 2, 4, 8 s; 16 more pass 30


def test_a_silent_group_is_waited_for_until_the_fence_timeout(sink: ProjectionSink, clock: VirtualClock) -> None:
    source = Answers("silent")
    started = clock.now()
    out = _confirm(sink, clock, source)
    assert isinstance(out["error"], StageError)
    assert 30.0 <= clock.now() - started <= 30.0 + 0.25
