"""The shopping cart: commands, the cart state, its events, and the one function that applies a command.

Commands arrive as Avro ``ShoppingCartCmd`` records (``action``, ``cart_id``, ``owner_or_item``, ``count``).
:func:`apply` is pure and deterministic: the command side, the rebuild from the event log and the in-memory
reference all use it, so they agree by construction. A command that is invalid for the current state is
rejected (a value, not an exception): recorded, acknowledged, never retried forever.

:data:`CARTS` is the cart as a :class:`~rxcqrs.decider.Decider`: an accepted command is logged as one
:class:`CartEvent` naming what it changed, and ``evolve`` applies that event. The parallel and serial pipelines
log every delivery beside the state write (refused commands too, their state unknown to that branch), so
``evolve`` skips an event that its cart refuses, as :func:`apply` would.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from rxcqrs.decider import Decider, Reject
from rxcqrs.exceptions import PoisonRecordError

__all__ = ["ACTIONS", "CARTS", "Command", "Cart", "CartEvent", "Rejected", "apply", "fold", "command_from_record",
           "event_of"]

ACTIONS = ("Insert", "SetOwner", "AddItem", "RemoveItem", "Delete")


@dataclass(frozen=True, slots=True)
class Command:
    action: str
    cart_id: uuid.UUID
    owner_or_item: uuid.UUID
    count: int | None = None

    def to_record(self) -> dict[str, Any]:
        return {"action": self.action, "cart_id": self.cart_id, "owner_or_item": self.owner_or_item,
                "count": self.count}


def command_from_record(record: Mapping[str, Any]) -> Command:
    """Decoded Avro record -> Command. An unknown action is a poison record (dead-letter topic)."""
    action = record["action"]
    if action not in ACTIONS:
        raise PoisonRecordError(f"unknown shopping-cart action {action!r}; expected one of {ACTIONS}")
    return Command(action, record["cart_id"], record["owner_or_item"], record["count"])


@dataclass(frozen=True, slots=True)
class Cart:
    owner: uuid.UUID
    items: Mapping[uuid.UUID, int] = field(default_factory=dict)
    version: int = 0  # Insert creates version 0; every applied command adds 1


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str


def apply(cart: Cart | None, cmd: Command) -> Cart | None | Rejected:
    """The new state (``None``: deleted), or :class:`Rejected` with the reason."""
    if cmd.action == "Insert":
        if cart is not None:
            return Rejected("Insert of a cart that exists")
        return Cart(cmd.owner_or_item, {}, 0)
    if cart is None:
        return Rejected(f"{cmd.action} on a cart that does not exist")
    if cmd.action == "SetOwner":
        return Cart(cmd.owner_or_item, cart.items, cart.version + 1)
    if cmd.action == "Delete":
        return None
    if cmd.count is None or cmd.count < 1:
        return Rejected(f"{cmd.action} needs a count >= 1, got {cmd.count}")
    items = dict(cart.items)
    if cmd.action == "AddItem":
        items[cmd.owner_or_item] = items.get(cmd.owner_or_item, 0) + cmd.count
    else:  # RemoveItem subtracts (dendrites logged it as an addition)
        if cmd.owner_or_item not in items:
            return Rejected("RemoveItem of an item that is not in the cart")
        left = items[cmd.owner_or_item] - cmd.count
        if left > 0:
            items[cmd.owner_or_item] = left
        else:
            del items[cmd.owner_or_item]
    return Cart(cart.owner, items, cart.version + 1)


def fold(commands: Iterable[Command], cart: Cart | None = None) -> Cart | None:
    """Apply commands in order, skipping rejected ones: the state they should produce."""
    for cmd in commands:
        result = apply(cart, cmd)
        if not isinstance(result, Rejected):
            cart = result
    return cart


@dataclass(frozen=True, slots=True)
class CartEvent:
    """An applied command as the event log keeps it: the action and what it names (dendrites dropped the
    action, so a RemoveItem was logged as an addition)."""

    action: str
    owner: uuid.UUID | None = None
    item: uuid.UUID | None = None
    count: int | None = None


def event_of(cmd: Command) -> CartEvent:
    if cmd.action in ("Insert", "SetOwner"):
        return CartEvent(cmd.action, owner=cmd.owner_or_item)
    if cmd.action == "Delete":
        return CartEvent(cmd.action)
    return CartEvent(cmd.action, item=cmd.owner_or_item, count=cmd.count)


_NO_CART = uuid.UUID(int=0)


def decide(cart: Cart | None, cmd: Command) -> CartEvent | Reject:
    result = apply(cart, cmd)
    return Reject(result.reason) if isinstance(result, Rejected) else event_of(cmd)


def evolve(cart: Cart | None, event: CartEvent) -> Cart | None:
    cmd = Command(event.action, _NO_CART, event.owner or event.item or _NO_CART, event.count)
    result = apply(cart, cmd)
    return cart if isinstance(result, Rejected) else result


CARTS = Decider("shopping_cart", command=Command, state=Cart, event=CartEvent, key="cart_id", decide=decide,
                evolve=evolve, logged=event_of)
