"""Supervision: a failed flow restarts from its last commit; permanent errors and too many failures stop it."""

from __future__ import annotations

import pytest

from rxcqrs import run
from rxcqrs.backoff import Backoff
from rxcqrs.exceptions import ConfigError, FlowError
from rxcqrs.messages import TopicPartition
from rxcqrs.supervisor import supervise
from rxcqrs.testing import FakeBroker
from tests.helpers import Collect, fake_source, wait_until

FAST = Backoff(0.01, 1.0, 0.0)


def fill(broker: FakeBroker, n: int) -> None:
    broker.create_topic("t", 1)
    for i in range(n):
        broker.append("t", str(i).encode(), partition=0)


def test_a_failed_flow_restarts_from_the_last_commit_and_finishes_the_work() -> None:
    broker = FakeBroker()
    fill(broker, 20)
    failures = {"left": 2}
    seen: list[int] = []

    def fail(env):  # type: ignore[no-untyped-def]
        seen.append(env.meta.offset)
        if env.meta.offset == 7 and failures["left"]:
            failures["left"] -= 1
            return RuntimeError("service down")
        return None

    supervisor = supervise(lambda: run(fake_source(broker, "t"), Collect(fail=fail)), backoff=FAST)
    wait_until(lambda: broker.committed["g"].get(TopicPartition("t", 0)) == 20, what="everything committed")
    supervisor.stop()
    assert supervisor.wait(10)
    assert supervisor.restarts == 2 and len(supervisor.failures) == 2
    assert seen.count(7) == 3 and sorted(set(seen)) == list(range(20))
    assert seen.count(6) == 1  # committed before the failure: not redone after the restart


def test_too_many_failures_within_the_window_give_up() -> None:
    broker = FakeBroker()
    fill(broker, 3)
    supervisor = supervise(lambda: run(fake_source(broker, "t"), Collect(fail=lambda env: RuntimeError("down"))),
                           max_restarts=2, within=60, backoff=FAST)
    with pytest.raises(FlowError):
        supervisor.wait(20)
    assert supervisor.restarts == 2 and len(supervisor.failures) == 3


def test_a_permanent_error_is_not_restarted() -> None:
    def start():  # type: ignore[no-untyped-def]
        raise ConfigError("no such keyspace name")

    supervisor = supervise(start, backoff=FAST)
    with pytest.raises(ConfigError):
        supervisor.wait(10)
    assert supervisor.restarts == 0
