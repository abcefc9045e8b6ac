"""The shopping cart in Cassandra: the command-side table, the event log, rejections, and the statements the
pipeline runs (optimistic locking: every applied command adds 1 to ``version`` through ``IF version = ?``).

Exactness after redeliveries (see :mod:`rxcqrs.cassandra.compensation`): the example uses **rebuild** by
default, because its commands are plain read-modify-write and the story of the mission is "duplicates are
found and a compensating function restores the right state"; ``idempotent=True`` switches on the other
way, where each applied command records its source partition/offset in the same conditional update, and a
redelivered command is recognised and skipped (then rebuild finds nothing to fix).
"""

from __future__ import annotations

import uuid
from typing import Any, Iterator

from rxcqrs.cassandra import EventLog, Rebuilder, create_keyspace, create_table, prepare, qualified
from rxcqrs.cassandra.eventlog import LoggedEvent
from rxcqrs.examples.shoppingcart.domain import Cart, Command, Rejected, apply, fold
from rxcqrs.messages import RecordMetadata

__all__ = ["CartStore", "cart_event_log", "event_payload", "command_of"]

CART_TABLE = "shopping_cart"
LOG_TABLE = "shopping_cart_event_log"
REJECTIONS_TABLE = "shopping_cart_rejections"


def cart_event_log(keyspace: str) -> EventLog:
    return EventLog(keyspace, LOG_TABLE, entity="cart_id", entity_type="uuid",
                    payload={"action": "text", "owner": "uuid", "item": "uuid", "count": "int"}, bucket="day")


def event_payload(cmd: Command) -> dict[str, Any]:
    """The event keeps the action (dendrites dropped it, so a RemoveItem was logged as an addition)."""
    if cmd.action in ("Insert", "SetOwner"):
        return {"action": cmd.action, "owner": cmd.owner_or_item, "item": None, "count": None}
    if cmd.action == "Delete":
        return {"action": cmd.action, "owner": None, "item": None, "count": None}
    return {"action": cmd.action, "owner": None, "item": cmd.owner_or_item, "count": cmd.count}


def command_of(event: LoggedEvent) -> Command:
    p = event.payload
    return Command(p["action"], event.entity_id, p["owner"] or p["item"] or uuid.UUID(int=0), p["count"])


class CartStore:
    def __init__(self, session: Any, keyspace: str, *, idempotent: bool = False) -> None:
        self.session = session
        self.keyspace = keyspace
        self.idempotent = idempotent
        self.carts = qualified(keyspace, CART_TABLE)
        self.rejections = qualified(keyspace, REJECTIONS_TABLE)
        self.log = cart_event_log(keyspace)
        self._prepared = False

    def create(self, replication: int = 1) -> None:
        create_keyspace(self.session, self.keyspace, replication)
        create_table(self.session, self.keyspace, CART_TABLE,
                     {"cart_id": "uuid", "owner": "uuid", "items": "map<uuid, int>", "version": "int",
                      "applied": "map<int, bigint>"}, ["cart_id"])
        create_table(self.session, self.keyspace, REJECTIONS_TABLE,
                     {"cart_id": "uuid", "event_id": "uuid", "action": "text", "reason": "text",
                      "source_partition": "int", "source_offset": "bigint"}, ["cart_id"], [("event_id", "ASC")])
        self.log.create(self.session)
        self.rebuilder().create()

    def _prepare(self) -> None:
        if self._prepared:
            return
        s = self.session
        self._read = prepare(s, f"SELECT owner, items, version, applied FROM {self.carts} WHERE cart_id = ?")
        self._insert = prepare(s, f"INSERT INTO {self.carts} (cart_id, owner, items, version, applied) "
                                  "VALUES (?, ?, ?, ?, ?) IF NOT EXISTS")
        self._update = prepare(s, f"UPDATE {self.carts} SET owner = ?, items = ?, version = ?, applied = ? "
                                  "WHERE cart_id = ? IF version = ?")
        self._delete = prepare(s, f"DELETE FROM {self.carts} WHERE cart_id = ? IF version = ?")
        self._reject = prepare(s, f"INSERT INTO {self.rejections} (cart_id, event_id, action, reason, "
                                  "source_partition, source_offset) VALUES (?, ?, ?, ?, ?, ?)")
        self._prepared = True

    # -- reads --------------------------------------------------------------------------------------------
    def read(self, cart_id: uuid.UUID) -> tuple[Cart, dict[int, int]] | None:
        self._prepare()
        row = self.session.execute(self._read, (cart_id,)).one()
        if row is None:
            return None
        return Cart(row.owner, dict(row.items or {}), row.version), dict(row.applied or {})

    def all_carts(self) -> Iterator[tuple[uuid.UUID, Cart]]:
        from cassandra.query import SimpleStatement

        rows = self.session.execute(SimpleStatement(f"SELECT cart_id, owner, items, version FROM {self.carts}",
                                                    fetch_size=1000))
        for row in rows:
            yield row.cart_id, Cart(row.owner, dict(row.items or {}), row.version)

    def rejected(self, cart_id: uuid.UUID) -> list[Any]:
        return list(self.session.execute(f"SELECT * FROM {self.rejections} WHERE cart_id = %s", (cart_id,)))

    # -- the command side ---------------------------------------------------------------------------------
    def command(self, cmd: Command, meta: RecordMetadata) -> Any:
        """The CassandraRetrySink function: read, decide, write conditionally. Runs on a worker thread (it
        reads); called again after an optimistic-lock conflict, so it always decides on fresh state."""
        self._prepare()
        current = self.read(cmd.cart_id)
        cart, applied = current if current else (None, {})
        if self.idempotent and applied.get(meta.partition, -1) >= meta.offset:
            return None  # a redelivery of a command this cart already applied: nothing to do
        result = apply(cart, cmd)
        if isinstance(result, Rejected):
            return self._reject.bind((cmd.cart_id, meta.key_uuid, cmd.action, result.reason, meta.partition,
                                      meta.offset))
        marks = {**applied, meta.partition: meta.offset}
        if cart is None:
            assert result is not None
            return self._insert.bind((cmd.cart_id, result.owner, dict(result.items), result.version, marks))
        if result is None:
            return self._delete.bind((cmd.cart_id, cart.version))
        return self._update.bind((result.owner, dict(result.items), result.version, marks, cmd.cart_id,
                                  cart.version))

    def event_statement(self, cmd: Command, meta: RecordMetadata) -> Any:
        """The event-log write of one command: id = the Kafka key, time = the Kafka record timestamp."""
        return self.log.bind(self.session, cmd.cart_id, meta.key_uuid, meta.timestamp_utc, event_payload(cmd), meta)

    # -- rebuild (the example's compensation) ---------------------------------------------------------------
    def rebuilder(self) -> Rebuilder[Cart]:
        def current(cart_id: uuid.UUID) -> tuple[Cart, int] | None:
            found = self.read(cart_id)
            return (found[0], found[0].version) if found else None

        def write(cart_id: uuid.UUID, state: Cart | None, version: int | None) -> Any:
            self._prepare()
            if version is None:
                assert state is not None
                return self._insert.bind((cart_id, state.owner, dict(state.items), state.version, {}))
            if state is None:
                return self._delete.bind((cart_id, version))
            current = self.read(cart_id)
            marks = current[1] if current else {}
            return self._update.bind((state.owner, dict(state.items), state.version, marks, cart_id, version))

        return Rebuilder(self.session, self.log, fold=lambda events: fold(command_of(e) for e in events),
                         read=current, write=write, ledger="shopping_cart_rebuilds")
