"""Approximate statistics over a stream: small, mergeable summaries.

* :class:`Moments` - count, mean, variance, min, max (exact; Welford's update, merges exactly).
* :class:`DecayedValue` - a sum whose past halves every ``half_life`` seconds (recent activity).
* :class:`CountMinSketch` - frequencies; never under-estimates, over-estimates by at most ``eps * N`` with
  probability ``1 - delta``.
* :class:`HyperLogLog` - distinct count; relative standard error about ``1.04 / sqrt(2**p)``.
* :class:`BloomFilter` - set membership; no false negatives, about ``error_rate`` false positives.
* :class:`ReservoirQuantiles` - quantiles from a uniform sample of ``k`` values.

Feed any of them from a pipeline with :func:`rxcqrs.operators.tap`: ``tap(lambda env: hll.add(env.value))``.
Every summary merges with another of the same shape (``a.merge(b)``), so per-partition or per-process
summaries combine, as Algebird's monoids do.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable

from rxcqrs.exceptions import ConfigError

__all__ = ["Moments", "DecayedValue", "CountMinSketch", "HyperLogLog", "BloomFilter", "ReservoirQuantiles"]


def _hash64(item: Any, salt: int = 0) -> int:
    data = item if isinstance(item, bytes) else repr(item).encode()
    digest = hashlib.blake2b(data, digest_size=8, salt=struct.pack("<Q", salt) + b"\0" * 8).digest()
    return int.from_bytes(digest, "little")


@dataclass
class Moments:
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def add(self, x: float) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)
        self.min = min(self.min, x)
        self.max = max(self.max, x)

    @property
    def variance(self) -> float:
        return self.m2 / self.count if self.count else 0.0

    def merge(self, other: "Moments") -> "Moments":
        n = self.count + other.count
        if n == 0:
            return Moments()
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / n
        m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / n
        return Moments(n, mean, m2, min(self.min, other.min), max(self.max, other.max))


@dataclass
class DecayedValue:
    half_life: float
    value: float = 0.0
    at: float = 0.0

    def __post_init__(self) -> None:
        if self.half_life <= 0:
            raise ConfigError("half_life must be > 0")

    def value_at(self, t: float) -> float:
        return self.value * 0.5 ** ((t - self.at) / self.half_life) if t >= self.at else self.value

    def add(self, x: float, t: float) -> None:
        """Add ``x`` observed at time ``t`` (seconds; times may arrive slightly out of order)."""
        if t >= self.at:
            self.value = self.value_at(t) + x
            self.at = t
        else:
            self.value += x * 0.5 ** ((self.at - t) / self.half_life)

    def merge(self, other: "DecayedValue") -> "DecayedValue":
        at = max(self.at, other.at)
        return DecayedValue(self.half_life, self.value_at(at) + other.value_at(at), at)


@dataclass
class CountMinSketch:
    width: int
    depth: int
    table: list[list[int]] = field(default_factory=list)
    total: int = 0

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1:
            raise ConfigError("width and depth must be >= 1")
        if not self.table:
            self.table = [[0] * self.width for _ in range(self.depth)]

    @classmethod
    def for_error(cls, eps: float, delta: float) -> "CountMinSketch":
        """Over-estimates by at most ``eps * total`` with probability at least ``1 - delta``."""
        if not 0 < eps < 1 or not 0 < delta < 1:
            raise ConfigError("eps and delta must be in (0, 1)")
        return cls(math.ceil(math.e / eps), math.ceil(math.log(1 / delta)))

    def _cells(self, item: Any) -> Iterable[tuple[int, int]]:
        return ((row, _hash64(item, row) % self.width) for row in range(self.depth))

    def add(self, item: Any, count: int = 1) -> None:
        self.total += count
        for row, col in self._cells(item):
            self.table[row][col] += count

    def estimate(self, item: Any) -> int:
        return min(self.table[row][col] for row, col in self._cells(item))

    def merge(self, other: "CountMinSketch") -> "CountMinSketch":
        if (self.width, self.depth) != (other.width, other.depth):
            raise ConfigError("only sketches of the same width and depth merge")
        table = [[a + b for a, b in zip(r1, r2, strict=True)] for r1, r2 in zip(self.table, other.table, strict=True)]
        return CountMinSketch(self.width, self.depth, table, self.total + other.total)


@dataclass
class HyperLogLog:
    p: int = 12
    registers: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        if not 4 <= self.p <= 18:
            raise ConfigError("p must be in 4..18")
        if not self.registers:
            self.registers = bytearray(1 << self.p)

    def add(self, item: Any) -> None:
        h = _hash64(item)
        index = h >> (64 - self.p)
        rest = (h << self.p) & ((1 << 64) - 1)
        rank = (64 - self.p + 1) if rest == 0 else (64 - rest.bit_length() + 1)
        if rank > self.registers[index]:
            self.registers[index] = rank

    def cardinality(self) -> float:
        m = len(self.registers)
        alpha = 0.7213 / (1 + 1.079 / m)
        estimate = alpha * m * m / sum(2.0 ** -r for r in self.registers)
        zeros = self.registers.count(0)
        if estimate <= 2.5 * m and zeros:
            return m * math.log(m / zeros)  # linear counting for small cardinalities
        return estimate

    def merge(self, other: "HyperLogLog") -> "HyperLogLog":
        if self.p != other.p:
            raise ConfigError("only HyperLogLogs of the same precision merge")
        return HyperLogLog(self.p, bytearray(max(a, b) for a, b in zip(self.registers, other.registers,
                                                                         strict=True)))


@dataclass
class BloomFilter:
    bits: int
    hashes: int
    array: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        if self.bits < 8 or self.hashes < 1:
            raise ConfigError("a Bloom filter needs at least 8 bits and 1 hash")
        if not self.array:
            self.array = bytearray((self.bits + 7) // 8)

    @classmethod
    def for_capacity(cls, capacity: int, error_rate: float) -> "BloomFilter":
        if capacity < 1 or not 0 < error_rate < 1:
            raise ConfigError("capacity must be >= 1 and error_rate in (0, 1)")
        bits = math.ceil(-capacity * math.log(error_rate) / math.log(2) ** 2)
        return cls(max(bits, 8), max(1, round(bits / capacity * math.log(2))))

    def _positions(self, item: Any) -> Iterable[int]:
        h1, h2 = _hash64(item, 1), _hash64(item, 2) | 1  # double hashing
        return ((h1 + i * h2) % self.bits for i in range(self.hashes))

    def add(self, item: Any) -> None:
        for pos in self._positions(item):
            self.array[pos >> 3] |= 1 << (pos & 7)

    def __contains__(self, item: Any) -> bool:
        return all(self.array[pos >> 3] & (1 << (pos & 7)) for pos in self._positions(item))

    def merge(self, other: "BloomFilter") -> "BloomFilter":
        if (self.bits, self.hashes) != (other.bits, other.hashes):
            raise ConfigError("only Bloom filters of the same shape merge")
        return BloomFilter(self.bits, self.hashes, bytearray(a | b for a, b in zip(self.array, other.array,
                                                                                   strict=True)))


@dataclass
class ReservoirQuantiles:
    k: int = 1024
    seed: int = 0
    seen: int = 0
    sample: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError("k must be >= 1")
        self._rng = random.Random(self.seed)

    def add(self, x: float) -> None:
        self.seen += 1
        if len(self.sample) < self.k:
            self.sample.append(x)
        else:
            slot = self._rng.randrange(self.seen)
            if slot < self.k:
                self.sample[slot] = x

    def quantile(self, q: float) -> float:
        if not 0 <= q <= 1:
            raise ConfigError("q must be in [0, 1]")
        if not self.sample:
            raise ValueError("no values yet")
        ordered = sorted(self.sample)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def merge(self, other: "ReservoirQuantiles") -> "ReservoirQuantiles":
        """A uniform sample of the union: draw from each side in proportion to what it saw."""
        merged = ReservoirQuantiles(self.k, self.seed)
        merged.seen = self.seen + other.seen
        if merged.seen == 0:
            return merged
        take_self = round(self.k * self.seen / merged.seen)
        rng = random.Random(self.seed ^ other.seed ^ merged.seen)
        mine = rng.sample(self.sample, min(take_self, len(self.sample)))
        theirs = rng.sample(other.sample, min(self.k - len(mine), len(other.sample)))
        merged.sample = mine + theirs
        return merged
