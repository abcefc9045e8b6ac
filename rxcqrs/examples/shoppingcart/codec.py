"""The command wire format: exactly ``shopping_cart_cmd.avsc``, raw binary Avro (no framing)."""

from __future__ import annotations

from importlib import resources

from rxcqrs.avro import AvroCodec, load_schema
from rxcqrs.examples.shoppingcart.domain import Command, command_from_record

__all__ = ["SCHEMA", "command_codec"]

SCHEMA = load_schema((resources.files("rxcqrs.examples.shoppingcart") / "shopping_cart_cmd.avsc").read_text())


def command_codec() -> AvroCodec[Command]:
    return AvroCodec.from_schema(SCHEMA, from_record=command_from_record, to_record=Command.to_record)
