"""The decision checked against what it meets: the test split decided (rates with Clopper–Pearson intervals, and
whether the false-alarm rate is consistent with the bound), the shift test (do good images still score like the
calibration images?) and the batch test (does a batch flag clearly more than the bound allows?)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..stats import SHIFT_LEVEL, binomial_tail, clopper_pearson, rank_sum_p_value
from .record import Decision


def at_threshold(labels: np.ndarray, flagged: np.ndarray, defect_types: list[str],
                 bound: float | None = None) -> dict[str, Any]:
    """The test split decided (`flagged`, by `Decision.flags`): false-alarm rate (good images flagged) and recall (per
    defect type too), each with its counts and Clopper–Pearson interval, precision and F1, and whether the measured
    false-alarm rate is consistent with the `bound` the threshold promised (its interval reaches down to it). Each
    is None where the split cannot define it (no good image, no defective one, nothing flagged)."""
    flagged, bad = np.asarray(flagged, bool), labels.astype(bool)
    n_bad, n_good, n_flagged = int(bad.sum()), int((~bad).sum()), int(flagged.sum())
    tp, fp = int((flagged & bad).sum()), int((flagged & ~bad).sum())
    recall = tp / n_bad if n_bad else None
    precision = tp / n_flagged if n_flagged and n_bad else None
    f1 = None if recall is None or precision is None else (
        0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    types = np.asarray(defect_types)
    per_type = {t: float(flagged[types == t].mean()) for t in sorted(set(types[bad].tolist()))}
    fa_interval = list(clopper_pearson(fp, n_good)) if n_good else None
    return {"false_alarm_rate": fp / n_good if n_good else None, "recall": recall,
            "precision_at_threshold": precision, "f1_at_threshold": f1, "per_defect_recall": per_type,
            "n_good": n_good, "good_flagged": fp, "defective_flagged": tp,
            "false_alarm_interval": fa_interval, "recall_interval": list(clopper_pearson(tp, n_bad)) if n_bad else None,
            "consistent_with_bound": None if fa_interval is None or bound is None else bool(fa_interval[0] <= bound)}


def shift_test(decision: Decision, good_scores: np.ndarray, level: float = SHIFT_LEVEL,
               set_scores: np.ndarray | None = None) -> dict[str, Any] | None:
    """Do good images score like the calibration images? The one-sided rank-sum test of their conformal p-values
    (`dskd.stats.rank_sum_p_value`) at `level`; cross-fitted, each set's scores against its own fold's, the
    statistics summed (`rank_sum_p_value`'s pairs). None where there is nothing to compare."""
    if not decision.calibration_scores or len(good_scores) == 0:
        return None
    if decision.out_of_fold_scores:
        per_set = np.asarray(set_scores, np.float64)
        p = rank_sum_p_value(*[(c, per_set[:, k].tolist()) for k, c in enumerate(decision.out_of_fold_scores)])
    else:
        p = rank_sum_p_value((decision.calibration_scores, [float(s) for s in good_scores]))
    return {"test": "one-sided Mann-Whitney U of the good images' scores against the calibration scores "
                    "(their conformal p-values against uniform ones)",
            "level": level, "p_value": p, "n_calibration": len(decision.calibration_scores),
            "n_good": int(len(good_scores)), "shifted": bool(p < level)}


def excess_flags(decision: Decision, n_flagged: int, n_images: int) -> float | None:
    """The p-value of flagging `n_flagged` of `n_images` if every one were a good image and the threshold's rate
    were its bound (a one-sided binomial test); None where the decision promises no rate."""
    if decision.bound_false_alarm is None or n_images == 0:
        return None
    return binomial_tail(n_flagged, n_images, decision.bound_false_alarm)
