"""Avro for rxcqrs: :class:`AvroCodec` (dataclasses-avroschema models or explicit schemas, via fastavro)."""

from rxcqrs.avro.codec import AvroCodec, Framing, load_schema

__all__ = ["AvroCodec", "Framing", "load_schema"]
