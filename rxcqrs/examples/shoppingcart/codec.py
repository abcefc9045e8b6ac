"""The command wire format: exactly ``shopping_cart_cmd.avsc``, raw binary Avro (no framing)."""

from __future__ import annotations

from importlib import resources
from typing import Any, Mapping

from rxcqrs.avro import AvroCodec, load_schema
from rxcqrs.examples.shoppingcart.domain import ACTIONS, Command
from rxcqrs.exceptions import PoisonRecordError

__all__ = ["SCHEMA", "command_codec", "command_from_record", "command_to_record"]

SCHEMA = load_schema((resources.files("rxcqrs.examples.shoppingcart") / "shopping_cart_cmd.avsc").read_text())


def command_from_record(record: Mapping[str, Any]) -> Command:
    """Decoded Avro record -> Command. An unknown action is a poison record (dead-letter topic)."""
    action = record["action"]
    if action not in ACTIONS:
        raise PoisonRecordError(f"unknown shopping-cart action {action!r}; expected one of {ACTIONS}")
    return Command(action, record["cart_id"], record["owner_or_item"], record["count"])


def command_to_record(cmd: Command) -> dict[str, Any]:
    return {"action": cmd.action, "cart_id": cmd.cart_id, "owner_or_item": cmd.owner_or_item, "count": cmd.count}


def command_codec(schema_registry: str | None = None, topic: str | None = None) -> AvroCodec[Command]:
    """Raw Avro by default; with ``schema_registry`` (a URL) the Confluent wire format, and with ``topic`` too
    the command schema registered under the topic's subject (for producing: an incompatible schema fails
    here)."""
    from rxcqrs.avro.registry import subject_of

    return AvroCodec.from_schema(SCHEMA, from_record=command_from_record, to_record=command_to_record,
                                 schema_registry=schema_registry,
                                 subject=subject_of(topic) if schema_registry and topic else None)
