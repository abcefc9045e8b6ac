"""The shopping cart in Cassandra: the command-side table, the event log, rejections, and the statements the
pipeline runs.

Every write to a cart row is a lightweight transaction on ``seq`` (``IF seq = ?``: optimistic locking; ``seq``
counts writes, so it never repeats, unlike the cart's own ``version``, which starts again at 0 when a deleted
cart is inserted again). The same conditional write records the command's source partition and offset in
``applied`` (partition -> highest offset applied). A deleted cart stays as a row with ``deleted = true``, and a
rejected command still advances ``applied``: so ``applied`` always tells whether a record was already handled.

Exactness after redeliveries (see :mod:`rxcqrs.cassandra.compensation`):

* **idempotent** (the default): a redelivered command is recognised from ``applied`` and skipped; the cart is
  exact without repair;
* ``idempotent=False``: plain read-modify-write; a redelivered command applies again, and the duplicates query
  plus a rebuild from the event log restore the right state (the story of the mission). ``reapplied`` counts
  the commands that did so, so the consumer can say that a rebuild is needed.

Either way a write whose outcome is unknown (a timeout) is resolved by a serial read of ``applied`` and never
simply re-run; if it cannot be resolved it is recorded in the event log's unknown-outcomes table, which
``duplicates`` reports and ``compensate`` repairs.

The store is also the :class:`~rxcqrs.cassandra.aggregate.Aggregate` of the batched pipeline (the default):
there a cart's waiting commands are folded together and written with one conditional write.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from typing import Any, Iterator

from rxcqrs.cassandra import EventLog, Rebuilder, create_keyspace, create_table, prepare, qualified
from rxcqrs.cassandra.aggregate import Applied, Rejection, Stored
from rxcqrs.cassandra.eventlog import LoggedEvent
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
TABLES = (CART_TABLE, REJECTIONS_TABLE, LOG_TABLE, LOG_TABLE + "_buckets", LOG_TABLE + "_unknown", REBUILDS_TABLE)


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
    def __init__(self, session: Any, keyspace: str, *, idempotent: bool = True) -> None:
        self.session = session
        self.keyspace = keyspace
        self.idempotent = idempotent
        self.carts = qualified(keyspace, CART_TABLE)
        self.rejections_table = qualified(keyspace, REJECTIONS_TABLE)
        self.log = cart_event_log(keyspace)
        self._prepared = False
        self._lock = threading.Lock()
        #: redelivered commands that were applied again (``idempotent=False``): a rebuild is needed
        self.reapplied = 0
        #: redelivered commands recognised and skipped (``idempotent=True``)
        self.skipped = 0
        self._first_tries: OrderedDict[tuple[str, int, int], bool] = OrderedDict()
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
            self._reject = prepare(s, f"INSERT INTO {self.rejections_table} (cart_id, event_id, action, reason, "
                                      "source_partition, source_offset) VALUES (?, ?, ?, ?, ?, ?)")
            self._prepared = True

    # -- reads --------------------------------------------------------------------------------------------
    def row(self, cart_id: uuid.UUID, *, serial: bool = False) -> CartRow:
        """The cart's row; ``serial`` reads through Paxos, so a lightweight transaction whose outcome was
        unknown is settled (completed or superseded) before the answer."""
        return self.stored(list(self.session.execute(self.read_row(cart_id, serial))))

    def read_row(self, cart_id: uuid.UUID, serial: bool = False) -> Any:
        self._prepare()
        return (self._read_serial if serial else self._read).bind((cart_id,))

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

    # -- the command side ---------------------------------------------------------------------------------
    def command(self, cmd: Command, meta: RecordMetadata) -> Any:
        """The CassandraRetrySink function: read, decide, write conditionally. Runs on a worker thread (it
        reads); called again after an optimistic-lock conflict, so it always decides on fresh state."""
        row = self.row(cmd.cart_id)
        handled = row.handled(meta)
        redelivered = self._handled_at_first_try(meta, handled)
        if handled and not redelivered:
            return None  # our earlier attempt at this very record was applied (its answer was lost or late)
        if handled:
            if self.idempotent:
                with self._lock:
                    self.skipped += 1
                return None  # a redelivery of a command this cart already handled: nothing to do
            with self._lock:
                self.reapplied += 1
        result = apply(row.state, cmd)
        if isinstance(result, Rejected):
            self.session.execute(self._reject, (cmd.cart_id, meta.key_uuid, cmd.action, result.reason,
                                                meta.partition, meta.offset))
            return self.write(cmd.cart_id, row, row.state, meta)  # the state stays; `applied` moves on
        return self.write(cmd.cart_id, row, result, meta)

    def _handled_at_first_try(self, meta: RecordMetadata, handled: bool) -> bool:
        """Whether the cart had already applied this record when this process first tried it (a redelivery).
        If it had not, finding it applied now means our own write landed. Remembers first tries (bounded)."""
        key = (meta.topic, meta.partition, meta.offset)
        with self._lock:
            first = self._first_tries.get(key)
            if first is None:
                first = self._first_tries[key] = handled
                if len(self._first_tries) > 200_000:
                    self._first_tries.popitem(last=False)
            return first

    def write(self, cart_id: uuid.UUID, row: CartRow, cart: Cart | None, meta: RecordMetadata | None) -> Any:
        """The conditional write that replaces ``row`` by ``cart`` (``None``: deleted), recording ``meta``."""
        applied = dict(row.applied)
        if meta is not None:
            applied[meta.partition] = max(meta.offset, applied.get(meta.partition, -1))
        return self.update(cart_id, row, cart, applied)

    def update(self, cart_id: uuid.UUID, row: CartRow, cart: Cart | None, applied: dict[int, int]) -> Any:
        """The conditional write replacing ``row`` (``IF seq = ?``, or ``IF NOT EXISTS`` for a new row)."""
        self._prepare()
        owner, items, version = (cart.owner, dict(cart.items), cart.version) if cart else (None, None, 0)
        if row.seq is None:
            return self._insert.bind((cart_id, owner, items, version, cart is None, 1, applied))
        return self._update.bind((owner, items, version, cart is None, row.seq + 1, applied, cart_id, row.seq))

    def was_applied(self, cmd: Command, meta: RecordMetadata) -> bool:
        """Resolves an unknown outcome: a serial read shows whether the cart recorded this record."""
        return self.row(cmd.cart_id, serial=True).handled(meta)

    def record_unknown(self, cmd: Command, meta: RecordMetadata, error: BaseException) -> Any:
        """The statement recording an outcome that could not be resolved (``duplicates`` reports it)."""
        return self.log.record_unknown(self.session, cmd.cart_id, meta.key_uuid, meta, error)

    # -- the aggregate of the batched pipeline -------------------------------------------------------------
    def prepare(self) -> None:
        """Prepare every statement the batched pipeline uses (its other methods run on driver callbacks)."""
        self._prepare()
        self.log.insert_statement(self.session)
        prepare(self.session, self.log.bucket_index_query())

    def key(self, cmd: Command) -> uuid.UUID:
        return cmd.cart_id

    def read(self, cart_id: uuid.UUID, serial: bool = False) -> Any:
        return self.read_row(cart_id, serial)

    def decide(self, cart: Cart | None, cmd: Command, meta: RecordMetadata) -> Applied[Cart] | Rejection:
        result = apply(cart, cmd)
        return Rejection(result.reason) if isinstance(result, Rejected) else Applied(result)

    def events(self, cart_id: uuid.UUID, records: list[tuple[Command, RecordMetadata]]) -> list[Any]:
        """Every delivery is logged (redeliveries too); plus the bucket index of the batch's buckets."""
        inserts = [self.log.insert(self.session, cmd.cart_id, meta.key_uuid, meta.timestamp_utc, event_payload(cmd),
                                   meta) for cmd, meta in records]
        buckets = {self.log.bucket_of(meta.timestamp_utc): meta.timestamp_utc for _cmd, meta in records}
        with self._lock:  # the bucket index once per cart and bucket and process (these statements are retried
            new = {b: t for b, t in buckets.items() if (cart_id, b) not in self._indexed}  # until they succeed)
            self._indexed.update((cart_id, b) for b in new)
            if len(self._indexed) > 500_000:
                self._indexed.clear()
        return inserts + [self.log.bucket_index(self.session, cart_id, when) for when in new.values()]

    def record_rejections(self, cart_id: uuid.UUID, rejected: list[tuple[Command, RecordMetadata, str]]) -> list[Any]:
        self._prepare()
        out = []
        for cmd, meta, reason in rejected:
            bound = self._reject.bind((cmd.cart_id, meta.key_uuid, cmd.action, reason, meta.partition, meta.offset))
            bound.is_idempotent = True
            out.append(bound)
        return out

    def event_statement(self, cmd: Command, meta: RecordMetadata) -> Any:
        """The event-log write of one command: id = the Kafka key, time = the Kafka record timestamp."""
        return self.log.bind(self.session, cmd.cart_id, meta.key_uuid, meta.timestamp_utc, event_payload(cmd), meta)

    # -- rebuild (the example's compensation) ---------------------------------------------------------------
    def rebuilder(self) -> Rebuilder[Cart]:
        def current(cart_id: uuid.UUID) -> tuple[Cart | None, int | None] | None:
            row = self.row(cart_id)
            return None if row.seq is None else (row.state, row.seq)

        def write(cart_id: uuid.UUID, state: Cart | None, seq: int | None) -> Any:
            row = self.row(cart_id)
            if row.seq != seq:
                return None  # moved since the read: the rebuilder reads again
            return self.write(cart_id, row, state, None)

        return Rebuilder(self.session, self.log, fold=lambda events: fold(command_of(e) for e in events),
                         read=current, write=write, ledger=REBUILDS_TABLE)
