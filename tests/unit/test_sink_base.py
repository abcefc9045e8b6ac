"""SinkBase in-flight accounting: counted under a plain lock, idleness waited for without a lost wake-up."""

from __future__ import annotations

import threading
from typing import Any

from rxcqrs.sink import SinkBase


class _Sink(SinkBase):
    def on_next(self, value: Any) -> None:
        self._begin()


def _round(sink: _Sink) -> list[bool]:
    for _ in range(400):
        sink._begin()
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(sink.wait_idle(10.0)))
    waiter.start()
    enders = [threading.Thread(target=lambda: [sink._end() for _ in range(100)]) for _ in range(4)]
    for t in enders:
        t.start()
    for t in enders:
        t.join()
    waiter.join(15.0)
    return woke


def test_a_waiter_wakes_when_the_last_request_ends_on_another_thread() -> None:
    for _ in range(50):
        sink = _Sink()
        assert _round(sink) == [True] and sink.in_flight == 0


def test_wait_idle_times_out_while_a_request_is_in_flight() -> None:
    sink = _Sink()
    sink.on_next(1)
    assert sink.wait_idle(0.05) is False
    assert sink.in_flight == 1
    sink._end()
    assert sink.wait_idle(0.05) is True
