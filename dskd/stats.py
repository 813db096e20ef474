"""Exact binomial and order-statistic arithmetic behind the decisions: the bound a threshold promises, the
Clopper–Pearson interval of a measured rate, and the tests that say a line no longer looks like its calibration.

Pure Python (no SciPy): `calibrate` and `predict` run on line-side PCs that have NumPy and an inference runtime only.
Every Beta quantile here has whole-number parameters, where P(Beta(a, b) <= x) = P(Binomial(a + b - 1, x) >= a),
so a quantile is a bisection on a binomial tail.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CONFIDENCE = 0.95  # of every bound and interval the decisions state
SHIFT_LEVEL = 0.01  # of the tests that say the line's good images no longer score like the calibration images


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def beta_quantile(q: float, a: int, b: int) -> float:
    """The q-quantile of Beta(a, b) for whole a, b >= 1 (60 bisection steps: exact to double precision)."""
    if not (a >= 1 and b >= 1 and 0.0 <= q <= 1.0):
        raise ValueError(f"beta_quantile needs whole a, b >= 1 and q in [0, 1], not q={q}, a={a}, b={b}")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if binomial_tail(a, a + b - 1, mid) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def false_alarm_bound(m: int, n: int, confidence: float = CONFIDENCE) -> float:
    """The false-alarm rate a threshold just above the m-th highest of n exchangeable good scores holds with
    `confidence` over draws of those n images: its rate is Beta(m, n + 1 - m) distributed, mean m / (n + 1)."""
    return beta_quantile(confidence, m, n + 1 - m)


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval of a rate measured as k of n; (nan, nan) without a trial."""
    if n <= 0:
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    lo = 0.0 if k == 0 else beta_quantile(tail, k, n - k + 1)
    hi = 1.0 if k == n else beta_quantile(1 - tail, k + 1, n - k)
    return lo, hi


def rank_sum_p_value(*pairs: tuple[Sequence[float], Sequence[float]]) -> float:
    """One-sided p-value that the scores of each (calibration, scores) pair sit higher than its calibration
    (Mann–Whitney U, normal approximation with ties and continuity corrected). Its statistic is the sum of the
    scores' conformal p-values up to a linear map, and its null is their permutation distribution, which treats the
    p-values' shared calibration set right (a Kolmogorov–Smirnov test of them against the uniform law would take
    them as independent, which they are not).

    Several pairs (cross-fitting: one per fold, the same images scored by each fold's model) sum their U
    statistics; the sum's standard deviation is taken as the sum of theirs, its largest value under any dependence
    between the pairs, so the test stays valid (conservative) whatever that dependence."""
    u = mean = sd = 0.0
    for calibration, scores in pairs:
        n1, n2 = len(scores), len(calibration)
        if n1 == 0 or n2 == 0:
            return math.nan
        ui, var = _mann_whitney_u(calibration, scores)
        u, mean, sd = u + ui, mean + n1 * n2 / 2, sd + math.sqrt(var)
    if sd <= 0:
        return 1.0
    z = (u - mean - 0.5) / sd
    return 0.5 * math.erfc(z / math.sqrt(2))


def _mann_whitney_u(calibration: Sequence[float], scores: Sequence[float]) -> tuple[float, float]:
    """(U of `scores` against `calibration`, its null variance with ties corrected)."""
    n1, n2 = len(scores), len(calibration)
    pooled = sorted([(s, 1) for s in scores] + [(c, 0) for c in calibration])
    rank_sum, ties, i = 0.0, 0.0, 0
    while i < len(pooled):
        j = i
        while j < len(pooled) and pooled[j][0] == pooled[i][0]:
            j += 1
        mid_rank = (i + 1 + j) / 2
        rank_sum += mid_rank * sum(1 for _, is_score in pooled[i:j] if is_score)
        ties += (j - i) ** 3 - (j - i)
        i = j
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    return rank_sum - n1 * (n1 + 1) / 2, var
