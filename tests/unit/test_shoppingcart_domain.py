"""The shopping-cart domain and its wire format (no servers)."""

from __future__ import annotations

import json
import uuid
from importlib import resources

import pytest

from rxcqrs.examples.shoppingcart.codec import SCHEMA, command_codec
from rxcqrs.examples.shoppingcart.domain import Cart, Command, Rejected, apply, fold
from rxcqrs.examples.shoppingcart.generator import dendrites_scenario, generate, partition_for, reference
from rxcqrs.exceptions import PoisonRecordError, SerializationError

CONTRACT = {"type": "record", "name": "ShoppingCartCmd", "namespace": "rxcqrs.examples.shoppingcart",
            "fields": [{"name": "action", "type": "string"},
                       {"name": "cart_id", "type": {"type": "string", "logicalType": "uuid"}},
                       {"name": "owner_or_item", "type": {"type": "string", "logicalType": "uuid"}},
                       {"name": "count", "type": ["null", "int"], "default": None}]}


def test_the_wire_schema_is_exactly_the_contract() -> None:
    assert SCHEMA == CONTRACT
    text = (resources.files("rxcqrs.examples.shoppingcart") / "shopping_cart_cmd.avsc").read_text()
    assert json.loads(text) == CONTRACT


def test_commands_round_trip_and_unknown_actions_are_poison() -> None:
    codec = command_codec()
    cmd = Command("AddItem", uuid.uuid4(), uuid.uuid4(), 3)
    assert codec.decode(codec.encode(cmd)) == cmd
    # what any Avro library writes for this schema: action, two 36-char strings, union branch 1 + zigzag int
    raw = codec.encode(cmd)
    assert raw[0] == len("AddItem") * 2 and raw.endswith(b"\x02\x06")
    with pytest.raises(PoisonRecordError, match="Checkout"):
        codec.decode(codec.encode(Command("Checkout", uuid.uuid4(), uuid.uuid4())))
    with pytest.raises(SerializationError):
        codec.decode(b"\x02\x00garbage")


def test_the_dendrites_scenario_folds_to_owner_o1_two_items_version_9() -> None:
    cmds, ids = dendrites_scenario()
    cart = fold(cmds)
    assert cart == Cart(ids["o1"], {ids["i1"]: 1, ids["i2"]: 2}, 9)


def test_invalid_commands_are_rejected_deterministically() -> None:
    cid, owner, item = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert isinstance(apply(None, Command("AddItem", cid, item, 1)), Rejected)
    cart = apply(None, Command("Insert", cid, owner))
    assert isinstance(cart, Cart) and cart.version == 0
    assert isinstance(apply(cart, Command("Insert", cid, owner)), Rejected)
    assert isinstance(apply(cart, Command("RemoveItem", cid, item, 1)), Rejected)
    assert isinstance(apply(cart, Command("AddItem", cid, item, None)), Rejected)
    two = apply(cart, Command("AddItem", cid, item, 2))
    assert isinstance(two, Cart) and two.items == {item: 2}
    emptied = apply(two, Command("RemoveItem", cid, item, 5))  # removing more than present empties the line
    assert isinstance(emptied, Cart) and emptied.items == {} and emptied.version == 2
    assert apply(emptied, Command("Delete", cid, uuid.UUID(int=0))) is None


def test_the_generated_stream_is_reproducible_and_partitioned_by_cart() -> None:
    a, b = generate(20, 500, seed=7), generate(20, 500, seed=7)
    assert a == b and a != generate(20, 500, seed=8)
    assert {c.action for c in a} >= {"Insert", "AddItem", "RemoveItem", "SetOwner"}
    ref = reference(a)
    assert len(ref) == 20
    cid = a[0].cart_id
    assert {partition_for(c.cart_id, 8) for c in a if c.cart_id == cid} == {partition_for(cid, 8)}


@pytest.mark.parametrize("seed", range(5))
def test_the_cart_decider_agrees_with_apply_and_skips_refused_events(seed: int) -> None:
    """The engine's decisions and the event log's fold give the carts :func:`fold` gives; the events the
    parallel and serial pipelines log for refused commands change nothing when folded."""
    from rxcqrs.decider import Reject
    from rxcqrs.examples.shoppingcart.domain import CARTS, event_of

    commands = generate(carts=8, commands=400, seed=seed)
    for cart_id, expected in reference(commands).items():
        mine = [c for c in commands if c.cart_id == cart_id]
        assert CARTS.run(mine) == expected
        decided, state = [], None
        for cmd in mine:
            answer = CARTS.decided(state, cmd)
            if not isinstance(answer, Reject):
                decided += answer
                state = CARTS.fold(answer, state)
        assert CARTS.fold(decided) == expected
        assert CARTS.fold(event_of(c) for c in mine) == expected  # every delivery logged, refusals included
