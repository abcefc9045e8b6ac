"""The shopping cart in Cassandra: the command-side table, the event log, rejections, and the statements the
command engine (:class:`~rxcqrs.cassandra.AggregateSink`) runs for it.

A cart row holds the cart (``owner``, ``items``, ``version``; a deleted cart stays as a row with
``deleted = true``) and ``applied``: the highest source offset it has handled per partition (rejected
commands too), which is how a redelivered command is recognised and skipped. Two write protocols
(:mod:`rxcqrs.cassandra.fence`), recorded per table so that they never mix:

* **fenced** (the default): a plain ``INSERT ... USING TIMESTAMP epoch * 2**40 + offset`` of the whole row
  (``items`` and ``applied`` written whole, so a newer write hides every older element);
* **conditional**: a lightweight transaction on ``seq`` (``IF seq = ?``; ``seq`` counts writes), the strict
  mode, one Paxos round per write.

``idempotent=False`` keeps the read-modify-write story of the mission: a redelivered command applies again,
and the duplicates query plus a rebuild from the event log restore the right state.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any, Iterator

from rxcqrs.cassandra import EventLog, Rebuilder, create_keyspace, create_table, prepare, qualified
from rxcqrs.cassandra.aggregate import Applied, Rejection, Stored
from rxcqrs.cassandra.eventlog import LoggedEvent
from rxcqrs.cassandra.fence import (
    FENCES_TABLE,
    WRITERS_TABLE,
    Fence,
    TableClaim,
    WriteProtocol,
    check_protocol,
    claim_table,
    create_fence_tables,
    write_timestamp,
)
from rxcqrs.examples.shoppingcart.domain import Cart, Command, Rejected, apply, fold
from rxcqrs.exceptions import SchemaError
from rxcqrs.messages import RecordMetadata

__all__ = ["CartStore", "CartRow", "cart_event_log", "event_payload", "command_of", "TABLES"]

#: a cart row as stored: the cart (``None``: never inserted, or deleted), ``seq`` and ``applied``
CartRow = Stored[Cart]

CART_TABLE = "shopping_cart"
LOG_TABLE = "shopping_cart_event_log"
REJECTIONS_TABLE = "shopping_cart_rejections"
REBUILDS_TABLE = "shopping_cart_rebuilds"
TABLES = (CART_TABLE, REJECTIONS_TABLE, LOG_TABLE, LOG_TABLE + "_buckets", LOG_TABLE + "_unknown", REBUILDS_TABLE,
          FENCES_TABLE, WRITERS_TABLE)


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
    def __init__(self, session: Any, keyspace: str, *, idempotent: bool = True,
                 write_protocol: WriteProtocol = "fenced") -> None:
        self.session = session
        self.keyspace = keyspace
        self.idempotent = idempotent
        self.write_protocol = check_protocol(write_protocol)
        self.carts = qualified(keyspace, CART_TABLE)
        self.rejections_table = qualified(keyspace, REJECTIONS_TABLE)
        self.log = cart_event_log(keyspace)
        self._prepared = False
        self._lock = threading.Lock()
        self._indexed: set[tuple[uuid.UUID, int]] = set()

    # -- schema -------------------------------------------------------------------------------------------
    def create(self, replication: int = 1) -> None:
        create_keyspace(self.session, self.keyspace, replication)
        create_table(self.session, self.keyspace, CART_TABLE,
                     {"cart_id": "uuid", "owner": "uuid", "items": "map<uuid, int>", "version": "int",
                      "deleted": "boolean", "seq": "bigint", "applied": "map<int, bigint>"}, ["cart_id"])
        create_table(self.session, self.keyspace, REJECTIONS_TABLE,
                     {"cart_id": "uuid", "event_id": "uuid", "action": "text", "reason": "text",
                      "source_partition": "int", "source_offset": "bigint"}, ["cart_id"], [("event_id", "ASC")])
        self.log.create(self.session)
        self.rebuilder().create()
        create_fence_tables(self.session, self.keyspace)

    def claim(self, group: str | None) -> TableClaim:
        """Record (or check) that this store's protocol, and for fenced writes ``group``, writes the carts."""
        return claim_table(self.session, self.keyspace, CART_TABLE, self.write_protocol, group)

    def recorded_protocol(self) -> WriteProtocol:
        """The protocol recorded for the carts table (tables from before the record: conditional)."""
        row = self.session.execute(f"SELECT protocol FROM {qualified(self.keyspace, WRITERS_TABLE)} WHERE "
                                   "table_name = %s", (CART_TABLE,)).one()
        return check_protocol(row.protocol) if row is not None else "conditional"

    def missing_tables(self) -> list[str]:
        """The keyspace (``[keyspace]``) or the tables of it that do not exist (asked of the server's own
        schema tables, not the driver's cached metadata)."""
        if self.session.execute("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
                                (self.keyspace,)).one() is None:
            return [self.keyspace]
        tables = {row.table_name for row in self.session.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (self.keyspace,))}
        return [f"{self.keyspace}.{t}" for t in TABLES if t not in tables]

    def require_schema(self) -> None:
        missing = self.missing_tables()
        if missing == [self.keyspace]:
            raise SchemaError(f"keyspace {self.keyspace!r} does not exist: check --keyspace, or create it with "
                              "rxcqrs cart consume --create-schema")
        if missing:
            raise SchemaError(f"keyspace {self.keyspace!r} is missing {', '.join(missing)}: create the schema "
                              "first (rxcqrs cart consume --create-schema)")

    def _prepare(self) -> None:
        with self._lock:
            if self._prepared:
                return
            from cassandra import ConsistencyLevel

            s = self.session
            columns = "owner, items, version, deleted, seq, applied"
            self._read = prepare(s, f"SELECT {columns} FROM {self.carts} WHERE cart_id = ?")
            self._read_serial = s.prepare(f"SELECT {columns} FROM {self.carts} WHERE cart_id = ?")
            # a read through Paxos at the session's serial consistency (LOCAL_SERIAL by default)
            profile = s.cluster.profile_manager.default
            self._read_serial.consistency_level = profile.serial_consistency_level or ConsistencyLevel.SERIAL
            self._insert = prepare(s, f"INSERT INTO {self.carts} (cart_id, owner, items, version, deleted, seq, "
                                      "applied) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")
            self._update = prepare(s, f"UPDATE {self.carts} SET owner = ?, items = ?, version = ?, deleted = ?, "
                                      "seq = ?, applied = ? WHERE cart_id = ? IF seq = ?")
            self._fenced = prepare(s, f"INSERT INTO {self.carts} (cart_id, owner, items, version, deleted, applied) "
                                      "VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")
            self._reject = prepare(s, f"INSERT INTO {self.rejections_table} (cart_id, event_id, action, reason, "
                                      "source_partition, source_offset) VALUES (?, ?, ?, ?, ?, ?)")
            self._prepared = True

    # -- reads --------------------------------------------------------------------------------------------
    def row(self, cart_id: uuid.UUID, *, serial: bool = False) -> CartRow:
        """The cart's row; ``serial`` reads through Paxos, so a lightweight transaction whose outcome was
        unknown is settled (completed or superseded) before the answer."""
        return self.stored(list(self.session.execute(self.read(cart_id, serial))))

    def stored(self, rows: Any) -> CartRow:
        found = rows[0] if rows else None
        if found is None:
            return CartRow(None, None, {})
        cart = None if found.deleted else Cart(found.owner, dict(found.items or {}), found.version)
        return CartRow(cart, found.seq or 0, dict(found.applied or {}))

    def find(self, cart_id: uuid.UUID) -> tuple[Cart, dict[int, int]] | None:
        """The cart and the source offsets it applied; ``None`` if it does not exist (or was deleted)."""
        row = self.row(cart_id)
        return None if row.state is None else (row.state, dict(row.applied))

    def all_carts(self) -> Iterator[tuple[uuid.UUID, Cart]]:
        from cassandra.query import SimpleStatement

        rows = self.session.execute(SimpleStatement(
            f"SELECT cart_id, owner, items, version, deleted FROM {self.carts}", fetch_size=1000))
        for row in rows:
            if not row.deleted:
                yield row.cart_id, Cart(row.owner, dict(row.items or {}), row.version)

    def rejected(self, cart_id: uuid.UUID) -> list[Any]:
        return list(self.session.execute(f"SELECT * FROM {self.rejections_table} WHERE cart_id = %s", (cart_id,)))

    # -- the aggregate of the command engine ----------------------------------------------------------------
    def prepare(self) -> None:
        """Prepare every statement the engine uses (its other methods run on driver callbacks)."""
        self._prepare()
        self.log.insert_statement(self.session)
        prepare(self.session, self.log.bucket_index_query())

    def key(self, cmd: Command) -> uuid.UUID:
        return cmd.cart_id

    def read(self, cart_id: uuid.UUID, serial: bool = False) -> Any:
        self._prepare()
        return (self._read_serial if serial else self._read).bind((cart_id,))

    def decide(self, cart: Cart | None, cmd: Command, meta: RecordMetadata) -> Applied[Cart] | Rejection:
        result = apply(cart, cmd)
        return Rejection(result.reason) if isinstance(result, Rejected) else Applied(result)

    def write(self, cart_id: uuid.UUID, cart: Cart | None, applied: dict[int, int], timestamp: int) -> Any:
        """The fenced write of the whole row (``None``: deleted), stamped ``timestamp``."""
        self._prepare()
        owner, items, version = (cart.owner, dict(cart.items), cart.version) if cart else (None, None, 0)
        bound = self._fenced.bind((cart_id, owner, items, version, cart is None, applied, timestamp))
        bound.is_idempotent = True
        return bound

    def update(self, cart_id: uuid.UUID, row: CartRow, cart: Cart | None, applied: dict[int, int]) -> Any:
        """The conditional write replacing ``row`` (``IF seq = ?``, or ``IF NOT EXISTS`` for a new row)."""
        self._prepare()
        owner, items, version = (cart.owner, dict(cart.items), cart.version) if cart else (None, None, 0)
        if row.seq is None:
            return self._insert.bind((cart_id, owner, items, version, cart is None, 1, applied))
        return self._update.bind((owner, items, version, cart is None, row.seq + 1, applied, cart_id, row.seq))

    def record_rejections(self, cart_id: uuid.UUID, rejected: list[tuple[Command, RecordMetadata, str]]) -> list[Any]:
        self._prepare()
        out = []
        for cmd, meta, reason in rejected:
            bound = self._reject.bind((cmd.cart_id, meta.key_uuid, cmd.action, reason, meta.partition, meta.offset))
            bound.is_idempotent = True
            out.append(bound)
        return out

    def events(self, cart_id: uuid.UUID, records: list[tuple[Command, RecordMetadata]]) -> list[Any]:
        """Every delivery is logged (redeliveries too)."""
        return [self.log.insert(self.session, cmd.cart_id, meta.key_uuid, meta.timestamp_utc, event_payload(cmd),
                                meta) for cmd, meta in records]

    def index(self, cart_id: uuid.UUID, records: list[tuple[Command, RecordMetadata]]) -> list[Any]:
        """The bucket index of the batch's buckets, once per cart, bucket and process (a failed write is retried
        until it succeeds, and a new process writes it again)."""
        buckets = {self.log.bucket_of(meta.timestamp_utc): meta.timestamp_utc for _cmd, meta in records}
        with self._lock:
            new = {b: t for b, t in buckets.items() if (cart_id, b) not in self._indexed}
            self._indexed.update((cart_id, b) for b in new)
            if len(self._indexed) > 500_000:
                self._indexed.clear()
        return [self.log.bucket_index(self.session, cart_id, when) for when in new.values()]

    def event_statement(self, cmd: Command, meta: RecordMetadata) -> Any:
        """The event-log write of one command (the event-log branch of the parallel and serial pipelines)."""
        return self.log.bind(self.session, cmd.cart_id, meta.key_uuid, meta.timestamp_utc, event_payload(cmd), meta)

    # -- rebuild (the example's compensation) ---------------------------------------------------------------
    def rebuilder(self, *, group: str | None = None, topic: str | None = None) -> Rebuilder[Cart]:
        """Carts rewritten from their event log. Fenced: the rebuild takes an epoch of the group's fence on
        ``topic`` (higher than every epoch its members wrote with), so run it while the group has no members
        (the CLI checks): a member's next assignment takes a higher epoch again."""
        def current(cart_id: uuid.UUID) -> tuple[Cart | None, int | None] | None:
            row = self.row(cart_id)
            return None if row.seq is None else (row.state, row.seq)

        fence_epoch: list[int] = []
        writes = [0]

        def write(cart_id: uuid.UUID, state: Cart | None, seq: int | None) -> Any:
            row = self.row(cart_id)
            if self.write_protocol == "conditional":
                if row.seq != seq:
                    return None  # moved since the read: the rebuilder reads again
                return self.update(cart_id, row, state, dict(row.applied))
            if not fence_epoch:
                if group is None or topic is None:
                    raise SchemaError("a rebuild of fenced carts needs the consumer group and topic whose fence "
                                      "orders their writers (--group, --topic)")
                fence_epoch.append(Fence(self.session, self.keyspace, group, topic).take())
            writes[0] += 1
            return self.write(cart_id, state, dict(row.applied), write_timestamp(fence_epoch[0], writes[0]))

        return Rebuilder(self.session, self.log, fold=lambda events: fold(command_of(e) for e in events),
                         read=current, write=write, ledger=REBUILDS_TABLE)
