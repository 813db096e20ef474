"""The deployed decision: a threshold chosen without any test label, what it promises, and what it does on the test
split.

An image is "defective" when its score reaches the image threshold; the overlay outlines the pixels at or above
the pixel threshold. Both come from good images the model never trained on (the validation split) at a target
false-alarm rate, from good images taken on the line (`python -m dskd calibrate`), from the training images when
there is no validation split (said so), or, for one evaluation only, from a labelled folder the user names (F1-max
on that folder). The test split is only ever scored at the result.

The false-alarm rule, stated once: with n good calibration scores sorted from the highest, the threshold lies just
above the m-th highest, m = floor(rate * (n + 1)) and at least 1. For a new good image exchangeable with the
calibration images, the chance of a score above it is m / (n + 1) <= rate on average over calibration draws (the
expected rate); the rate of one drawn threshold is Beta(m, n + 1 - m) distributed, so it is at most that law's 0.95
quantile with 95 % confidence (the bound). Both are recorded, and the log says both in one line. With fewer than
1 / rate - 1 images m is 1 and the expected rate is 1 / (n + 1), above the target, which the note says.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..errors import DskdError
from ..settings import REQUIRED, check_values, setting
from ..stats import CONFIDENCE, SHIFT_LEVEL, binomial_tail, clopper_pearson, false_alarm_bound, rank_sum_p_value

log = logging.getLogger(__name__)
RULES = {
    "val_false_alarm": "the validation images' scores at the target false-alarm rate",
    "line_false_alarm": "good images from the line at the target false-alarm rate (python -m dskd calibrate)",
    "train_mean_plus_3std": "the training images' mean score + 3 std (no validation split)",
    "f1_max_on_folder": "the F1-max threshold on a labelled folder the user named (one evaluation only)",
    "cross_conformal": "every good training image, scored by the student set that never trained on it, at the "
                       "target false-alarm rate (cross-conformal p-values, docs/deploy.md)",
}
FALSE_ALARM_RULES = ("val_false_alarm", "line_false_alarm", "cross_conformal")  # the rules that promise a rate
SCHEMA = 3  # decision.json's layout: 2 added the bound, the calibration scores and the history; 3 the fold scores


@dataclass(frozen=True)
class Decision:
    threshold: float = setting(REQUIRED, "image level: defective when score >= threshold")
    pixel_threshold: float = setting(REQUIRED, "the overlay's outline: pixels >= it")
    rule: str = setting(REQUIRED, "how it was set", tuple(RULES))
    source: str = setting(REQUIRED, "the images it was set on, in words")
    n_images: int = setting(REQUIRED, "how many", at_least=0)
    target_false_alarm: float | None = setting(None, "the false-alarm rate asked for", above=0, below=1)
    expected_false_alarm: float | None = setting(None, "m / (n + 1): the rate on average over calibration draws; "
                                                       "None for rules that promise none", at_least=0, at_most=1)
    note: str = setting("", "what the log warned of when it was set")
    bound_false_alarm: float | None = setting(None, "the rate held with `confidence` over calibration draws",
                                              at_least=0, at_most=1)
    confidence: float | None = setting(None, "of the bound", above=0, below=1)
    calibration_scores: list[float] = setting(help="sorted; what the shift test compares the test's good images with",
                                              factory=list)
    set_at: str = setting("", "when, UTC, ISO 8601")
    previous: list[dict] = setting(help="the decisions it replaced, the latest first (without their scores)",
                                   factory=list)
    fold_scores: list[list[float]] = setting(help="cross_conformal: per fold, its images' scores by the student set "
                                                  "that never trained on them, sorted", factory=list)
    schema: int = setting(SCHEMA, "decision.json's layout", at_least=1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "decision.json") -> Decision:
        """A decision as stored, checked field by field against the fields' types and ranges; one that predates a
        field gets its default, and a false-alarm decision from before the bound was recorded gets it computed."""
        remedy = "calibrate the run again (python -m dskd calibrate --run RUN GOOD_DIR), or delete it and evaluate"
        if not isinstance(d, dict):
            raise DskdError(f"{where}: not a decision (a JSON object was expected); {remedy}")
        d = {"pixel_threshold": d.get("threshold"), **d}  # files from before the overlay had its own threshold
        missing = [f.name for f in fields(cls) if f.metadata.get("required") and d.get(f.name) is None]
        if missing:
            raise DskdError(f"{where}: field '{missing[0]}' is missing; {remedy}")
        decision = cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
        try:
            check_values(decision)
        except DskdError as exc:
            raise DskdError(f"{where}: {exc}; {remedy}") from None
        if decision.schema > SCHEMA:
            raise DskdError(f"{where} was written by a newer dskd (decision schema {decision.schema}); update dskd")
        if (decision.rule == "cross_conformal") != bool(decision.fold_scores) or \
                sum(map(len, decision.fold_scores)) not in (0, decision.n_images):
            raise DskdError(f"{where}: its fold scores do not fit its rule '{decision.rule}' and its "
                            f"{decision.n_images} images; {remedy}")
        if decision.rule in FALSE_ALARM_RULES and decision.bound_false_alarm is None and decision.n_images > 0 \
                and decision.target_false_alarm is not None:
            m = rank_of(decision.n_images, decision.target_false_alarm)
            decision = replace(decision, bound_false_alarm=false_alarm_bound(m, decision.n_images),
                               confidence=CONFIDENCE)
        return decision

    def promise(self) -> str:
        """What the threshold promises a good image, in one phrase."""
        if self.expected_false_alarm is None:
            return f"no false-alarm rate is promised ({RULES.get(self.rule, self.rule)})"
        bound = "" if self.bound_false_alarm is None else \
            f", at most {self.bound_false_alarm:.1%} with {self.confidence:.0%} confidence"
        worst = ""
        if self.fold_scores:  # Vovk's (2015) guarantee for cross-conformal p-values, as docs/deploy.md states it
            k, n, rate = len(self.fold_scores), self.n_images, self.expected_false_alarm
            worst = f" (cross-conformal over {k} folds: at most {2 * rate + 2 * (1 - rate) * (k - 1) / (n + k):.1%} " \
                    "on average in the worst case)"
        return f"flags a good image like these {self.expected_false_alarm:.1%} of the time on average{bound}{worst}"

    def replacing(self, old: Decision) -> Decision:
        """This decision with `old` (and its history) kept in the record."""
        kept = {k: v for k, v in old.to_dict().items() if k not in ("previous", "calibration_scores", "fold_scores")}
        return replace(self, previous=[kept, *old.previous])

    def decides_by(self) -> str:
        """How it decides, in words: its threshold, or the p-value a cross-fitted model's images must not exceed."""
        if not self.fold_scores:
            return f"score >= {self.threshold:.4g}"
        m = rank_of(self.n_images, self.target_false_alarm)
        return f"cross-conformal p-value <= {m}/{self.n_images + 1} over {len(self.fold_scores)} folds"

    def flags(self, scores: np.ndarray, member_scores: np.ndarray | None = None) -> np.ndarray:
        """Which images it calls defective: score >= threshold; under the cross-conformal rule, those whose
        p-value (1 + `exceedances`) / (n + 1) is at most m / (n + 1), i.e. fewer than m exceedances (with one
        fold, exactly the threshold's decision)."""
        if not self.fold_scores:
            return np.asarray(scores) >= self.threshold
        return self.exceedances(member_scores) < rank_of(self.n_images, self.target_false_alarm)

    def p_values(self, member_scores: np.ndarray) -> np.ndarray:
        """Cross-conformal p-values: (1 + `exceedances`) / (n + 1)."""
        return (1 + self.exceedances(member_scores)) / (self.n_images + 1)

    def exceedances(self, member_scores: np.ndarray | None) -> np.ndarray:
        """Per image (N x K scores, one per student set), how many out-of-fold calibration scores of each set lie
        at or above that set's score of the image, summed over the sets."""
        k, s = len(self.fold_scores), None if member_scores is None else np.asarray(member_scores, np.float64)
        if s is None or s.ndim != 2 or s.shape[1] != k:
            raise DskdError(f"a cross-fitted decision needs each of its {k} student sets' scores, got "
                            f"{None if s is None else s.shape}; score with the cross-fitted model it was set for")
        return sum(len(c) - np.searchsorted(np.asarray(c), s[:, i], side="left")
                   for i, c in enumerate(self.fold_scores))


def rank_of(n: int, rate: float) -> int:
    """m of the rule: the threshold sits just above the m-th highest of n calibration scores."""
    return min(n, max(1, int(np.floor(rate * (n + 1)))))


def false_alarm_threshold(scores: np.ndarray, rate: float) -> tuple[float, float]:
    """(threshold, expected false-alarm rate) by the module's rule; the threshold is the next float32 above the
    m-th highest score, so that a score equal to it is not flagged and float32 engines decide alike."""
    s = np.asarray(scores, np.float32).ravel()
    n = s.size
    m = rank_of(n, rate)
    kth = np.partition(s, n - m)[n - m]  # the m-th highest
    return float(np.nextafter(kth, np.float32(np.inf))), m / (n + 1)


def from_good_images(scores: np.ndarray, maps: np.ndarray, rate: float, source: str,
                     rule: str = "val_false_alarm", announce: bool = True) -> Decision:
    """Image and pixel thresholds at `rate` on good images the model never trained on; the log says what they
    promise (and warns of their notes) unless `announce` is False (a cross-fitting set's own decision, which its
    run's replaces)."""
    scores = np.asarray(scores, np.float32).ravel()
    if scores.size == 0:
        raise DskdError(f"no good images to set a threshold on ({source})")
    threshold, expected = false_alarm_threshold(scores, rate)
    pixel_threshold, _ = false_alarm_threshold(maps, rate)
    n = len(scores)
    bound = false_alarm_bound(rank_of(n, rate), n)
    notes = []
    if expected > rate * 1.0001:
        notes.append(f"{n} calibration images support a false-alarm rate of 1/{n + 1} = {expected:.1%} at best, "
                     f"not the {rate:.1%} asked for; the threshold sits above their highest score (use at least "
                     f"{int(np.ceil(1 / rate)) - 1} good images for {rate:.1%})")
    if np.ptp(scores) == 0:
        notes.append(f"all {n} calibration scores are equal ({float(scores[0]):.4g}): the model does not "
                     "tell these images apart; check that they are real, varied images")
    decision = Decision(threshold, pixel_threshold, rule, source, n, rate, expected, "; ".join(notes), bound,
                        CONFIDENCE, sorted(float(s) for s in scores), datetime.now(timezone.utc).isoformat(
                            timespec="seconds"))
    return _announced(decision) if announce else decision


def _announced(decision: Decision) -> Decision:
    if decision.note:
        log.warning("decision threshold: %s", decision.note)
    log.info("decision threshold %.4g on %s: it %s", decision.threshold, decision.source, decision.promise())
    return decision


def from_folds(fold_scores: list[list[float]], pixel_threshold: float, rate: float, source: str) -> Decision:
    """The cross-conformal decision at `rate` on the out-of-fold scores of K student sets. Its image decision is
    `Decision.flags`'; its `threshold`, the pooled scores' by the one-model rule, is what plots and overlays show."""
    pooled = np.concatenate([np.asarray(f, np.float32).ravel() for f in fold_scores])
    decision = from_good_images(pooled, np.zeros(1, np.float32), rate, source, "cross_conformal", announce=False)
    return _announced(replace(decision, pixel_threshold=float(pixel_threshold),
                              fold_scores=[sorted(float(s) for s in np.asarray(f).ravel()) for f in fold_scores]))


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
               member_scores: np.ndarray | None = None) -> dict[str, Any] | None:
    """Do good images score like the calibration images? The one-sided rank-sum test of their conformal p-values
    (`dskd.stats.rank_sum_p_value`) at `level`; cross-fitted, each set's scores against its own fold's, the
    statistics summed (`rank_sum_p_value`'s pairs). None where there is nothing to compare."""
    if not decision.calibration_scores or len(good_scores) == 0:
        return None
    if decision.fold_scores:
        member = np.asarray(member_scores, np.float64)
        p = rank_sum_p_value(*[(c, member[:, k].tolist()) for k, c in enumerate(decision.fold_scores)])
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
