"""The deployed decision: a threshold chosen without any test label, the record of it, and one named constructor per
rule that sets it.

An image is "defective" when its score reaches the image threshold (cross-fitted: by its cross-conformal p-value,
`dskd.decision.crossfit`); the overlay outlines a defective image's pixels at or above the pixel threshold, and no
pixel of an image it passes (`dskd.decision.outline`). The threshold comes from good images the model never trained
on (the held-out images) at a false-alarm target (`dskd.decision.false_alarm`), from good images taken on the line
(`python -m dskd calibrate`), from the training images when nothing was held out (said so), or, for one evaluation
only, from a labelled folder the user names. The record reads back from every schema it was stored in; where it is
stored is `dskd.decision.stored`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..errors import DskdError
from ..settings import REQUIRED, check_values, setting
from ..stats import CONFIDENCE, false_alarm_bound
from .crossfit import flags, p_values, worst_case
from .false_alarm import false_alarm_threshold, rank_of

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
# decision.json's layout: 2 added the bound, the calibration scores and the history; 3 the per-fold scores;
# 4 named them out_of_fold_scores (3 called them fold_scores, still read); 5 sets the pixel threshold to the image
# threshold (earlier ones, at the target on the calibration images' pixels, are read as they are)
SCHEMA = 5
RENAMED = {"fold_scores": "out_of_fold_scores"}  # an older schema's name -> today's


@dataclass(frozen=True, kw_only=True)
class Decision:
    threshold: float = setting(REQUIRED, "image level: defective when score >= threshold")
    pixel_threshold: float = setting(REQUIRED, "the overlay's outline: pixels >= it, in images the decision flags")
    rule: str = setting(REQUIRED, "how it was set", tuple(RULES))
    source: str = setting(REQUIRED, "the images it was set on, in words")
    n_images: int = setting(REQUIRED, "how many", at_least=0)
    target_false_alarm: float | None = setting(None, "the false-alarm target: the rate asked for", above=0, below=1)
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
    out_of_fold_scores: list[list[float]] = setting(help="cross_conformal: per student set, its scores of the fold "
                                                         "it never trained on, sorted", factory=list)
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
        d = {"pixel_threshold": d.get("threshold"), **{RENAMED.get(k, k): v for k, v in d.items()}}
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
        if (decision.rule == "cross_conformal") != bool(decision.out_of_fold_scores) or \
                sum(map(len, decision.out_of_fold_scores)) not in (0, decision.n_images):
            raise DskdError(f"{where}: its out-of-fold scores do not fit its rule '{decision.rule}' and its "
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
        if self.out_of_fold_scores:
            worst = f" ({worst_case(len(self.out_of_fold_scores), self.n_images, self.expected_false_alarm)})"
        return f"flags a good image like these {self.expected_false_alarm:.1%} of the time on average{bound}{worst}"

    def replacing(self, old: Decision) -> Decision:
        """This decision with `old` (and its history) kept in the record."""
        dropped = ("previous", "calibration_scores", "out_of_fold_scores")
        kept = {k: v for k, v in old.to_dict().items() if k not in dropped}
        return replace(self, previous=[kept, *old.previous])

    def decides_by(self) -> str:
        """How it decides, in words: its threshold, or the p-value a cross-fitted model's images must not exceed."""
        if not self.out_of_fold_scores:
            return f"score >= {self.threshold:.4g}"
        m = rank_of(self.n_images, self.target_false_alarm)
        return f"cross-conformal p-value <= {m}/{self.n_images + 1} over {len(self.out_of_fold_scores)} folds"

    def flags(self, scores: np.ndarray, set_scores: np.ndarray | None = None) -> np.ndarray:
        """Which images it calls defective: score >= threshold; cross-fitted, by the cross-conformal rule on each
        student set's score (`set_scores`, N x K; with one fold, exactly the threshold's decision)."""
        if not self.out_of_fold_scores:
            return np.asarray(scores) >= self.threshold
        return flags(self.out_of_fold_scores, set_scores, self.target_false_alarm)

    def p_values(self, set_scores: np.ndarray) -> np.ndarray:
        """Cross-conformal p-values of images scored by every student set (N x K)."""
        return p_values(self.out_of_fold_scores, set_scores)

    # One constructor per rule, keyword arguments only.
    @classmethod
    def on_good_images(cls, *, scores: np.ndarray, target: float, source: str, rule: str = "val_false_alarm",
                       announce: bool = True) -> Decision:
        """The threshold at the false-alarm target on good images the model never trained on (the held-out images,
        or the line's with rule `line_false_alarm`); the log says what it promises."""
        scores = np.asarray(scores, np.float32).ravel()
        if scores.size == 0:
            raise DskdError(f"no good images to set a threshold on ({source})")
        decision = cls._image_rule(scores, target, source, rule)
        return decision.announced() if announce else decision

    @classmethod
    def cross_conformal(cls, *, out_of_fold_scores: list[list[float]], target: float, source: str) -> Decision:
        """The cross-conformal decision on K student sets' out-of-fold scores. Its `threshold`, the pooled scores'
        by the one-model rule, is what plots and overlays show; it decides by `flags`."""
        pooled = np.concatenate([np.asarray(f, np.float32).ravel() for f in out_of_fold_scores])
        decision = replace(cls._image_rule(pooled, target, source, "cross_conformal"),
                           out_of_fold_scores=[sorted(float(s) for s in np.asarray(f).ravel())
                                               for f in out_of_fold_scores])
        return decision.announced()

    @classmethod
    def on_training_images(cls, *, threshold: float, target: float, n_images: int, source: str,
                           note: str) -> Decision:
        """Where nothing was held out: the training images' mean score + 3 std; no rate is promised."""
        return cls(threshold=threshold, pixel_threshold=threshold,
                   rule="train_mean_plus_3std", source=source, n_images=n_images, target_false_alarm=target,
                   note=note)

    @classmethod
    def unrecorded(cls, *, threshold: float) -> Decision:
        """A run from before decisions were recorded: its training images' mean + 3 std for both thresholds."""
        return cls(threshold=threshold, pixel_threshold=threshold, rule="train_mean_plus_3std",
                   source="the training images", n_images=0,
                   note="a run from before decisions were recorded; evaluate it to set one")

    @classmethod
    def on_labelled_folder(cls, *, threshold: float, target: float, n_images: int, source: str) -> Decision:
        """The F1-max threshold of a labelled folder, for one evaluation only."""
        return cls(threshold=threshold, pixel_threshold=threshold,
                   rule="f1_max_on_folder", source=source, n_images=n_images, target_false_alarm=target)

    @classmethod
    def _image_rule(cls, scores: np.ndarray, target: float, source: str, rule: str) -> Decision:
        """The image threshold by the false-alarm rule, what it promises, and the notes the log warns of. The
        outline's threshold is the same: a part is outlined only when flagged, so the share of good parts carrying
        an outline is the false-alarm rate, and the same bound holds for it (`dskd.decision.outline`)."""
        threshold, expected = false_alarm_threshold(scores, target)
        n = len(scores)
        notes = []
        if expected > target * 1.0001:
            notes.append(f"{n} calibration images support a false-alarm rate of 1/{n + 1} = {expected:.1%} at best, "
                         f"not the {target:.1%} asked for; the threshold sits above their highest score (use at "
                         f"least {int(np.ceil(1 / target)) - 1} good images for {target:.1%})")
        if np.ptp(scores) == 0:
            notes.append(f"all {n} calibration scores are equal ({float(scores[0]):.4g}): the model does not "
                         "tell these images apart; check that they are real, varied images")
        return cls(threshold=threshold, pixel_threshold=threshold, rule=rule, source=source, n_images=n,
                   target_false_alarm=target, expected_false_alarm=expected, note="; ".join(notes),
                   bound_false_alarm=false_alarm_bound(rank_of(n, target), n), confidence=CONFIDENCE,
                   calibration_scores=sorted(float(s) for s in scores),
                   set_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def announced(self) -> Decision:
        """The decision, its note warned of and its promise said in the log."""
        if self.note:
            log.warning("decision threshold: %s", self.note)
        log.info("decision threshold %.4g on %s: it %s", self.threshold, self.source, self.promise())
        return self
