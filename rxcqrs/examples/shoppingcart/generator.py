"""A reproducible shopping-cart command stream (same seed, same commands) and its in-memory reference state.

Producers choose the partition from the cart id (same cart, same partition), because the Kafka key is the
event id, not the cart: per-cart order then holds on any number of partitions. A producer in another
language does the same: ``partition = cart_id_as_128_bit_integer % partitions``.
"""

from __future__ import annotations

import random
import uuid
from typing import Iterable

from rxcqrs.examples.shoppingcart.domain import Cart, Command, fold

__all__ = ["generate", "reference", "partition_for", "dendrites_scenario"]


def partition_for(cart_id: uuid.UUID, partitions: int) -> int:
    return cart_id.int % partitions


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def generate(carts: int, commands: int, seed: int = 42) -> list[Command]:
    """``commands`` commands over ``carts`` carts: each cart starts with an Insert, then a mix of AddItem,
    RemoveItem, SetOwner, the odd Delete (and re-Insert) and a few invalid commands that get rejected."""
    rng = random.Random(seed)
    ids = [_uuid(rng) for _ in range(carts)]
    items = {cid: [_uuid(rng) for _ in range(4)] for cid in ids}
    owners = [_uuid(rng) for _ in range(max(3, carts // 4))]
    state: dict[uuid.UUID, Cart | None] = {cid: None for cid in ids}
    out: list[Command] = []
    while len(out) < commands:
        cid = ids[len(out)] if len(out) < carts else rng.choice(ids)
        cart = state[cid]
        roll = rng.random()
        if cart is None:
            cmd = Command("Insert", cid, rng.choice(owners)) if roll > 0.02 else Command("AddItem", cid,
                                                                                          items[cid][0], 1)
        elif roll < 0.45:
            cmd = Command("AddItem", cid, rng.choice(items[cid]), rng.randint(1, 3))
        elif roll < 0.72:
            present = [i for i in items[cid] if i in cart.items]
            target = rng.choice(present) if present and roll > 0.46 else rng.choice(items[cid])
            cmd = Command("RemoveItem", cid, target, rng.randint(1, 2))
        elif roll < 0.95:
            cmd = Command("SetOwner", cid, rng.choice(owners))
        elif roll < 0.97:
            cmd = Command("Delete", cid, uuid.UUID(int=0))
        else:
            cmd = Command("Insert", cid, rng.choice(owners))  # rejected: the cart exists
        out.append(cmd)
        state[cid] = fold([cmd], cart)
    return out


def reference(commands: Iterable[Command]) -> dict[uuid.UUID, Cart | None]:
    """The state every cart must end in: the commands folded in memory, per cart, in order."""
    per_cart: dict[uuid.UUID, list[Command]] = {}
    for cmd in commands:
        per_cart.setdefault(cmd.cart_id, []).append(cmd)
    return {cid: fold(cmds) for cid, cmds in per_cart.items()}


def dendrites_scenario(cart: uuid.UUID | None = None) -> tuple[list[Command], dict[str, uuid.UUID]]:
    """dendrites' ten commands on one cart; the expected end: owner o1, {i1: 1, i2: 2}, version 9."""
    ids = {name: uuid.uuid4() for name in ("o1", "o2", "i1", "i2")}
    cid = cart or uuid.uuid4()
    ids["cart"] = cid
    o1, o2, i1, i2 = ids["o1"], ids["o2"], ids["i1"], ids["i2"]
    cmds = [Command("Insert", cid, o1), Command("SetOwner", cid, o2), Command("AddItem", cid, i1, 1),
            Command("AddItem", cid, i2, 1), Command("AddItem", cid, i1, 1), Command("AddItem", cid, i2, 1),
            Command("AddItem", cid, i2, 1), Command("SetOwner", cid, o1), Command("RemoveItem", cid, i1, 1),
            Command("RemoveItem", cid, i2, 1)]
    return cmds, ids
