"""Your aggregate, defined by the domain alone: ``decide`` and ``evolve`` over your own types.

A :class:`Decider` names the command type, the state type, the event type(s) and the command field that holds
the entity key, and two pure functions (no I/O, no clock, no random ids: a redelivery must decide the same):

* ``decide(state, command)`` -> the events the command causes (a list, one event, or none), or a
  :class:`Reject` with the reason (recorded, acked, never retried);
* ``evolve(state, event)`` -> the next state (``None``: the entity does not exist, or was deleted).

``state`` is ``None`` until an event creates the entity. Everything about storage (tables derived from the
types, fenced or conditional writes, idempotence, rejections, the event log, rebuild) is the framework's:
see :class:`rxcqrs.cassandra.decider_store.DeciderStore`. This module imports no client library.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import typing
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Sequence, TypeVar

from rxcqrs.exceptions import ConfigError

__all__ = ["Decider", "Reject", "Decision"]

C = TypeVar("C")
S = TypeVar("S")
E = TypeVar("E")


@dataclass(frozen=True)
class Reject:
    """``decide``'s answer to a command that is invalid for the state: nothing changes, the reason is recorded."""

    reason: str


#: what ``decide`` returns: the events (a sequence, one event, or ``None`` for none), or a :class:`Reject`
Decision = Any


@dataclass(frozen=True)
class Decider(Generic[C, S, E]):
    """An aggregate type. ``name`` prefixes its tables (``<name>``, ``<name>_event_log``, ...); ``event`` is
    one dataclass or a tuple of them (the log's ``event_type`` column tells them apart); ``key`` is the
    command field holding the entity key (its type is the key column's); ``logged``: see below."""

    name: str
    command: type[C]
    state: type[S]
    event: type[E] | tuple[type, ...]
    key: str
    decide: Callable[[S | None, C], Decision]
    evolve: Callable[[S | None, E], S | None]
    #: the event a command is logged as by the parallel and serial pipelines, whose event-log branch logs
    #: every delivery beside the state write without knowing the state: refused commands are logged too, so
    #: ``evolve`` must leave a state unchanged by an event it would have refused. ``None``: batched only.
    logged: Callable[[C], E] | None = None

    def __post_init__(self) -> None:
        for what, cls in (("command", self.command), ("state", self.state), *(("event", e) for e in self.events)):
            if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
                raise ConfigError(f"Decider {self.name!r}: the {what} type must be a dataclass, got {cls!r}")
        if self.key not in {f.name for f in dataclasses.fields(self.command)}:  # type: ignore[arg-type]
            raise ConfigError(f"Decider {self.name!r}: the key {self.key!r} is not a field of "
                              f"{self.command.__name__}; name the command field that holds the entity key")
        names = [e.__name__ for e in self.events]
        if len(set(names)) != len(names):
            raise ConfigError(f"Decider {self.name!r}: two event types share a name ({names}); the log tells "
                              "events apart by their class name")

    @functools.cached_property
    def events(self) -> tuple[type, ...]:
        """The event types (``event`` as a tuple)."""
        return self.event if isinstance(self.event, tuple) else (self.event,)

    def require_logged(self, mode: str) -> Callable[[C], E]:
        """``logged``; without it, one line saying that ``mode`` needs it."""
        if self.logged is None:
            raise ConfigError(f"Decider {self.name!r} has no logged=...: the {mode} pipeline logs every delivery "
                              "without the state and needs it (the event a command is logged as); or run mode "
                              "'batched'")
        return self.logged

    @functools.cached_property
    def key_of(self) -> Callable[[C], Any]:
        """``key_of(command)``: the entity key of a command (its ``key`` field, read at C speed)."""
        return operator.attrgetter(self.key)

    def decided(self, state: S | None, command: C) -> list[E] | Reject:
        """``decide``'s answer as a list of events or a :class:`Reject`; anything else is a clear error."""
        answer = self.decide(state, command)
        event_types = self.events
        if type(answer) in event_types:  # one event: the common answer
            return [answer]
        if isinstance(answer, Reject):
            return answer
        if answer is None:
            return []
        events = list(answer) if isinstance(answer, (list, tuple)) else [answer]
        for event in events:
            if type(event) not in event_types:
                raise ConfigError(f"Decider {self.name!r}: decide returned {event!r}, which is not one of the event "
                                  f"types {[e.__name__ for e in event_types]}; return events, a list of them, or "
                                  "Reject(reason)")
        return events

    def fold(self, events: Iterable[E], state: S | None = None) -> S | None:
        """``evolve`` over ``events`` from ``state``: the state they lead to."""
        for event in events:
            state = self.evolve(state, event)
        return state

    def run(self, commands: Sequence[C], state: S | None = None) -> S | None:
        """The state after deciding and applying ``commands`` in order (rejected ones change nothing): the
        in-memory reference a test compares the stored state with."""
        for command in commands:
            answer = self.decided(state, command)
            if not isinstance(answer, Reject):
                state = self.fold(answer, state)
        return state


def type_hints(cls: type) -> dict[str, Any]:
    """The resolved field annotations of a dataclass (``Annotated`` kept), in field order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}
