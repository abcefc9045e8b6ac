"""Tickets: how a record's fate travels back from the stages to the commit gate.

Every envelope carries a :class:`Ticket`. A stage settles it once, with ``ack()`` (done) or
``nack(error)`` (failed after the stage's own retries), possibly later and from another thread. A broadcast
splits a ticket into one child per branch: the parent is acked when every child is, and nacked by the first
child nack. Settling twice is ignored, so a late duplicate callback can never double-count.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol

__all__ = ["Ticket", "GateTicket", "Settle", "Gate"]

#: called once with ``None`` (ack) or the error (nack)
Settle = Callable[[BaseException | None], None]

_ONCE = threading.Lock()


class Gate(Protocol):
    """What a :class:`GateTicket` needs of its commit gate (:class:`~rxcqrs.commit.CommitGate`)."""

    def settle(self, tp: Any, epoch: int, offset: int, error: BaseException | None) -> bool: ...

    def is_current(self, tp: Any, epoch: int) -> bool: ...


def _ignore(_error: BaseException | None) -> None:
    return None


class Ticket:
    """A settle-once handle for one record (or one branch's share of it)."""

    __slots__ = ("_settle", "_settled", "count")

    def __init__(self, settle: Settle = _ignore, count: Callable[[str, int], None] | None = None) -> None:
        self._settle = settle
        self._settled = False
        #: where stages report per-record metrics (retries, dead-lettered, ...) for the flow that emitted it
        self.count: Callable[[str, int], None] = count or (lambda _name, _n: None)

    @classmethod
    def untracked(cls) -> "Ticket":
        """A ticket nobody waits for (records that did not come from a gated source)."""
        return cls()

    @property
    def settled(self) -> bool:
        return self._settled

    def _claim(self) -> bool:
        with _ONCE:
            if self._settled:
                return False
            self._settled = True
            return True

    def ack(self) -> None:
        if self._claim():
            self._settle(None)

    def nack(self, error: BaseException) -> None:
        if self._claim():
            self._settle(error)

    def live(self) -> bool:
        """Whether the record still belongs to its source's current assignment of its partition (False once
        the partition was revoked or rewound: the record will be delivered again, and a stage that keeps
        per-assignment state must not act on it)."""
        return True

    def split(self, n: int) -> list["Ticket"]:
        """``n`` child tickets that jointly settle this one."""
        if n < 1:
            raise ValueError("split needs at least one branch")
        if n == 1:
            return [self]
        join = _Join(self, n)
        return [_ChildTicket(join) for _ in range(n)]


class _Join:
    __slots__ = ("parent", "_remaining", "_lock")

    def __init__(self, parent: Ticket, n: int) -> None:
        self.parent = parent
        self._remaining = n
        self._lock = threading.Lock()

    def child_settled(self, error: BaseException | None) -> None:
        if error is not None:
            self.parent.nack(error)
            return
        with self._lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self.parent.ack()


class _ChildTicket(Ticket):
    """One branch's share of a ticket: live as long as the ticket it was split from."""

    __slots__ = ("_join",)

    def __init__(self, join: _Join) -> None:
        super().__init__(join.child_settled, join.parent.count)
        self._join = join

    def live(self) -> bool:
        return self._join.parent.live()


class GateTicket(Ticket):
    """The ticket a source hands out: it settles one offset in its commit gate. A second settle is ignored by
    the gate itself (its offset is no longer pending), so no lock is taken here: this is on every record's
    path."""

    __slots__ = ("_gate", "_tp", "_epoch", "_offset")

    def __init__(self, gate: Gate, tp: Any, epoch: int, offset: int, count: Callable[[str, int], None]) -> None:
        self._settled = False
        self.count = count
        self._gate = gate
        self._tp, self._epoch, self._offset = tp, epoch, offset

    def ack(self) -> None:
        if not self._settled:
            self._settled = True
            self._gate.settle(self._tp, self._epoch, self._offset, None)

    def nack(self, error: BaseException) -> None:
        if not self._settled:
            self._settled = True
            self._gate.settle(self._tp, self._epoch, self._offset, error)

    def live(self) -> bool:
        return self._gate.is_current(self._tp, self._epoch)


class TracedGateTicket(GateTicket):
    """A :class:`GateTicket` of a traced record (:mod:`rxcqrs.tracing`): a nack marks the record's span."""

    __slots__ = ()

    def nack(self, error: BaseException) -> None:
        if not self._settled:
            from rxcqrs import tracing

            tracing.nacked(self._tp, self._offset, error)
        super().nack(error)
