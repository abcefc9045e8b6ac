"""The shopping cart in Cassandra: the framework's tables of the cart's :class:`~rxcqrs.decider.Decider`
(:data:`~rxcqrs.examples.shoppingcart.domain.CARTS`), and what the example's CLI and pipelines add to them.

The tables keep the columns other-language readers rely on: ``shopping_cart (cart_id, owner, items, version,
deleted, ...)`` and ``shopping_cart_event_log (cart_id, event_id, event_time, action, owner, item, count,
...)``. Writes are fenced by default (``--write-protocol conditional``: one Paxos round per write).
``idempotent=False`` keeps the read-modify-write story of the mission: a redelivered command applies again,
and the duplicates query plus a rebuild from the event log restore the right state.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterator

from rxcqrs.cassandra import EventLog
from rxcqrs.cassandra.aggregate import Stored
from rxcqrs.cassandra.decider_store import DeciderStore
from rxcqrs.cassandra.fence import WriteProtocol
from rxcqrs.examples.shoppingcart.domain import CARTS, Cart, CartEvent, Command

__all__ = ["CartStore", "CartRow", "cart_event_log", "COLUMN_TYPES"]

#: a cart row as stored: the cart (``None``: never inserted, or deleted), ``seq`` and ``applied``
CartRow = Stored[Cart]
#: the CQL types the cart's tables have always had (``int`` where Python's ``int`` would be ``bigint``)
COLUMN_TYPES = {"items": "map<uuid, int>", "version": "int", "count": "int"}


class CartStore(DeciderStore[Command, Cart, CartEvent]):
    def __init__(self, session: Any, keyspace: str, *, idempotent: bool = True,
                 write_protocol: WriteProtocol = "fenced", events_topic: str | None = None) -> None:
        super().__init__(session, keyspace, CARTS, write_protocol=write_protocol, column_types=COLUMN_TYPES,
                         schema_hint="rxcqrs cart consume --create-schema", events_topic=events_topic)
        self.idempotent = idempotent

    def create(self, replication: int = 1) -> None:
        self.create_schema(replication)

    def require_schema(self) -> None:
        self.check_schema()

    def find(self, cart_id: uuid.UUID) -> tuple[Cart, dict[int, int]] | None:
        """The cart and the source offsets it applied; ``None`` if it does not exist (or was deleted)."""
        row = self.row(cart_id)
        return None if row.state is None else (row.state, dict(row.applied))

    def all_carts(self) -> Iterator[tuple[uuid.UUID, Cart]]:
        return self.all()


def cart_event_log(keyspace: str) -> EventLog:
    """The carts' event log in ``keyspace`` (for readers that need no session to build it)."""
    return CartStore(None, keyspace).log
