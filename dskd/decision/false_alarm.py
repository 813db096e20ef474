"""The false-alarm rule, stated once.

With n good calibration scores sorted from the highest, the threshold lies just above the m-th highest,
m = floor(target * (n + 1)) and at least 1. For a new good image exchangeable with the calibration images, the chance
of a score above it is m / (n + 1) <= target on average over calibration draws (the expected rate); the rate of one
drawn threshold is Beta(m, n + 1 - m) distributed, so it is at most that law's 0.95 quantile with 95 % confidence
(the bound, `dskd.stats.false_alarm_bound`). With fewer than 1 / target - 1 images m is 1 and the expected rate is
1 / (n + 1), above the target, which the decision's note says.
"""

from __future__ import annotations

import numpy as np


def rank_of(n: int, target: float) -> int:
    """m of the rule: the threshold sits just above the m-th highest of n calibration scores."""
    return min(n, max(1, int(np.floor(target * (n + 1)))))


def false_alarm_threshold(scores: np.ndarray, target: float) -> tuple[float, float]:
    """(threshold, expected false-alarm rate) by the rule; the threshold is the next float32 above the m-th highest
    score, so that a score equal to it is not flagged and float32 engines decide alike."""
    s = np.asarray(scores, np.float32).ravel()
    n = s.size
    m = rank_of(n, target)
    kth = np.partition(s, n - m)[n - m]  # the m-th highest
    return float(np.nextafter(kth, np.float32(np.inf))), m / (n + 1)
