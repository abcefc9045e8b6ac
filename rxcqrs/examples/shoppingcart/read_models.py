"""The carts' read models, projected from the carts' event stream (:mod:`rxcqrs.cassandra.projection`).

* ``carts_by_owner (owner uuid, cart_id uuid, items int, units int, PRIMARY KEY (owner, cart_id))``: one row
  per live cart: its owner, its number of distinct items, the sum of its counts (an :class:`EntityView`:
  idempotent rows, a SetOwner moves the row);
* ``item_totals (item uuid, stream_partition int, units bigint, carts bigint, PRIMARY KEY (item,
  stream_partition))``: per item, the sum of its counts over live carts and the number of live carts holding
  it, as one row per stream partition (a :class:`TotalsView`: offsets with the read model); the item's totals
  are the sum of its rows (``SELECT sum(units), sum(carts) FROM item_totals WHERE item = ?``).
"""

from __future__ import annotations

import uuid
from typing import Any, Iterable, Mapping

from rxcqrs.cassandra.event_stream import StreamEvent
from rxcqrs.cassandra.projection import EntityView, Projection, TotalsView
from rxcqrs.examples.shoppingcart.domain import Cart

__all__ = ["CARTS_BY_OWNER", "ITEM_TOTALS", "cart_views", "expected_views"]


def owner_rows(cart_id: uuid.UUID, cart: Cart | None) -> list[dict[str, Any]]:
    if cart is None:
        return []
    return [{"owner": cart.owner, "cart_id": cart_id, "items": len(cart.items), "units": sum(cart.items.values())}]


def item_deltas(event: StreamEvent[Any, Cart]) -> dict[tuple[Any, ...], dict[str, int]]:
    before: Mapping[uuid.UUID, int] = event.before.items if event.before else {}
    after: Mapping[uuid.UUID, int] = event.after.items if event.after else {}
    out = {}
    for item in set(before) | set(after):
        units = after.get(item, 0) - before.get(item, 0)
        carts = (item in after) - (item in before)
        if units or carts:
            out[(item,)] = {"units": units, "carts": carts}
    return out


CARTS_BY_OWNER = EntityView("carts_by_owner", {"owner": "uuid", "cart_id": "uuid", "items": "int", "units": "int"},
                            ["owner", "cart_id"], owner_rows)
ITEM_TOTALS = TotalsView("item_totals", {"item": "uuid"}, ["units", "carts"], item_deltas)


def cart_views(session: Any, keyspace: str, events_topic: str) -> Projection:
    """Both read models of the carts' stream ``events_topic``, in ``keyspace``."""
    from rxcqrs.examples.shoppingcart.store import CartStore

    stream = CartStore(None, keyspace, events_topic=events_topic).stream
    assert stream is not None
    return Projection(session, keyspace, "cart_views", stream, [CARTS_BY_OWNER, ITEM_TOTALS])


def expected_views(carts: Iterable[tuple[uuid.UUID, Cart]]
                   ) -> tuple[dict[tuple[uuid.UUID, uuid.UUID], tuple[int, int]], dict[uuid.UUID, dict[str, int]]]:
    """What the read models must hold for these live carts: ``carts_by_owner`` as (owner, cart) -> (items,
    units), ``item_totals`` as item -> {units, carts}."""
    by_owner: dict[tuple[uuid.UUID, uuid.UUID], tuple[int, int]] = {}
    totals: dict[uuid.UUID, dict[str, int]] = {}
    for cart_id, cart in carts:
        by_owner[(cart.owner, cart_id)] = (len(cart.items), sum(cart.items.values()))
        for item, count in cart.items.items():
            found = totals.setdefault(item, {"units": 0, "carts": 0})
            found["units"] += count
            found["carts"] += 1
    return by_owner, totals


def stored_views(projection: Projection, keyspace: str
                 ) -> tuple[dict[tuple[uuid.UUID, uuid.UUID], tuple[int, int]], dict[uuid.UUID, dict[str, int]]]:
    """What the read models hold, in the shape of :func:`expected_views`."""
    by_owner = {(row.owner, row.cart_id): (row.items, row.units) for row in projection.session.execute(
        f"SELECT owner, cart_id, items, units FROM {keyspace}.carts_by_owner")}
    totals = {key[0]: values for key, values in projection.all_totals(ITEM_TOTALS).items()}
    return by_owner, totals
