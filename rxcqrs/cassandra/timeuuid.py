"""time_uuid: a version-1 (time-based) UUID for "now", unique within this process and cheap.

The driver's ``uuid_from_time(time.time())`` draws a random node and clock sequence for every call (about
5 us); the event log makes one per logged event. Here the node and clock sequence are drawn once per process
(again after a fork) and the 100-ns timestamp never repeats within the process (a tick already used moves
on by one), so two loggings in this process never share a ``logged_at``; across processes the random
48-bit node (multicast bit set, as RFC 4122 asks of random nodes) and 14-bit clock sequence keep them apart.

``uuid_of_int`` is ``uuid.UUID(int=value)`` without its argument checks (half the cost; for values this
package builds, whose range is known).
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid

__all__ = ["time_uuid", "uuid_of_int"]

_UUID_EPOCH = 0x01B21DD213814000  # 100-ns intervals from 1582-10-15 to 1970-01-01
_lock = threading.Lock()
_last = 0
_low = 0  # clock sequence (with the variant bits) and node: the low 64 bits, fixed per process


def _seed() -> None:
    global _low, _last
    node = random.getrandbits(48) | 0x010000000000
    clock_seq = random.getrandbits(14)
    _low = ((0x80 | (clock_seq >> 8)) << 56) | ((clock_seq & 0xFF) << 48) | node
    _last = 0


_seed()
_new, _set, _UUID, _UNKNOWN = object.__new__, object.__setattr__, uuid.UUID, uuid.SafeUUID.unknown


def uuid_of_int(value: int) -> uuid.UUID:
    """``uuid.UUID(int=value)`` for a ``value`` known to be in ``[0, 2**128)`` (the stdlib's own fast path in
    later Pythons, ``UUID._from_int``)."""
    made = _new(_UUID)
    _set(made, "int", value)
    _set(made, "is_safe", _UNKNOWN)
    return made


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_seed)


def time_uuid() -> uuid.UUID:
    """A timeuuid for the current time (100-ns ticks, strictly increasing within the process)."""
    global _last
    now = time.time_ns() // 100 + _UUID_EPOCH
    with _lock:
        if now <= _last:
            now = _last + 1
        _last = now
    high = ((now & 0xFFFFFFFF) << 32) | (((now >> 32) & 0xFFFF) << 16) | 0x1000 | ((now >> 48) & 0x0FFF)
    return uuid_of_int((high << 64) | _low)
