"""The timers of a clock: delayed calls run once the clock passed them, and the registry keeps no clock alive."""

from __future__ import annotations

import gc
import threading
import weakref

from rxcqrs.testing import VirtualClock
from rxcqrs.testing.wait import wait_until
from rxcqrs.timers import timers


def test_a_call_runs_once_its_clock_passed_its_delay() -> None:
    clock = VirtualClock()
    ran = threading.Event()
    timers(clock).call_later(30.0, ran.set)
    clock.advance(29.0)
    assert not ran.wait(0.05)
    clock.advance(1.0)
    assert ran.wait(5)


def test_one_timers_per_clock() -> None:
    clock = VirtualClock()
    assert timers(clock) is timers(clock)
    assert timers(clock) is not timers(VirtualClock())


def test_a_clock_nothing_refers_to_goes_with_its_timers() -> None:
    clock = VirtualClock()
    ran = threading.Event()
    timers(clock).call_later(1.0, ran.set)
    clock.advance(1.0)
    assert ran.wait(5)
    gone = weakref.ref(clock)
    del clock
    wait_until(lambda: gc.collect() >= 0 and gone() is None, timeout=5, what="the clock to be collected")


class _SlottedClock:
    __slots__ = ("inner",)

    def __init__(self) -> None:
        self.inner = VirtualClock()

    def now(self) -> float:
        return self.inner.now()

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        return self.inner.wait(event, timeout)


def test_a_clock_that_cannot_be_referred_to_weakly_still_has_timers() -> None:
    clock = _SlottedClock()
    ran = threading.Event()
    assert timers(clock) is timers(clock)
    timers(clock).call_later(2.0, ran.set)
    clock.inner.advance(2.0)
    assert ran.wait(5)
