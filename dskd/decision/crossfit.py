"""Cross-fitting's decision: K student sets on one teacher, set k trained on every good image but fold k, so that
every good image is a calibration image, scored by the set that never trained on it (its out-of-fold score).

An image is flagged by cross-conformal p-values (Vovk, 2015), not by a threshold on the sets' averaged score: each
set's score of the image is compared with that set's out-of-fold scores, and the exceedances are summed over the
sets. With one fold this is exactly the one-model threshold's decision (docs/deploy.md).
"""

from __future__ import annotations

import numpy as np

from ..errors import DskdError
from .false_alarm import rank_of


def exceedances(out_of_fold: list[list[float]], set_scores: np.ndarray | None) -> np.ndarray:
    """Per image (N x K scores, one per student set), how many out-of-fold scores of each set lie at or above that
    set's score of the image, summed over the sets."""
    k, s = len(out_of_fold), None if set_scores is None else np.asarray(set_scores, np.float64)
    if s is None or s.ndim != 2 or s.shape[1] != k:
        raise DskdError(f"a cross-fitted decision needs each of its {k} student sets' scores, got "
                        f"{None if s is None else s.shape}; score with the cross-fitted model it was set for")
    return sum(len(c) - np.searchsorted(np.asarray(c), s[:, i], side="left") for i, c in enumerate(out_of_fold))


def p_values(out_of_fold: list[list[float]], set_scores: np.ndarray) -> np.ndarray:
    """(1 + exceedances) / (n + 1), n the out-of-fold scores of all sets together."""
    return (1 + exceedances(out_of_fold, set_scores)) / (sum(map(len, out_of_fold)) + 1)


def flags(out_of_fold: list[list[float]], set_scores: np.ndarray | None, target: float) -> np.ndarray:
    """p-value <= m / (n + 1), i.e. fewer than m exceedances (m: the false-alarm rule's rank for the target)."""
    return exceedances(out_of_fold, set_scores) < rank_of(sum(map(len, out_of_fold)), target)


def worst_case(k: int, n: int, rate: float) -> str:
    """Vovk's (2015) guarantee for cross-conformal p-values, as docs/deploy.md states it, in words."""
    return f"cross-conformal over {k} folds: at most {2 * rate + 2 * (1 - rate) * (k - 1) / (n + k):.1%} on average " \
           "in the worst case"
