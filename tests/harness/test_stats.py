from __future__ import annotations

import itertools
import math
import random

import pytest

from kvtest.results.stats import _normal_p, _u_counts, mann_whitney_u, median, min_p_value


def _brute_counts(n1: int, n2: int) -> list[int]:
    counts = [0] * (n1 * n2 + 1)
    for picked in itertools.combinations(range(n1 + n2), n1):
        others = [v for v in range(n1 + n2) if v not in picked]
        counts[sum(1 for a in picked for b in others if a > b)] += 1
    return counts


@pytest.mark.parametrize(("n1", "n2"), [(1, 1), (2, 5), (3, 4), (5, 5), (4, 7)])
def test_exact_distribution_matches_enumeration(n1, n2):
    assert _u_counts(n1, n2) == _brute_counts(n1, n2)
    assert _u_counts(n2, n1) == _brute_counts(n1, n2)
    assert sum(_u_counts(n1, n2)) == math.comb(n1 + n2, n1)


def test_exact_p_values_from_the_tables():
    # complete separation of 5 vs 5: two-sided p = 2 / C(10, 5); scipy.stats.mannwhitneyu agrees
    u, p = mann_whitney_u([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert (u, p) == (0, pytest.approx(2 / 252))
    assert mann_whitney_u([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == (25, pytest.approx(2 / 252))
    # one swap: U = 1, p = 2 * 2 / 252
    assert mann_whitney_u([1, 2, 3, 4, 6], [5, 7, 8, 9, 10])[1] == pytest.approx(4 / 252)
    # interleaved: nothing tells them apart
    assert mann_whitney_u([1, 3, 5, 7, 9], [2, 4, 6, 8, 10])[1] > 0.6
    assert min_p_value(5, 5) == pytest.approx(2 / 252)
    assert min_p_value(3, 3) == pytest.approx(0.1)  # why 3 repeats can never be significant at 0.05


def test_normal_approximation_is_close_to_exact():
    rng = random.Random(7)
    x = [rng.gauss(10, 1) for _ in range(40)]
    y = [rng.gauss(10.8, 1) for _ in range(40)]
    u, exact = mann_whitney_u(x, y)  # 1600 pairs: counted exactly
    assert 0.001 < exact < 0.05
    assert _normal_p(u, 40, 40, x, y) == pytest.approx(exact, rel=0.1)
    bigger_x = x + [rng.gauss(10, 1) for _ in range(30)]
    bigger_y = y + [rng.gauss(10.8, 1) for _ in range(30)]
    assert mann_whitney_u(bigger_x, bigger_y)[1] < 0.001  # 4900 pairs: the approximation's path


def test_ties_and_identical_samples():
    assert mann_whitney_u([3.0] * 5, [3.0] * 5) == (12.5, 1.0)
    u, p = mann_whitney_u([1, 1, 2, 2, 2], [3, 3, 4, 4, 4])
    assert u == 0 and p < 0.05


def test_median_and_empty_input():
    assert median([3, 1, 2]) == 2
    assert median([4, 1, 3, 2]) == 2.5
    with pytest.raises(ValueError, match="median of no values"):
        median([])
    with pytest.raises(ValueError, match="at least one value on each side"):
        mann_whitney_u([], [1.0])
