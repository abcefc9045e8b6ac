"""Shared test helpers: wait on conditions (never sleep for a fixed time), build sources over the fakes."""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable, Sequence

from reactivex import Observable
from reactivex import operators as ops

from rxcqrs.clock import SYSTEM, Clock
from rxcqrs.kafka import ConsumerSettings, KafkaSource, SourceSettings
from rxcqrs.messages import Envelope
from rxcqrs.operators import batch_aware
from rxcqrs.testing import FakeBroker, fake_consumers, wait_until

__all__ = ["Collect", "fake_source", "free_port_run", "free_ports", "freeze_while_taken_over", "wait_until"]


def free_ports(n: int, hosts: Sequence[str] = ("127.0.0.1",)) -> list[int]:
    """``n`` ports nobody listens on now on any of ``hosts`` (for a private server instance or cluster)."""
    from rxcqrs.services.process import port_is_free

    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        if port not in ports and all(port_is_free(host, port) for host in hosts[1:]):
            ports.append(port)
    return ports


def free_port_run(length: int, hosts: Sequence[str] = ("127.0.0.1",), avoid: Sequence[int] = ()) -> int:
    """The first of ``length`` consecutive ports free on every host (a cluster's per-node JMX ports)."""
    from rxcqrs.services.process import port_is_free

    while True:
        base = free_ports(1, hosts)[0]
        run = range(base, base + length)
        if base + length <= 65535 and not set(run) & set(avoid) and all(
                port_is_free(host, port) for port in run for host in hosts):
            return base


def filled_broker(partitions: int = 2, per_partition: int = 20, topic: str = "t") -> FakeBroker:
    """A fake broker whose ``topic`` holds ``per_partition`` records ``b"<p>-<i>"`` in each partition."""
    broker = FakeBroker()
    broker.create_topic(topic, partitions)
    for p in range(partitions):
        for i in range(per_partition):
            broker.append(topic, f"{p}-{i}".encode(), partition=p)
    return broker


def fake_source(broker: FakeBroker, topic: str | list[str], group: str = "g", demand: str = "auto",
                clock: Clock = SYSTEM, **settings: Any) -> KafkaSource:
    defaults: dict[str, Any] = {"poll_timeout": 0.01, "keepalive_interval": 0.05, "commit_interval": 0.05}
    defaults.update(settings)
    return KafkaSource(topic, ConsumerSettings(group_id=group, max_poll_records=defaults.pop("max_poll_records", 500)),
                       SourceSettings(**defaults), demand=demand,  # type: ignore[arg-type]
                       client_factory=fake_consumers(broker), clock=clock)


class Collect:
    """A sink that records envelopes and acks them (or holds them when ``hold``)."""

    def __init__(self, hold: bool = False, fail: Callable[[Envelope[Any]], BaseException | None] | None = None):
        self.items: list[Envelope[Any]] = []
        self.hold = hold
        self.fail = fail
        self.errors: list[BaseException] = []
        self.completed = threading.Event()
        self._lock = threading.Lock()

    def on_next(self, env: Envelope[Any]) -> None:
        with self._lock:
            self.items.append(env)
        error = self.fail(env) if self.fail else None
        if error is not None:
            env.nack(error)
        elif not self.hold:
            env.ack()

    def on_error(self, error: BaseException) -> None:
        self.errors.append(error)
        self.completed.set()

    def on_completed(self) -> None:
        self.completed.set()

    def offsets(self, partition: int | None = None) -> list[int]:
        with self._lock:
            return [e.meta.offset for e in self.items if partition is None or e.meta.partition == partition]

    def values(self) -> list[Any]:
        with self._lock:
            return [e.value for e in self.items]


def tap_batches(seen: list[Any]) -> Callable[[Observable[Any]], Observable[Any]]:
    """An operator that takes batches and records every item that passes it (a batch stays whole)."""
    return batch_aware(ops.do_action(seen.append))


def freeze_while_taken_over(zombie: Any, other: Any, position: Callable[[], dict[int, int | None]],
                            moved_past: Callable[[dict[int, int | None]], bool]) -> None:
    """The zombie scenario: SIGSTOP ``zombie`` (a process) past its session timeout, wait until ``other``
    progressed past ``position()`` (``moved_past``: on every partition), then SIGCONT it."""
    import os
    import signal

    os.kill(zombie.pid, signal.SIGSTOP)
    try:
        threading.Event().wait(ConsumerSettings(group_id="x").session_timeout_ms / 1000 + 2)  # past the timeout
        taken_over = position()
        wait_until(lambda: moved_past(taken_over) or other.poll() is not None, 300,
                   "the other member progressing on every partition")
        assert other.poll() is None, other.stderr.read() if other.stderr else ""
    finally:
        os.kill(zombie.pid, signal.SIGCONT)


def advancing(clock: Any, work: Callable[[], Any], step: float) -> dict[str, Any]:
    """Run ``work`` on a thread while the time of ``clock`` (a VirtualClock) moves ``step`` at a time until it
    ends: ``{"value": its result}`` or ``{"error": what it raised}``."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = work()
        except Exception as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    clock.advance_until(lambda: not thread.is_alive(), step=step)
    thread.join(5)
    return out
