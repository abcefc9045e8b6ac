"""The cyclic garbage collector's young-generation threshold of a consumer process (process-wide: the
application sets it once, at start; rxcqrs never changes it on its own).

CPython collects its youngest generation once the number of container objects has grown by ``threshold0``
(700) since the last collection, and promotes what survives. A consumer with a window of records in flight
keeps every record's objects alive for a round trip or more, so at 700 they are all promoted and then
traversed by full collections (the whole heap each time) until they are gone: measured on 20,000 commands
over 200 carts, full collections cost rxcqrs batched 7-11 µs per command and the hand-written loop (a poll's
records in flight) 5-7. At 20,000 objects the young generation holds a burst of records until most of them
are done, and full collections all but stop (the measurements are in the README, "Throughput").
"""

from __future__ import annotations

import gc

from rxcqrs.exceptions import ConfigError

__all__ = ["young_threshold", "set_young_threshold"]


def young_threshold() -> int:
    """The current ``threshold0``."""
    return gc.get_threshold()[0]


def set_young_threshold(objects: int) -> int:
    """Collect the young generation once ``objects`` more container objects exist than at its last collection
    (the older generations' thresholds are kept); returns the previous value. 0 leaves the threshold as it is."""
    if isinstance(objects, bool) or not isinstance(objects, int) or objects < 0:
        raise ConfigError(f"the GC threshold must be a whole number of objects >= 0 (0: Python's own), got "
                          f"{objects!r}")
    previous, older, oldest = gc.get_threshold()
    if objects:
        gc.set_threshold(objects, older, oldest)
    return previous
