"""The command engine's publisher (an aggregate's event stream): what a batch decided is published before any
of its writes, the batch is acked only once the publish is done, and a publish that fails fails the batch
with nothing written."""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest

from rxcqrs.backoff import Backoff
from rxcqrs.cassandra.aggregate import AggregateSink, Applied, Rejection
from rxcqrs.exceptions import DeliveryError, PermanentStageError
from rxcqrs.messages import RecordMetadata
from rxcqrs.testing.fake_cassandra import MemoryFences
from tests.counters import Counters, envelopes, fold
from tests.helpers import wait_until

PROTOCOLS = ["fenced", "conditional"]


class Publishing(Counters):
    """The test aggregate, publishing ``("published", entity, offset)`` for every accepted command."""

    def decide(self, state: int | None, command: Any, meta: RecordMetadata) -> Applied[int] | Rejection:
        decided = super().decide(state, command, meta)
        if isinstance(decided, Rejection):
            return decided
        return Applied(decided.state, decided.records, [("published", command[0], meta.offset)])


class HeldPublisher:
    """Records what it is given and answers when the test says so (``answer``), with ``error`` if set."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.lock = threading.Lock()
        self.waiting: list[tuple[list[Any], Callable[[BaseException | None], None]]] = []
        self.published: list[Any] = []
        self.writes_before: list[int] = []  # state writes executed when each publish came
        self.closed: list[bool] = []

    def publish(self, records: list[Any], done: Callable[[BaseException | None], None]) -> None:
        with self.lock:
            self.writes_before.append(self.counters.executed.count("write") + self.counters.executed.count("update"))
            self.waiting.append((records, done))

    def answer(self, error: BaseException | None = None) -> int:
        with self.lock:
            waiting, self.waiting = self.waiting, []
        for records, done in waiting:
            if error is None:
                self.published += records
            done(error)
        return len(waiting)

    def close(self, failed: bool) -> None:
        self.closed.append(failed)


def engine(counters: Counters, publisher: HeldPublisher, protocol: str) -> AggregateSink[Any, Any, Any]:
    return AggregateSink(counters.session(), counters, write_protocol=protocol,  # type: ignore[arg-type]
                         fences=MemoryFences(), group="g", backoff=Backoff(0.001, 0.05, 0.0), linger=0.01,
                         publisher=publisher)


COMMANDS = [(f"e{i % 4}", -1 if i % 6 == 5 else i) for i in range(40)]


def started(protocol: str, commands: list[tuple[str, int]]
            ) -> tuple[Publishing, HeldPublisher, AggregateSink[Any, Any, Any], dict[Any, Any]]:
    """An engine with a held publisher, fed ``commands``: the aggregate, the publisher, the sink, the fates."""
    counters = Publishing()
    publisher = HeldPublisher(counters)
    sink = engine(counters, publisher, protocol)
    results: dict[Any, Any] = {}
    for env in envelopes(commands, results=results):
        sink.on_next(env)
    return counters, publisher, sink, results


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_events_are_published_before_any_write_and_gate_the_acks(protocol: str) -> None:
    counters, publisher, sink, results = started(protocol, COMMANDS)
    wait_until(lambda: publisher.waiting and sink.quiet(), 10, "the first publishes waiting")
    assert not results, "a record was acked before its events were published"
    assert counters.executed.count("write") + counters.executed.count("update") == 0, "written before publishing"
    while len(results) < len(COMMANDS):
        publisher.answer()
        wait_until(lambda: publisher.waiting or len(results) == len(COMMANDS), 10, "the next batches")
    sink.on_completed()
    assert all(error is None for error in results.values())
    assert {e: counters.state(e) for e in fold(COMMANDS)} == fold(COMMANDS)
    accepted = [("published", env.value[0], env.meta.offset) for env in envelopes(COMMANDS) if env.value[1] >= 0]
    assert sorted(publisher.published) == sorted(accepted)  # every accepted command's, once (no fault here)
    assert publisher.writes_before[0] == 0 and publisher.closed == [False]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_publish_that_fails_fails_its_batch_with_nothing_written(protocol: str) -> None:
    counters, publisher, sink, results = started(protocol, [("e", 1), ("e", 2)])
    wait_until(lambda: publisher.waiting, 10, "the publish")
    publisher.answer(DeliveryError("sending to t.events failed with a non-retriable error"))
    wait_until(lambda: len(results) == 2, 10, "the records settled")
    sink.on_completed()
    assert all(isinstance(error, PermanentStageError) and "t.events" in str(error) for error in results.values())
    assert counters.state("e") is None and not counters.logged and publisher.published == []
