"""Avro codecs: both flavours, raw and Confluent framing, schema evolution, refusals with clear errors.

(No `from __future__ import annotations` here: dataclasses-avroschema needs real annotations.)
"""


import io
import json
import struct
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

import fastavro
import pytest
from dataclasses_avroschema import AvroModel, types

from rxcqrs.avro import AvroCodec, load_schema
from rxcqrs.exceptions import ConfigError, SerializationError


@dataclass
class Deposit(AvroModel):
    account: uuid.UUID
    amount: types.Int32
    at: datetime
    memo: Optional[str] = None

    class Meta:
        namespace = "tests.bank"


V1 = {"type": "record", "name": "Deposit", "namespace": "tests.bank", "fields": [
    {"name": "account", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "amount", "type": "int"},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}


def test_model_round_trip_is_raw_binary_avro_readable_by_any_avro_library() -> None:
    codec = AvroCodec.for_model(Deposit)
    deposit = Deposit(uuid.uuid4(), 250, datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=timezone.utc), "rent")
    data = codec.encode(deposit)
    assert codec.decode(data) == deposit
    # what a producer in another language reads and writes: plain binary encoding, no header
    plain = fastavro.schemaless_reader(io.BytesIO(data), fastavro.parse_schema(Deposit.avro_schema_to_python()))
    assert plain["amount"] == 250 and plain["account"] == deposit.account
    assert Deposit.deserialize(data) == deposit  # dataclasses-avroschema agrees byte for byte


def test_explicit_schema_with_a_user_function(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "deposit.avsc"
    path.write_text(json.dumps(V1))
    codec = AvroCodec.from_schema(path, from_record=lambda r: (str(r["account"]), r["amount"]),
                                  to_record=lambda t: {"account": t[0], "amount": t[1],
                                                       "at": datetime(2026, 1, 1, tzinfo=timezone.utc)})
    acc = str(uuid.uuid4())
    assert codec.decode(codec.encode((acc, 7))) == (acc, 7)
    assert load_schema(str(path)) == V1


def test_schema_evolution_old_bytes_into_the_new_model_with_the_writer_schema() -> None:
    old = AvroCodec(V1)
    at = datetime(2026, 5, 1, tzinfo=timezone.utc)
    acc = uuid.uuid4()
    data = old.encode({"account": acc, "amount": 3, "at": at})
    new = AvroCodec.for_model(Deposit, writer_schema=V1)
    assert new.decode(data) == Deposit(acc, 3, at, None)  # the new field takes its default
    # without the writer schema the bytes do not decode (they must travel with the data)
    with pytest.raises(SerializationError):
        AvroCodec.for_model(Deposit).decode(data)


def test_confluent_framing_resolves_each_writer_by_id() -> None:
    acc = uuid.uuid4()
    at = datetime(2026, 5, 1, tzinfo=timezone.utc)
    writer_v1 = AvroCodec(V1, framing="confluent", schema_id=1)
    framed = writer_v1.encode({"account": acc, "amount": 9, "at": at})
    assert framed[:5] == struct.pack(">bI", 0, 1)
    reader = AvroCodec.for_model(Deposit, framing="confluent", schema_id=2, registry={1: V1})
    assert reader.decode(framed) == Deposit(acc, 9, at)
    assert reader.decode(reader.encode(Deposit(acc, 1, at, "x"))).memo == "x"
    with pytest.raises(SerializationError, match="unknown writer schema id 7"):
        reader.decode(struct.pack(">bI", 0, 7) + framed[5:])
    with pytest.raises(SerializationError, match="magic byte"):
        reader.decode(b"\x01" + framed[1:])
    with pytest.raises(SerializationError, match="too short"):
        reader.decode(b"\x00\x00")


@pytest.mark.parametrize("garbage", [b"", b"\xff\xff\xff\xff\xff\xff", b"\x06abc", b"H" + b"z" * 36 + b"\x02"])
def test_malformed_bytes_are_a_serialization_error(garbage: bytes) -> None:
    with pytest.raises(SerializationError):
        AvroCodec.for_model(Deposit).decode(garbage)


def test_trailing_bytes_and_missing_values_are_refused() -> None:
    codec = AvroCodec.for_model(Deposit)
    data = codec.encode(Deposit(uuid.uuid4(), 1, datetime.now(timezone.utc)))
    with pytest.raises(SerializationError, match="trailing"):
        codec.decode(data + b"\x00")
    with pytest.raises(SerializationError, match="tombstone"):
        codec.decode(None)


def test_naive_datetimes_and_non_uuid_strings_are_refused_on_encode() -> None:
    codec = AvroCodec.for_model(Deposit)
    with pytest.raises(SerializationError, match="naive"):
        codec.encode(Deposit(uuid.uuid4(), 1, datetime(2026, 1, 1)))
    with pytest.raises(SerializationError, match="UUID"):
        codec.encode(Deposit("not-a-uuid", 1, datetime.now(timezone.utc)))  # type: ignore[arg-type]


def test_bad_configuration_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        AvroCodec({"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]})
    with pytest.raises(ConfigError):
        AvroCodec(V1, framing="confluent")
    with pytest.raises(ConfigError):
        AvroCodec(V1, framing="snappy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        load_schema("{not json")


def test_a_schema_registry_setting_that_cannot_work_is_refused_before_any_request() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        AvroCodec(V1, schema_registry="localhost:8081")
    with pytest.raises(ConfigError, match="leave framing out"):
        AvroCodec(V1, schema_registry="http://127.0.0.1:9/apis/ccompat/v7", framing="raw")
    with pytest.raises(ConfigError, match="schema_id comes from the registry"):
        AvroCodec(V1, schema_registry="http://127.0.0.1:9/apis/ccompat/v7", subject="s-value", schema_id=3)
    decoding = AvroCodec(V1, schema_registry="http://127.0.0.1:9/apis/ccompat/v7")  # no subject: decode only
    assert decoding.framing == "confluent"
    with pytest.raises(ConfigError, match="needs schema_id"):
        decoding.encode({"name": "x"})
