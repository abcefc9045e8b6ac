"""Envelope-aware reactivex operators: use them with ``.pipe(...)`` like any reactivex operator.

Per-record failures never end the stream: the envelope is nacked (its ticket says why) and the source's
failure policy decides what happens. Exceptions that escape a broadcast branch are nacks of that branch.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, TypeVar

from reactivex import Observable

from rxcqrs.messages import Envelope
from rxcqrs.operators._batch import batch_aware, takes_batches
from rxcqrs.operators._broadcast import AckAll, Branch
from rxcqrs.operators._decode import DeadLetters, Decoder
from rxcqrs.operators._spy import Spy

__all__ = ["map_value", "map_envelope", "filter_value", "tap", "decode", "broadcast", "branch", "Branch",
           "DeadLetters", "AckAll", "spy", "Spy", "collect_right", "flatten", "route_either",
           "map_async", "unbatch", "batch_aware", "takes_batches"]

T = TypeVar("T")
U = TypeVar("U")


def map_value(mapper: Callable[[T], U]) -> Callable[[Observable[Envelope[T]]], Observable[Envelope[U]]]:
    """Map each envelope's value, keeping its metadata and ticket; a raising mapper nacks that envelope.

    Example:
        >>> source.pipe(map_value(lambda cmd: cmd_to_event(cmd)))
    """
    from rxcqrs.operators._map_value import map_value_

    return map_value_(mapper)


def map_envelope(mapper: Callable[[Envelope[T]], U]) -> Callable[[Observable[Envelope[T]]], Observable[Envelope[U]]]:
    """Like :func:`map_value`, but the mapper sees the whole envelope (value and record metadata), e.g. to
    turn a command into an event whose id is the record key and whose time is the record timestamp."""
    from rxcqrs.operators._map_value import map_envelope_

    return map_envelope_(mapper)


def filter_value(predicate: Callable[[T], bool]) -> Callable[[Observable[Envelope[T]]], Observable[Envelope[T]]]:
    """Keep envelopes whose value satisfies ``predicate``; the others are acked (done), so commits go on."""
    from rxcqrs.operators._map_value import filter_value_

    return filter_value_(predicate)


def tap(action: Callable[[Envelope[T]], Any]) -> Callable[[Observable[Envelope[T]]], Observable[Envelope[T]]]:
    """Call ``action(envelope)`` for its side effect (logging, a notebook display) and pass it on."""
    from rxcqrs.operators._map_value import tap_

    return tap_(action)


def decode(decoder: Decoder[T] | Callable[[bytes | None], T], *, require_uuid_key: bool = False,
           dead_letters: DeadLetters | None = None, on_poison: Literal["dead_letter", "fail"] = "dead_letter"
           ) -> Callable[[Observable[Envelope[bytes | None]]], Observable[Envelope[T]]]:
    """Bytes -> objects with ``decoder`` (e.g. an :class:`~rxcqrs.avro.AvroCodec`).

    A poison record (bytes that do not decode; with ``require_uuid_key`` a missing or non-UUID key) goes to
    the dead-letter topic and is acked once delivered (``on_poison="dead_letter"``), or is nacked with a
    :class:`~rxcqrs.exceptions.PoisonRecordError` (``on_poison="fail"``).
    """
    from rxcqrs.operators._decode import decode_

    return decode_(decoder, require_uuid_key=require_uuid_key, dead_letters=dead_letters, on_poison=on_poison)


def branch(*stages: Any) -> Branch:
    """One leg of a :func:`broadcast`: operators, then optionally a sink (an observer) last."""
    from rxcqrs.operators._broadcast import branch_

    return branch_(*stages)


def broadcast(*branches: Any) -> Callable[[Observable[Envelope[Any]]], Observable[Any]]:
    """Feed every envelope to each branch (an observer, or a :func:`branch`); settle it when all branches did.

    Built on ``publish()`` + subscribe every branch + ``connect()``. Each branch gets its own share of the
    envelope's ticket: the record is done when every branch acked, and failed at the first nack. An
    exception escaping one branch becomes a nack of that branch's share; it never reaches the other branch.
    The resulting observable emits nothing: it completes when every branch completed.

    Example:
        >>> source.pipe(decode(codec, dead_letters=dlq),
        ...             broadcast(command_sink, branch(map_value(to_event), event_sink)))
    """
    from rxcqrs.operators._broadcast import broadcast_

    return broadcast_(*branches)


def spy(name: str) -> Spy:
    """An operator that counts what passes it and how each envelope ended downstream (acked/nacked), for
    debugging a pipeline: ``s = spy("after decode"); ...pipe(s, ...); s.metrics``."""
    from rxcqrs.operators._spy import spy_

    return spy_(name)


def collect_right(on_left: Callable[[Envelope[Any]], Any] | None = None
                  ) -> Callable[[Observable[Envelope[Any]]], Observable[Envelope[Any]]]:
    """Keep the value of each ``Right``; a ``Left`` is logged (or given to ``on_left``) and acked: an answer,
    not a failure."""
    from rxcqrs.operators._either import collect_right_

    return collect_right_(on_left)


def flatten() -> Callable[[Observable[Envelope[Any]]], Observable[Envelope[Any]]]:
    """One envelope of a sequence -> one envelope per element; the record is done when every element is
    (the commit still exact)."""
    from rxcqrs.operators._either import flatten_

    return flatten_()


def route_either(left: Any, right: Any) -> Callable[[Observable[Envelope[Any]]], Observable[Any]]:
    """Send each ``Left`` (unwrapped) to the ``left`` sink and each ``Right`` to the ``right`` sink."""
    from rxcqrs.operators._either import route_either_

    return route_either_(left, right)


def map_async(fn: Callable[[T], U], max_concurrency: int = 4
              ) -> Callable[[Observable[Envelope[T]]], Observable[Envelope[U]]]:
    """``fn(value)`` on a small thread pool (blocking I/O is fine), results in input order (Akka's mapAsync);
    a raising ``fn`` nacks that envelope; completion waits for every call."""
    from rxcqrs.operators._map_async import map_async_

    return map_async_(fn, max_concurrency)


def unbatch() -> Callable[[Observable[Any]], Observable[Any]]:
    """Each :class:`~rxcqrs.messages.Batch` as its envelopes (each settles its share of the batch's ticket),
    anything else unchanged. :func:`~rxcqrs.run` puts one before the first stage that does not take batches
    (see :func:`batch_aware`); use it yourself when you subscribe to ``source.observable`` directly."""
    from rxcqrs.operators._batch import unbatch_

    return unbatch_()
