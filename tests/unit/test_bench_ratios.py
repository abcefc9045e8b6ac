"""The benchmark's ratios: medians of each round's own ratio."""
import pytest

from benchmarks.__main__ import paired_ratio, ratio_spread


def test_a_ratio_pairs_the_rounds_so_a_slow_round_moves_both_sides() -> None:
    # the second round ran on a machine twice as slow: both contenders' CPU doubled
    rx, hand = [100.0, 200.0, 110.0], [100.0, 200.0, 100.0]
    assert paired_ratio(rx, hand) == 1.0
    assert ratio_spread(rx, hand) == "1.00-1.10"
    # the ratio of the medians would have mixed rounds: 110 / 100
    assert round(sorted(rx)[1] / sorted(hand)[1], 2) == 1.1


def test_rounds_that_do_not_pair_are_refused() -> None:
    with pytest.raises(ValueError):
        paired_ratio([1.0, 2.0], [1.0])
