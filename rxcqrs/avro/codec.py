"""Avro codecs on the hot path: fastavro with parsed schemas, raw binary by default, Confluent framing optional.

Two flavours:

* :meth:`AvroCodec.for_model` - a ``dataclasses-avroschema`` ``AvroModel``; the schema is derived for you.
* :meth:`AvroCodec.from_schema` - an explicit ``.avsc`` schema plus your functions between the decoded
  record (a dict) and your object.

Raw binary Avro (no container, no framing) is what a producer in any language writes with a plain
``BinaryEncoder``. Schema evolution needs the writer's schema: pass ``writer_schema`` (raw), or use Confluent
framing (magic byte 0 + 4-byte big-endian schema id) with an id -> schema map or a schema registry
(``schema_registry=URL``, :mod:`rxcqrs.avro.registry`): encoding registers the schema under ``subject`` when
the codec is made (an incompatible schema fails there, in one line); decoding fetches each writer schema once
by its id and resolves it to the reader schema (Avro's rules: an added field needs a default, a removed one
is ignored, int widens to long, float or double). Decoding failures say which: :class:`FramingError`,
:class:`UnknownSchemaError`, :class:`SchemaResolutionError` (each a :class:`SerializationError`, so a poison
record); a registry that does not answer raises :class:`SchemaRegistryError` (not poison: the record is nacked
and delivered again).
"""

from __future__ import annotations

import io
import json
import struct
import uuid
from dataclasses import fields as dc_fields
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Generic, Literal, Mapping, TypeVar

import fastavro
from fastavro.types import Schema

from rxcqrs.avro.registry import SchemaRegistry
from rxcqrs.exceptions import (
    ConfigError,
    FramingError,
    SchemaResolutionError,
    SerializationError,
    UnknownSchemaError,
)

__all__ = ["AvroCodec", "load_schema", "Framing"]

T = TypeVar("T")
Framing = Literal["raw", "confluent"]
_MAGIC = 0
_HEADER = struct.Struct(">bI")


def load_schema(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A schema from a dict, a JSON string, or a path to an ``.avsc`` file."""
    if isinstance(source, Mapping):
        return dict(source)
    text = str(source)
    if isinstance(source, Path) or (not text.lstrip().startswith("{") and text.endswith(".avsc")):
        try:
            text = Path(source).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read Avro schema file {source}: {exc}") from exc
    try:
        loaded = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"Avro schema is not valid JSON: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError("an Avro record schema must be a JSON object")
    return loaded


def _parse(schema: Mapping[str, Any]) -> Schema:
    try:
        return fastavro.parse_schema(dict(schema))
    except Exception as exc:
        raise ConfigError(f"invalid Avro schema: {exc}") from exc


def _is_flat(schema: Mapping[str, Any]) -> bool:
    """True if every field is a primitive or logical type (or a union of them): ``Cls(**record)`` suffices."""
    def simple(t: Any) -> bool:
        if isinstance(t, str):
            return t in ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
        if isinstance(t, list):
            return all(simple(x) for x in t)
        if isinstance(t, Mapping):
            return "logicalType" in t and simple(t.get("type"))
        return False
    return all(simple(f["type"]) for f in schema.get("fields", []))


def _uuid_fields(schema: Mapping[str, Any]) -> tuple[str, ...]:
    def is_uuid(t: Any) -> bool:
        if isinstance(t, list):
            return any(is_uuid(x) for x in t)
        return isinstance(t, Mapping) and t.get("logicalType") == "uuid"
    return tuple(f["name"] for f in schema.get("fields", []) if is_uuid(f["type"]))


def _check_values(record: Mapping[str, Any], uuid_fields: tuple[str, ...]) -> None:
    """What fastavro would write wrongly without a word: naive datetimes (as local time), non-UUID strings."""
    for name, value in record.items():
        if isinstance(value, datetime) and value.tzinfo is None:
            raise SerializationError(f"field {name!r} is a naive datetime; fastavro would write it as local time. "
                                     "Use a timezone-aware UTC datetime.")
    for name in uuid_fields:
        value = record.get(name)
        if isinstance(value, str):
            try:
                uuid.UUID(value)
            except ValueError:
                raise SerializationError(f"field {name!r} must be a UUID, got {value!r}") from None


def _identity(value: Any) -> Any:
    """Without your functions the codec speaks plain dicts (the decoded record as it is)."""
    return value


class AvroCodec(Generic[T]):
    """Bytes <-> objects with one parsed reader schema and cached writer schemas."""

    def __init__(self, schema: str | Path | Mapping[str, Any], *,
                 from_record: Callable[[dict[str, Any]], T] | None = None,
                 to_record: Callable[[T], Mapping[str, Any]] | None = None,
                 framing: Framing | None = None, writer_schema: str | Path | Mapping[str, Any] | None = None,
                 schema_id: int | None = None, registry: Mapping[int, Any] | None = None,
                 schema_registry: SchemaRegistry | str | None = None, subject: str | None = None) -> None:
        if schema_registry is not None and framing == "raw":
            raise ConfigError("a schema registry frames values in the Confluent wire format: leave framing out")
        framing = framing or ("confluent" if schema_registry is not None else "raw")
        if framing not in ("raw", "confluent"):
            raise ConfigError(f"framing must be 'raw' or 'confluent', got {framing!r}")
        self.schema = load_schema(schema)
        self.parsed = _parse(self.schema)
        self.framing = framing
        self._uuid_fields = _uuid_fields(self.schema)
        self._from_record: Callable[[dict[str, Any]], Any] = from_record or _identity
        self._to_record: Callable[[Any], Mapping[str, Any]] = to_record or _identity
        self._writer = _parse(load_schema(writer_schema)) if writer_schema is not None else None
        self.schema_id = schema_id
        self._registry: dict[int, Schema] = {}
        for sid, writer in (registry or {}).items():
            self._registry[int(sid)] = _parse(load_schema(writer))
        self.schema_registry = SchemaRegistry(schema_registry) if isinstance(schema_registry, str) else schema_registry
        self.subject = subject
        if self.schema_registry is not None and subject is not None:
            if schema_id is not None:
                raise ConfigError("schema_id comes from the registry when a subject is given: leave it out")
            schema_id = self.schema_id = self.schema_registry.register(subject, self.schema)
        if framing == "confluent":
            if schema_id is not None:
                self._registry.setdefault(schema_id, self.parsed)
            if not self._registry and self.schema_registry is None:
                raise ConfigError("Confluent framing needs a registry (schema id -> writer schema), a schema_id or "
                                  "schema_registry=URL")

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def for_model(cls, model: type[T], **options: Any) -> "AvroCodec[T]":
        """A codec for a ``dataclasses_avroschema.AvroModel`` dataclass (schema derived from the class)."""
        if not hasattr(model, "avro_schema_to_python"):
            raise ConfigError(f"{model!r} is not a dataclasses_avroschema.AvroModel")
        schema = model.avro_schema_to_python()  # type: ignore[attr-defined]
        names = [f.name for f in dc_fields(model)]  # type: ignore[arg-type]
        if _is_flat(schema):
            def from_record(record: dict[str, Any]) -> T:
                return model(**record)

            def to_record(obj: T) -> dict[str, Any]:
                return {name: getattr(obj, name) for name in names}
        else:
            def from_record(record: dict[str, Any]) -> T:
                return model.parse_obj(record)  # type: ignore[attr-defined]

            def to_record(obj: T) -> dict[str, Any]:
                return obj.asdict()  # type: ignore[attr-defined]
        options.setdefault("from_record", from_record)
        options.setdefault("to_record", to_record)
        return cls(schema, **options)

    @classmethod
    def from_schema(cls, schema: str | Path | Mapping[str, Any], from_record: Callable[[dict[str, Any]], T],
                    to_record: Callable[[T], Mapping[str, Any]] | None = None, **options: Any) -> "AvroCodec[T]":
        """A codec for an explicit schema plus your record -> object function (and its inverse, to encode)."""
        return cls(schema, from_record=from_record, to_record=to_record, **options)

    # -- the hot path -------------------------------------------------------------------------------------
    def decode(self, data: bytes | None) -> T:
        """Bytes -> object. Any failure is a :class:`SerializationError` naming what went wrong."""
        if data is None:
            raise SerializationError("the record has no value (a tombstone); an Avro command was expected")
        view = memoryview(data)
        writer = self._writer
        if self.framing == "confluent":
            if len(data) < 5:
                raise FramingError(f"{len(data)} bytes are too short for Confluent framing (5-byte header)")
            magic, schema_id = _HEADER.unpack_from(data)
            if magic != _MAGIC:
                raise FramingError(f"unknown magic byte {magic} (Confluent framing starts with 0)")
            writer = self._registry.get(schema_id)
            if writer is None:
                writer = self._writer_of(schema_id)
            view = view[5:]
        stream = io.BytesIO(view)
        try:
            if writer is None:
                record = fastavro.schemaless_reader(stream, self.parsed, None)
            else:
                record = fastavro.schemaless_reader(stream, writer, self.parsed)
        except fastavro.read.SchemaResolutionError as exc:
            raise SchemaResolutionError(f"the writer schema cannot be resolved to {self.schema.get('name')}: "
                                        f"{exc}") from exc
        except Exception as exc:
            raise SerializationError(f"bytes do not decode with schema {self.schema.get('name')}: {exc!r}") from exc
        if stream.tell() != len(view):
            raise SerializationError(f"{len(view) - stream.tell()} trailing bytes after the Avro record "
                                     "(wrong schema or framing?)")
        try:
            return self._from_record(record)  # type: ignore[arg-type]
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(f"decoded record rejected by {self.schema.get('name')}: {exc!r}") from exc

    def _writer_of(self, schema_id: int) -> Schema:
        """The parsed writer schema of ``schema_id`` from the schema registry (then cached)."""
        if self.schema_registry is None:
            raise UnknownSchemaError(f"unknown writer schema id {schema_id}; known: {sorted(self._registry)}")
        try:
            writer = _parse(self.schema_registry.schema(schema_id))
        except ConfigError as exc:
            raise SchemaResolutionError(f"writer schema id {schema_id} does not parse: {exc}") from exc
        self._registry[schema_id] = writer
        return writer

    def encode(self, obj: T) -> bytes:
        """Object -> raw (or Confluent-framed) Avro bytes; naive datetimes and non-UUID strings are refused."""
        try:
            record = self._to_record(obj)
        except Exception as exc:
            raise SerializationError(f"cannot turn {obj!r} into an Avro record: {exc!r}") from exc
        _check_values(record, self._uuid_fields)
        stream = io.BytesIO()
        if self.framing == "confluent":
            if self.schema_id is None:
                raise ConfigError("encoding with Confluent framing needs schema_id (or schema_registry= with subject=)")
            stream.write(_HEADER.pack(_MAGIC, self.schema_id))
        try:
            fastavro.schemaless_writer(stream, self.parsed, record, strict_allow_default=True)
        except Exception as exc:
            raise SerializationError(f"cannot encode {obj!r} with schema {self.schema.get('name')}: {exc!r}") from exc
        return stream.getvalue()
