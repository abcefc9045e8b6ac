"""Approximate statistics: accuracy within their stated bounds, and merges equal to one summary of both."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxcqrs.approx import BloomFilter, CountMinSketch, DecayedValue, HyperLogLog, Moments, ReservoirQuantiles
from rxcqrs.exceptions import ConfigError


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200), st.integers(0, 200))
def test_moments_are_exact_and_merge_exactly(values: list[float], cut: int) -> None:
    whole, left, right = Moments(), Moments(), Moments()
    for i, x in enumerate(values):
        whole.add(x)
        (left if i < cut else right).add(x)
    merged = left.merge(right)
    mean = sum(values) / len(values)
    assert merged.count == len(values) and merged.min == min(values) and merged.max == max(values)
    assert merged.mean == pytest.approx(mean, rel=1e-9, abs=1e-6)
    assert merged.variance == pytest.approx(whole.variance, rel=1e-6, abs=1e-3)


def test_a_decayed_value_halves_every_half_life_and_merges() -> None:
    d = DecayedValue(half_life=10)
    d.add(8, t=0)
    assert d.value_at(10) == pytest.approx(4) and d.value_at(30) == pytest.approx(1)
    d.add(1, t=20)
    assert d.value_at(20) == pytest.approx(3)
    other = DecayedValue(10)
    other.add(2, t=20)
    assert d.merge(other).value_at(20) == pytest.approx(5)


def test_count_min_never_underestimates_and_stays_within_eps_n() -> None:
    rng = random.Random(1)
    sketch = CountMinSketch.for_error(eps=0.01, delta=0.01)
    truth: dict[int, int] = {}
    for _ in range(20_000):
        item = int(rng.paretovariate(1.2))
        truth[item] = truth.get(item, 0) + 1
        sketch.add(item)
    errors = [sketch.estimate(k) - v for k, v in truth.items()]
    assert min(errors) >= 0
    assert sum(e > 0.01 * 20_000 for e in errors) <= 0.01 * len(errors) + 1
    half = CountMinSketch(sketch.width, sketch.depth)
    assert sketch.merge(half).estimate(1) == sketch.estimate(1)


@settings(max_examples=5, deadline=None)
@given(st.integers(1_000, 60_000))
def test_hyperloglog_counts_distinct_items_within_five_percent(n: int) -> None:
    a, b = HyperLogLog(12), HyperLogLog(12)
    for i in range(n):
        (a if i % 2 else b).add(f"user-{i}")
        a.add(f"user-{i // 2}")  # repeats change nothing
    assert a.merge(b).cardinality() == pytest.approx(n, rel=0.05)
    small = HyperLogLog(12)
    for i in range(50):
        small.add(i)
    assert small.cardinality() == pytest.approx(50, rel=0.05)


def test_bloom_filter_has_no_false_negatives_and_about_its_error_rate() -> None:
    bloom = BloomFilter.for_capacity(5_000, 0.01)
    for i in range(5_000):
        bloom.add(f"in-{i}")
    assert all(f"in-{i}" in bloom for i in range(5_000))
    false_positives = sum(f"out-{i}" in bloom for i in range(20_000)) / 20_000
    assert false_positives < 0.02
    other = BloomFilter(bloom.bits, bloom.hashes)
    other.add("late")
    assert "late" in bloom.merge(other) and "in-1" in bloom.merge(other)


def test_reservoir_quantiles_find_the_median_and_merge() -> None:
    rng = random.Random(3)
    left, right = ReservoirQuantiles(2000, seed=1), ReservoirQuantiles(2000, seed=2)
    for i in range(50_000):
        (left if i % 3 else right).add(rng.gauss(100, 15))
    merged = left.merge(right)
    assert merged.seen == 50_000 and len(merged.sample) == 2000
    assert merged.quantile(0.5) == pytest.approx(100, abs=2.5)
    assert merged.quantile(0.9) == pytest.approx(100 + 1.2816 * 15, abs=3)


def test_bad_parameters_are_config_errors() -> None:
    for build in (lambda: CountMinSketch.for_error(0, 0.1), lambda: HyperLogLog(2), lambda: BloomFilter(4, 1),
                  lambda: BloomFilter.for_capacity(0, 0.1), lambda: DecayedValue(0), lambda: ReservoirQuantiles(0),
                  lambda: HyperLogLog(10).merge(HyperLogLog(11))):
        with pytest.raises(ConfigError):
            build()
