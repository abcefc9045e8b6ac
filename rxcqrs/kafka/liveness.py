"""Liveness of a source's consumer: calls that hang, polls that starve, an assignment that never comes.

The poll thread makes every call to its consumer client through :class:`WatchedCalls`. A :class:`Watchdog`
thread of its own looks at the call in progress; once one has run longer than ``stuck_timeout`` it
interrupts the client (the one thing another thread may do to it, see :mod:`rxcqrs.kafka`), and the call,
or the next one, raises :class:`ReplaceConsumer` on the poll thread. :class:`AssignmentCheck` needs no
thread: the poll loop asks it whether polls have returned nothing for ``stuck_timeout`` although records
wait to be fetched, or no partition came in ``assignment_timeout`` although the group has room for this
member. Either way the source closes the consumer and starts a new one in the same group.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rxcqrs.clock import SYSTEM, Clock
from rxcqrs.kafka.client import ConsumerClient
from rxcqrs.kafka.settings import SourceSettings
from rxcqrs.messages import TopicPartition

__all__ = ["Watchdog", "WatchedCalls", "AssignmentCheck", "ReplaceConsumer"]

log = logging.getLogger(__name__)


class ReplaceConsumer(Exception):
    """The current consumer must be replaced (stuck, starving or never assigned); the message says why."""


class Watchdog:
    """Calls ``on_stuck(what, seconds)`` once per announced call that runs longer than ``stuck_timeout``."""

    def __init__(self, name: str, stuck_timeout: float, on_stuck: Callable[[str, float], None],
                 clock: Clock = SYSTEM) -> None:
        self.stuck_timeout = stuck_timeout
        self._on_stuck = on_stuck
        self._clock = clock
        self._lock = threading.Lock()
        self._call: tuple[str, float, int] | None = None  # what, since, serial number
        self._serial = 0
        self._fired = -1
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"rxcqrs-watchdog-{name}", daemon=True)
        self._thread.start()

    @contextmanager
    def call(self, what: str) -> Iterator[None]:
        """Wrap one client call of the poll thread."""
        with self._lock:
            self._serial += 1
            self._call = (what, self._clock.now(), self._serial)
        try:
            yield
        finally:
            with self._lock:
                self._call = None

    def _watch(self) -> None:
        period = min(1.0, self.stuck_timeout / 4)
        while not self._clock.wait(self._stopped, period):
            with self._lock:
                current = self._call
                if current is None or current[2] == self._fired:
                    continue
                what, since, serial = current
                elapsed = self._clock.now() - since
                if elapsed < self.stuck_timeout:
                    continue
                self._fired = serial
            self._on_stuck(what, elapsed)

    def stop(self) -> None:
        self._stopped.set()


class WatchedCalls:
    """The poll thread's calls to its current client, each watched; a hung one is interrupted."""

    def __init__(self, name: str, stuck_timeout: float, clock: Clock = SYSTEM) -> None:
        self.name = name
        self.client: ConsumerClient | None = None
        self._stuck: str | None = None
        self._watchdog = Watchdog(name, stuck_timeout, self._on_stuck, clock)

    def use(self, client: ConsumerClient) -> None:
        """Watch calls to ``client`` (a new consumer: nothing is stuck)."""
        self.client = client
        self._stuck = None

    @property
    def stuck(self) -> bool:
        return self._stuck is not None

    def check(self) -> None:
        """Raise :class:`ReplaceConsumer` if a call was found hanging."""
        if self._stuck is not None:
            raise ReplaceConsumer(self._stuck)

    def __call__(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._watchdog.call(what):
            try:
                return fn(*args, **kwargs)
            except Exception:
                self.check()
                raise

    def _on_stuck(self, what: str, seconds: float) -> None:
        """The watchdog's thread: a call hangs. Break it; the poll thread replaces the consumer."""
        self._stuck = f"the consumer's {what}() has not returned for {seconds:.0f}s"
        client = self.client
        log.warning("%s: %s; interrupting it", self.name, self._stuck)
        if client is not None:
            try:
                client.interrupt()
            except Exception as exc:
                log.warning("%s: interrupting the consumer failed: %r", self.name, exc)

    def stop(self) -> None:
        self._watchdog.stop()


class AssignmentCheck:
    """Starving polls and a missing assignment (poll thread only)."""

    def __init__(self, name: str, settings: SourceSettings, clock: Clock = SYSTEM) -> None:
        self.name = name
        self.settings = settings
        self._clock = clock
        self._subscribed_at = 0.0
        self._starving_since: float | None = None  # polls return nothing although records wait to be fetched

    def subscribed(self) -> None:
        """A (new) consumer subscribed: its assignment may take ``assignment_timeout``."""
        self._subscribed_at = self._clock.now()
        self._starving_since = None

    def polled(self, fetched: bool, records_wait: bool) -> None:
        """A poll window fetched something, or nothing although ``records_wait`` to be fetched."""
        if fetched:
            self._starving_since = None
        elif records_wait and self._starving_since is None:
            self._starving_since = self._clock.now()

    def check(self, client: ConsumerClient, calls: WatchedCalls, assigned: bool, partitions: int,
              unfetched: dict[TopicPartition, int]) -> None:
        """Raise :class:`ReplaceConsumer` when polls starve for ``stuck_timeout`` while ``unfetched`` records
        wait, or when nothing is ``assigned`` after ``assignment_timeout`` although the topic's
        ``partitions`` outnumber the group's members."""
        now = self._clock.now()
        if not any(unfetched.values()):
            self._starving_since = None
        if self._starving_since is not None and now - self._starving_since >= self.settings.stuck_timeout:
            waiting = {f"{tp.topic}/{tp.partition}": n for tp, n in sorted(unfetched.items()) if n}
            raise ReplaceConsumer(f"polls returned nothing for {now - self._starving_since:.0f}s although records "
                                  f"wait to be fetched ({waiting})")
        if assigned or now - self._subscribed_at < self.settings.assignment_timeout:
            return
        members = self._group_size(client, calls)
        if members is not None and members >= partitions:
            self._subscribed_at = now  # a full group: an idle member is right; look again later
            return
        known = members if members is not None else "unknown"
        raise ReplaceConsumer(f"no partition assigned after {self.settings.assignment_timeout:g}s although the topic "
                              f"has {partitions} partitions and the group {known} members")

    def _group_size(self, client: ConsumerClient, calls: WatchedCalls) -> int | None:
        try:
            size = calls("group_size", client.group_size, 5.0)
            return None if size is None else int(size)
        except ReplaceConsumer:
            raise
        except Exception as exc:
            log.info("%s: could not describe the group: %r", self.name, exc)
            return None
