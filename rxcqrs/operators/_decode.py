from __future__ import annotations

import logging
import operator
import re
import uuid
from typing import Any, Callable, Literal, Protocol, TypeVar

from reactivex import Observable, abc

from rxcqrs.exceptions import ConfigError, PoisonRecordError, SchemaRegistryError
from rxcqrs.messages import Batch, Envelope, OutgoingRecord
from rxcqrs.operators._envelope import emit, envelope_operator

__all__ = ["decode_", "DeadLetters", "Decoder"]

T = TypeVar("T")
log = logging.getLogger(__name__)


class Decoder(Protocol[T]):  # type: ignore[misc]
    def decode(self, data: bytes | None) -> T: ...


class DeadLetters:
    """Sends poison records to ``<source topic><suffix>`` with their key, value and headers, plus headers naming
    the error (``rxcqrs.error.type``, ``.message``, and ``.cause``: what the decoder raised, e.g.
    ``UnknownSchemaError``) and the source topic/partition/offset; the record is acked only once that send was
    delivered."""

    def __init__(self, sink: abc.ObserverBase[Any], suffix: str = ".dlq") -> None:
        self.sink = sink
        self.suffix = suffix

    def send(self, env: Envelope[Any], error: BaseException) -> None:
        meta = env.meta
        headers = (*meta.headers,
                   ("rxcqrs.error.type", type(error).__name__.encode()),
                   ("rxcqrs.error.message", str(error).encode("utf-8", "replace")[:4000]),
                   *((("rxcqrs.error.cause", type(error.__cause__).__name__.encode()),) if error.__cause__ else ()),
                   ("rxcqrs.source.topic", meta.topic.encode()),
                   ("rxcqrs.source.partition", str(meta.partition).encode()),
                   ("rxcqrs.source.offset", str(meta.offset).encode()))
        record = OutgoingRecord(env.value if isinstance(env.value, (bytes, type(None))) else None, meta.key,
                                meta.topic + self.suffix, headers, timestamp_ms=meta.timestamp)
        env.count("dead_lettered")
        log.warning("dead-lettering %s to %s: %s", meta, record.topic, error)
        self.sink.on_next(Envelope(record, meta, env.ticket))


def decode_(decoder: Decoder[T] | Callable[[bytes | None], T], *, require_uuid_key: bool = False,
            dead_letters: DeadLetters | None = None, on_poison: Literal["dead_letter", "fail"] = "dead_letter"
            ) -> Callable[[Observable[Envelope[bytes | None]]], Observable[Envelope[T]]]:
    if on_poison not in ("dead_letter", "fail"):
        raise ConfigError(f"on_poison must be 'dead_letter' or 'fail', got {on_poison!r}")
    if on_poison == "dead_letter" and dead_letters is None:
        raise ConfigError("on_poison='dead_letter' needs dead_letters=DeadLetters(KafkaSink(...)); "
                          "or choose on_poison='fail'")
    decode = decoder.decode if hasattr(decoder, "decode") else decoder

    def handle(env: Envelope[Any], observer: abc.ObserverBase[Any]) -> None:
        try:
            if require_uuid_key:
                env.meta.key_uuid  # noqa: B018  (raises PoisonRecordError)
            value = decode(env.value)
        except SchemaRegistryError as exc:  # the registry, not the record: nacked (delivered again, or a stop)
            env.nack(exc)
            return
        except Exception as exc:
            poison = exc if isinstance(exc, PoisonRecordError) else PoisonRecordError(
                f"record {env.meta} is poison: {exc}")
            if poison is not exc:
                poison.__cause__ = exc
            if on_poison == "fail" or dead_letters is None:
                env.count("poison")
                env.nack(poison)
            else:
                dead_letters.send(env, poison)
            return
        emit(observer, env.with_value(value))

    def handle_batch(batch: Batch[Any], observer: abc.ObserverBase[Any], one: Callable[[Envelope[Any]], None]
                     ) -> None:
        """A batch whose every record decodes goes on whole; one with poison goes on as single records (the
        poison ones dead-lettered or nacked, as above)."""
        try:
            if require_uuid_key and not all(map(_CANONICAL_UUID, map(_key, batch.records))):  # a None key raises
                for record in batch.records:
                    _uuid_key(record.key)
            values = [decode(value) for value in batch.values]
        except Exception:
            for env in batch.envelopes():
                one(env)
            return
        emit(observer, batch.with_values(values))

    return envelope_operator(handle, "decode", handle_batch)


def _uuid_key(key: bytes | None) -> None:
    """Raise unless ``key`` is a UUID string (the canonical form is checked without parsing it)."""
    if key is None:
        raise PoisonRecordError("no key")
    if not _CANONICAL_UUID(key):
        uuid.UUID(key.decode("utf-8"))  # the other forms UUID() accepts (braces, urn:uuid:, no hyphens)


_key = operator.attrgetter("key")
_CANONICAL_UUID = re.compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}").fullmatch
