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
}
FALSE_ALARM_RULES = ("val_false_alarm", "line_false_alarm")  # the rules that promise a rate
SCHEMA = 2  # decision.json's layout: 2 added the bound, the calibration scores and the history


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
        return f"flags a good image like these {self.expected_false_alarm:.1%} of the time on average{bound}"

    def replacing(self, old: Decision) -> Decision:
        """This decision with `old` (and its history) kept in the record."""
        kept = {k: v for k, v in old.to_dict().items() if k not in ("previous", "calibration_scores")}
        return replace(self, previous=[kept, *old.previous])


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
                     rule: str = "val_false_alarm") -> Decision:
    """Image and pixel thresholds at `rate` on good images the model never trained on."""
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
    for note in notes:
        log.warning("decision threshold: %s", note)
    decision = Decision(threshold, pixel_threshold, rule, source, n, rate, expected, "; ".join(notes), bound,
                        CONFIDENCE, sorted(float(s) for s in scores), datetime.now(timezone.utc).isoformat(
                            timespec="seconds"))
    log.info("decision threshold %.4g on %s: it %s", threshold, source, decision.promise())
    return decision


def at_threshold(labels: np.ndarray, scores: np.ndarray, defect_types: list[str], threshold: float,
                 bound: float | None = None) -> dict[str, Any]:
    """The test split decided at the deployed threshold: false-alarm rate (good images flagged) and recall (per
    defect type too), each with its counts and Clopper–Pearson interval, precision and F1, and whether the measured
    false-alarm rate is consistent with the `bound` the threshold promised (its interval reaches down to it). Each
    is None where the split cannot define it (no good image, no defective one, nothing flagged)."""
    flagged, bad = scores >= threshold, labels.astype(bool)
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


def shift_test(decision: Decision, good_scores: np.ndarray, level: float = SHIFT_LEVEL) -> dict[str, Any] | None:
    """Do good images score like the calibration images? The one-sided rank-sum test of their conformal p-values
    (`dskd.stats.rank_sum_p_value`) at `level`; None where there is nothing to compare."""
    if not decision.calibration_scores or len(good_scores) == 0:
        return None
    p = rank_sum_p_value(decision.calibration_scores, [float(s) for s in good_scores])
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
