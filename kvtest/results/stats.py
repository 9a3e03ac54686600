"""The statistics ``kvtest compare`` decides with: medians and the Mann-Whitney U rank test.

scipy is not a dependency, so the test is implemented here: the exact two-sided p-value when there are
no ties and the samples are small (as scipy's ``method="auto"`` and asv's ``statistics.mann_whitney_u``
do), else the normal approximation with tie and continuity correction. Google Benchmark's
``tools/gbench/report.py`` uses the same two-sided U test over repetitions, reported beside the change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["mann_whitney_u", "median", "min_p_value"]

#: the exact distribution is counted for up to this many (n1 * n2) sample pairs (e.g. 50 vs 50);
#: above it the normal approximation is close and counting would cost more than it is worth
_EXACT_PAIRS = 2_500


def median(values: Sequence[float]) -> float:
    """The middle value (mean of the two middle ones for an even count)."""
    if not values:
        raise ValueError("median of no values")
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _u_statistic(x: Sequence[float], y: Sequence[float]) -> tuple[float, bool]:
    """U of ``x`` (pairs where x wins, ties count one half) and whether any tie occurred, via ranks."""
    pooled = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    rank_sum_x = 0.0
    ties = False
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        if j > i:
            ties = True
        mid_rank = (i + j) / 2 + 1  # ranks are 1-based; a tied run shares its mean rank
        rank_sum_x += mid_rank * sum(1 for k in range(i, j + 1) if pooled[k][1] == 0)
        i = j + 1
    n1 = len(x)
    return rank_sum_x - n1 * (n1 + 1) / 2, ties


def _u_counts(n1: int, n2: int) -> list[int]:
    """How many of the C(n1+n2, n1) orderings give U = 0, 1, ..., n1*n2 (no ties).

    These are the coefficients of the Gaussian binomial [n1+n2 choose n1]_q, built from its product
    form prod_{i=1..m} (1 - q^(k+i)) / (1 - q^i) with m = min(n1, n2), k = max(n1, n2).
    """
    m, k = min(n1, n2), max(n1, n2)
    size = m * k + 1
    c = [0] * size
    c[0] = 1
    for i in range(1, m + 1):
        shift = k + i
        for d in range(size - 1, shift - 1, -1):  # multiply by (1 - q^(k+i))
            c[d] -= c[d - shift]
        for d in range(i, size):  # divide by (1 - q^i): a running sum with stride i
            c[d] += c[d - i]
    return c


def _normal_p(u: float, n1: int, n2: int, x: Sequence[float], y: Sequence[float]) -> float:
    n = n1 + n2
    counts: dict[float, int] = {}
    for v in (*x, *y):
        counts[v] = counts.get(v, 0) + 1
    tie_term = sum(t**3 - t for t in counts.values()) / (n * (n - 1)) if n > 1 else 0.0
    variance = n1 * n2 / 12 * ((n + 1) - tie_term)
    if variance <= 0:
        return 1.0  # every value equal: nothing tells the samples apart
    z = (abs(u - n1 * n2 / 2) - 0.5) / math.sqrt(variance)
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def mann_whitney_u(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """``(U, p)``: U of ``x`` against ``y`` and the two-sided p-value that both come from one distribution.

    A small p (e.g. below 0.05) says the samples differ beyond what their spread explains; the
    direction comes from comparing their medians.
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("the U test needs at least one value on each side")
    u, ties = _u_statistic(x, y)
    if not ties and n1 * n2 <= _EXACT_PAIRS:
        counts = _u_counts(n1, n2)
        total = math.comb(n1 + n2, n1)
        low = round(min(u, n1 * n2 - u))  # the distribution is symmetric: take the nearer tail
        p = 2 * sum(counts[: low + 1]) / total
        return u, min(1.0, p)
    return u, _normal_p(u, n1, n2, x, y)


def min_p_value(n1: int, n2: int) -> float:
    """The smallest two-sided p-value samples of these sizes can reach (every value on one side wins)."""
    return min(1.0, 2 / math.comb(n1 + n2, n1)) if n1 and n2 else 1.0
