"""The deployed decision: a threshold chosen without any test label, and what it does on the test split.

An image is "defective" when its score reaches the image threshold; the overlay outlines the pixels at or above
the pixel threshold. Both come from good images the model never trained on (the validation split) at a target
false-alarm rate, from the training images when there is no validation split (said so), or, on request, from a
labelled folder the user names (F1-max on that folder). The test split is only ever scored at the result.

The false-alarm rule, stated once: with n validation scores sorted from the highest, the threshold lies just above
the m-th highest, m = floor(rate * (n + 1)) and at least 1. For a new good image exchangeable with the validation
images, the chance of a score above it is m / (n + 1) <= rate; with fewer than 1 / rate - 1 images m is 1 and the
rate it supports is 1 / (n + 1), which the decision records and the log says.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
RULES = {
    "val_false_alarm": "the validation images' scores at the target false-alarm rate",
    "train_mean_plus_3std": "the training images' mean score + 3 std (no validation split)",
    "f1_max_on_folder": "the F1-max threshold on a labelled folder the user named (--threshold-from)",
}


@dataclass(frozen=True)
class Decision:
    threshold: float  # image level: defective when score >= threshold
    pixel_threshold: float  # the overlay's outline: pixels >= it
    rule: str  # a key of RULES
    source: str  # the images it was set on, in words
    n_images: int
    target_false_alarm: float | None
    expected_false_alarm: float | None  # what the rule supports with n_images (m / (n + 1)); None for other rules
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def false_alarm_threshold(scores: np.ndarray, rate: float) -> tuple[float, float]:
    """(threshold, expected false-alarm rate) by the module's rule; the threshold is the next float32 above the
    m-th highest score, so that a score equal to it is not flagged and float32 engines decide alike."""
    s = np.asarray(scores, np.float32).ravel()
    n = s.size
    m = min(n, max(1, int(np.floor(rate * (n + 1)))))
    kth = np.partition(s, n - m)[n - m]  # the m-th highest
    return float(np.nextafter(kth, np.float32(np.inf))), m / (n + 1)


def from_good_images(scores: np.ndarray, maps: np.ndarray, rate: float, source: str) -> Decision:
    """The default decision: image and pixel thresholds at `rate` on good validation images."""
    threshold, expected = false_alarm_threshold(scores, rate)
    pixel_threshold, _ = false_alarm_threshold(maps, rate)
    notes = []
    if expected > rate * 1.0001:
        notes.append(f"{len(scores)} validation images support a false-alarm rate of 1/{len(scores) + 1} = "
                     f"{expected:.1%} at best, not the {rate:.1%} asked for; the threshold sits above their highest "
                     f"score (hold out at least {int(np.ceil(1 / rate)) - 1} images for {rate:.1%})")
    if np.ptp(scores) == 0:
        notes.append(f"all {len(scores)} validation scores are equal ({float(scores[0]):.4g}): the model does not "
                     "tell these images apart; check that they are real, varied images")
    for note in notes:
        log.warning("decision threshold: %s", note)
    return Decision(threshold, pixel_threshold, "val_false_alarm", source, len(scores), rate, expected,
                    "; ".join(notes))


def at_threshold(labels: np.ndarray, scores: np.ndarray, defect_types: list[str],
                 threshold: float) -> dict[str, Any]:
    """The test split decided at the deployed threshold: false-alarm rate (good images flagged), recall (per defect
    type too), precision and F1. Each is None where the split cannot define it (no good image, no defective one,
    nothing flagged)."""
    flagged, bad = scores >= threshold, labels.astype(bool)
    n_bad, n_good, n_flagged = int(bad.sum()), int((~bad).sum()), int(flagged.sum())
    tp = int((flagged & bad).sum())
    recall = tp / n_bad if n_bad else None
    precision = tp / n_flagged if n_flagged and n_bad else None
    f1 = None if recall is None or precision is None else (
        0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    types = np.asarray(defect_types)
    per_type = {t: float(flagged[types == t].mean()) for t in sorted(set(types[bad].tolist()))}
    return {"false_alarm_rate": float(flagged[~bad].mean()) if n_good else None, "recall": recall,
            "precision_at_threshold": precision, "f1_at_threshold": f1, "per_defect_recall": per_type}
