"""Avro with a real schema registry (Apicurio Registry's Confluent-compatible API, started by the tests):
registration and compatibility, the wire format, evolution resolved to the reader schema, every decoding
failure named, and two producers on one topic (one of them confluent-kafka's own ``AvroSerializer``, a client
rxcqrs did not write) consumed by ``rxcqrs cart consume --schema-registry``: every cart exact."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import uuid
from typing import Any

import pytest

from rxcqrs.avro import AvroCodec
from rxcqrs.avro.registry import SchemaRegistry, subject_of
from rxcqrs.examples.shoppingcart.codec import SCHEMA, command_codec, command_to_record
from rxcqrs.examples.shoppingcart.generator import generate, partition_for, reference
from rxcqrs.examples.shoppingcart.pipeline import publish_commands
from rxcqrs.examples.shoppingcart.store import CartStore
from rxcqrs.exceptions import (
    FramingError,
    PoisonRecordError,
    SchemaRegistryError,
    SchemaResolutionError,
    UnknownSchemaError,
)
from rxcqrs.kafka import ProducerSettings, create_topics
from rxcqrs.kafka.admin import read_topic

#: the command schema with a field added (optional, with a default): a compatible evolution
EVOLVED = {**SCHEMA, "fields": [*SCHEMA["fields"], {"name": "channel", "type": ["null", "string"], "default": None}]}


def schema_named(name: str, fields: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": fields}


def test_values_carry_the_id_and_evolved_writers_resolve_to_the_reader(rxcqrs_registry: str) -> None:
    subject = f"evolve-{uuid.uuid4().hex[:8]}-value"
    v1 = schema_named("Reading", [{"name": "sensor", "type": "string"}, {"name": "value", "type": "int"}])
    v2 = schema_named("Reading", [{"name": "sensor", "type": "string"}, {"name": "value", "type": "long"},
                                  {"name": "unit", "type": "string", "default": "C"}])
    old = AvroCodec(v1, schema_registry=rxcqrs_registry, subject=subject)
    new = AvroCodec(v2, schema_registry=rxcqrs_registry, subject=subject)
    assert old.schema_id != new.schema_id
    written_old, written_new = old.encode({"sensor": "a", "value": 7}), new.encode({"sensor": "b", "value": 2**40,
                                                                                    "unit": "K"})
    assert written_old[:5] == struct.pack(">bI", 0, old.schema_id)
    reader = AvroCodec(v2, schema_registry=rxcqrs_registry)  # decode only: no subject, nothing registered
    assert reader.decode(written_old) == {"sensor": "a", "value": 7, "unit": "C"}  # int widened, default filled
    assert reader.decode(written_new) == {"sensor": "b", "value": 2**40, "unit": "K"}
    narrow = AvroCodec(v1, schema_registry=rxcqrs_registry)
    assert narrow.decode(written_old) == {"sensor": "a", "value": 7}
    with pytest.raises(SchemaResolutionError, match="cannot be resolved"):
        narrow.decode(written_new)  # a long does not narrow to an int
    assert old.schema_id == AvroCodec(v1, schema_registry=rxcqrs_registry, subject=subject).schema_id
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    theirs = AvroDeserializer(SchemaRegistryClient({"url": rxcqrs_registry}), json.dumps(v2))
    assert theirs(written_old, None) == {"sensor": "a", "value": 7, "unit": "C"}  # confluent-kafka reads ours


def test_an_incompatible_schema_fails_at_start_in_one_line(rxcqrs_registry: str) -> None:
    subject = f"strict-{uuid.uuid4().hex[:8]}-value"
    SchemaRegistry(rxcqrs_registry).set_compatibility(subject, "BACKWARD")
    AvroCodec(schema_named("Order", [{"name": "id", "type": "string"}]), schema_registry=rxcqrs_registry,
              subject=subject)
    breaking = schema_named("Order", [{"name": "id", "type": "string"}, {"name": "total", "type": "long"}])
    with pytest.raises(SchemaRegistryError) as refused:
        AvroCodec(breaking, schema_registry=rxcqrs_registry, subject=subject)
    assert "incompatible" in str(refused.value) and "\n" not in str(refused.value)


def test_each_decoding_failure_is_named(rxcqrs_registry: str) -> None:
    codec = AvroCodec(schema_named("Ping", [{"name": "n", "type": "int"}]), schema_registry=rxcqrs_registry,
                      subject=f"ping-{uuid.uuid4().hex[:8]}-value")
    with pytest.raises(UnknownSchemaError, match="not in the registry"):
        codec.decode(struct.pack(">bI", 0, 987_654_321) + b"\x02")
    with pytest.raises(FramingError, match="magic byte"):
        codec.decode(b"\x01\x00\x00\x00\x01\x02")
    with pytest.raises(FramingError, match="too short"):
        codec.decode(b"\x00\x00")
    elsewhere = AvroCodec(schema_named("Ping", [{"name": "n", "type": "string"}]), schema_registry=rxcqrs_registry,
                          subject=f"other-{uuid.uuid4().hex[:8]}-value")
    with pytest.raises(SchemaResolutionError):
        codec.decode(elsewhere.encode({"n": "x"}))
    silent = AvroCodec(schema_named("Ping", [{"name": "n", "type": "int"}]),
                       schema_registry=SchemaRegistry("http://127.0.0.1:9/apis/ccompat/v7", timeout=0.5))
    with pytest.raises(SchemaRegistryError, match="did not answer") as unreachable:
        silent.decode(struct.pack(">bI", 0, 1) + b"\x02")
    assert not unreachable.value.permanent  # a registry outage is not poison: the record is delivered again


def test_two_producers_one_of_them_confluents_serializer_and_every_cart_exact(
        topic_factory: Any, kafka_bootstrap: str, group_id: str, cassandra_session: Any, keyspace: str,
        services_settings: Any, rxcqrs_registry: str) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    topic = topic_factory(4)
    create_topics([f"{topic}.dlq"], bootstrap_servers=kafka_bootstrap)
    SchemaRegistry(rxcqrs_registry).set_compatibility(subject_of(topic), "BACKWARD")
    commands = generate(30, 1200, seed=21)
    half = len(commands) // 2
    publish_commands(commands[:half], topic, 4, ProducerSettings(bootstrap_servers=kafka_bootstrap),
                     schema_registry=rxcqrs_registry)
    serializer = AvroSerializer(SchemaRegistryClient({"url": rxcqrs_registry}), json.dumps(EVOLVED),
                                to_dict=lambda cmd, _ctx: {**command_to_record(cmd), "channel": "web"})
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    context = SerializationContext(topic, MessageField.VALUE)
    for cmd in commands[half:]:
        producer.produce(topic, serializer(cmd, context), key=str(uuid.uuid4()).encode(),
                         partition=partition_for(cmd.cart_id, 4))
    producer.produce(topic, struct.pack(">bI", 0, 987_654_321) + b"\x00", key=str(uuid.uuid4()).encode(),
                     partition=0)  # an id the registry never gave: dead-lettered, saying which
    assert producer.flush(30) == 0
    ids = {struct.unpack(">bI", r.value[:5])[1] for r in read_topic(topic, bootstrap_servers=kafka_bootstrap)}
    assert len(ids) == 3  # the command schema, the evolved one, the unknown id

    env = {**os.environ, "RXCQRS_KAFKA_BOOTSTRAP": kafka_bootstrap, "RXCQRS_CASSANDRA_HOSTS": services_settings.host,
           "RXCQRS_CASSANDRA_PORT": str(services_settings.cassandra_port)}
    done = subprocess.run([sys.executable, "-m", "rxcqrs.cli", "cart", "consume", "--topic", topic, "--group",
                           group_id, "--keyspace", keyspace, "--create-schema", "--stop-when-idle", "2",
                           "--schema-registry", rxcqrs_registry], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "schemas from" in done.stdout, done.stdout + done.stderr
    stored = dict(CartStore(cassandra_session, keyspace).all_carts())
    assert stored == {cid: cart for cid, cart in reference(commands).items() if cart is not None}
    (dead,) = read_topic(f"{topic}.dlq", bootstrap_servers=kafka_bootstrap)
    headers = dict(dead.headers)
    assert headers["rxcqrs.error.type"] == PoisonRecordError.__name__.encode()
    assert headers["rxcqrs.error.cause"] == b"UnknownSchemaError"


def test_cart_produce_with_an_incompatible_subject_fails_before_creating_anything(
        kafka_bootstrap: str, rxcqrs_registry: str) -> None:
    from rxcqrs.kafka.admin import topic_partitions

    topic = f"t.registry.{uuid.uuid4().hex[:8]}"
    registry = SchemaRegistry(rxcqrs_registry)
    registry.set_compatibility(subject_of(topic), "BACKWARD")
    registry.register(subject_of(topic), schema_named("ShoppingCartCmd", [{"name": "action", "type": "int"}]))
    done = subprocess.run([sys.executable, "-m", "rxcqrs.cli", "cart", "produce", "--topic", topic,
                           "--schema-registry", rxcqrs_registry],
                          env={**os.environ, "RXCQRS_KAFKA_BOOTSTRAP": kafka_bootstrap}, capture_output=True,
                          text=True, timeout=120)
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 1 and len(errors) == 1 and "incompatible" in errors[0], done.stderr
    assert topic_partitions(topic, bootstrap_servers=kafka_bootstrap) is None
    assert command_codec(rxcqrs_registry).framing == "confluent"
