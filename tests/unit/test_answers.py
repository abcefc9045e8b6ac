"""on_answer: once a request is answered, the driver's future keeps nothing of what its callbacks hold."""

from __future__ import annotations

import gc
import uuid
import weakref
from typing import Any, Callable

from cassandra.query import BatchStatement, SimpleStatement

from rxcqrs.cassandra.answers import on_answer


class Future:
    """The part of a driver ``ResponseFuture`` that on_answer uses; like the driver's, it keeps its callbacks."""

    def __init__(self) -> None:
        self.callbacks: list[tuple[Callable[[Any], None], Callable[[BaseException], None]]] = []

    def add_callbacks(self, done: Callable[[Any], None], failed: Callable[[BaseException], None]) -> None:
        self.callbacks.append((done, failed))

    def answer(self, rows: Any = None, error: BaseException | None = None) -> None:
        for done, failed in self.callbacks:
            failed(error) if error is not None else done(rows)


class Held:
    """What an engine's callback holds (its batch, records, statements)."""


def _callbacks(seen: list[Any]) -> tuple[weakref.ref[Held], Callable[[Any], None], Callable[[BaseException], None]]:
    held = Held()
    return weakref.ref(held), lambda rows: seen.append((held, rows)), lambda error: seen.append((held, error))


def test_once_answered_the_future_keeps_nothing_the_callbacks_held() -> None:
    for error in (None, TimeoutError("no answer")):
        seen: list[Any] = []
        future = Future()
        ref, done, failed = _callbacks(seen)
        on_answer(future, done, failed)
        del done, failed
        gc.collect()
        assert ref() is not None  # before the answer: kept, the callback will need it
        future.answer(rows=["row"], error=error)
        assert seen[0][1] == (error or ["row"])
        seen.clear()
        gc.collect()
        assert ref() is None, "the future still holds the callbacks' objects"
        future.answer(rows=["again"])  # a second call (the driver never makes one) runs nothing
        assert seen == []


def test_a_batch_request_made_for_one_send_is_emptied_once_answered() -> None:
    request = BatchStatement()
    request.add(SimpleStatement("INSERT INTO ks.t (k) VALUES (%s)"), (uuid.uuid4(),))
    future = Future()
    on_answer(future, lambda rows: None, lambda error: None, batch=request)
    assert len(request) == 1
    future.answer(rows=[])
    assert len(request) == 0
