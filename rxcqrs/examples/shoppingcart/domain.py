"""The shopping cart: commands, the cart, its events, and :data:`CARTS`, the cart as a Decider.

Commands arrive as Avro ``ShoppingCartCmd`` records (:mod:`~rxcqrs.examples.shoppingcart.codec`).
:func:`refusal` and :func:`changed` are pure and deterministic; ``decide``, ``evolve`` and the in-memory
reference (:func:`apply`, :func:`fold`) are made of them, so they agree by construction. A refused command
is a value, not an exception: recorded, acknowledged, never retried. An accepted command is logged as one
:class:`CartEvent`; ``evolve`` skips an event its cart refuses (the parallel and serial pipelines log every
delivery, refused ones too).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from rxcqrs.decider import Decider, Reject

__all__ = ["ACTIONS", "CARTS", "Command", "Cart", "CartEvent", "Rejected", "apply", "changed", "event_of", "fold",
           "refusal"]

ACTIONS = ("Insert", "SetOwner", "AddItem", "RemoveItem", "Delete")


@dataclass(frozen=True, slots=True)
class Command:
    action: str
    cart_id: uuid.UUID
    owner_or_item: uuid.UUID
    count: int | None = None


@dataclass(frozen=True, slots=True)
class Cart:
    owner: uuid.UUID
    items: Mapping[uuid.UUID, int] = field(default_factory=dict)
    version: int = 0  # Insert creates version 0; every applied command adds 1


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str


def refusal(cart: Cart | None, action: str, target: uuid.UUID, count: int | None) -> str | None:
    """Why ``action`` (on ``target``, an owner or an item) is refused for ``cart``; ``None``: it is accepted."""
    if action == "Insert":
        return "Insert of a cart that exists" if cart is not None else None
    if cart is None:
        return f"{action} on a cart that does not exist"
    if action in ("SetOwner", "Delete"):
        return None
    if count is None or count < 1:
        return f"{action} needs a count >= 1, got {count}"
    if action == "RemoveItem" and target not in cart.items:
        return "RemoveItem of an item that is not in the cart"
    return None


def changed(cart: Cart | None, action: str, target: uuid.UUID, count: int | None) -> Cart | None:
    """The cart after an accepted ``action`` (``None``: deleted)."""
    if action == "Insert":
        return Cart(target, {}, 0)
    assert cart is not None
    if action == "SetOwner":
        return Cart(target, cart.items, cart.version + 1)
    if action == "Delete":
        return None
    items = dict(cart.items)
    if action == "AddItem":
        items[target] = items.get(target, 0) + (count or 0)
    else:  # RemoveItem subtracts
        left = items[target] - (count or 0)
        if left > 0:
            items[target] = left
        else:
            del items[target]
    return Cart(cart.owner, items, cart.version + 1)


def apply(cart: Cart | None, cmd: Command) -> Cart | None | Rejected:
    """The new state (``None``: deleted), or :class:`Rejected` with the reason."""
    reason = refusal(cart, cmd.action, cmd.owner_or_item, cmd.count)
    return Rejected(reason) if reason else changed(cart, cmd.action, cmd.owner_or_item, cmd.count)


def fold(commands: Iterable[Command], cart: Cart | None = None) -> Cart | None:
    """Apply commands in order, skipping rejected ones: the state they should produce."""
    for cmd in commands:
        result = apply(cart, cmd)
        if not isinstance(result, Rejected):
            cart = result
    return cart


@dataclass(frozen=True, slots=True)
class CartEvent:
    """An applied command as the event log keeps it: the action and what it names (with the action, a
    RemoveItem is never read back as an addition)."""

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


def decide(cart: Cart | None, cmd: Command) -> CartEvent | Reject:
    reason = refusal(cart, cmd.action, cmd.owner_or_item, cmd.count)
    return Reject(reason) if reason else event_of(cmd)


def evolve(cart: Cart | None, event: CartEvent) -> Cart | None:
    target = event.owner or event.item or _NOBODY  # a deletion names nothing
    if refusal(cart, event.action, target, event.count):
        return cart  # a refused command's event (the broadcast pipelines log every delivery)
    return changed(cart, event.action, target, event.count)


_NOBODY = uuid.UUID(int=0)


CARTS = Decider("shopping_cart", command=Command, state=Cart, event=CartEvent, key="cart_id", decide=decide,
                evolve=evolve, logged=event_of)
