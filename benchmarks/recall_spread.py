"""Where the recall at a deployed decision comes from, per run: the ranking, and the draw of good images.

The ranking: the recall that a threshold fitted on the test labels finds at the same false-alarm rate (the oracle),
which no rule set on good images can beat by more than luck. The draw: the good images a decision was set on are a
sample, and another day's good parts would set another threshold. Drawing them again with replacement (each fold
within itself, as cross-fitting scored them) and deciding the test split again by the same rule, the network fixed,
gives the spread that the calibration draw alone puts on recall; seeds spread beyond it only through the networks
(docs/findings.md section 28). Where the rule's threshold is the highest calibration score (m = 1), no draw's
highest exceeds it, so the draws can only lower the threshold: there the spread is one-sided, a lower bound.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from dskd.decision import Decision, false_alarm_threshold
from dskd.run import archive
from dskd.run.folder import open_run
from dskd.run.metrics import roc_curve

DRAWS = 2000


def oracle_recall(saved: archive.SavedMaps, *false_alarm_rates: float) -> list[float]:
    """The highest true-positive rate of the run's test scores at a false-positive rate no higher than each given
    one: what a threshold fitted on the test labels for that rate would find."""
    fpr, tpr = roc_curve(saved.labels, saved.scores)
    return [float(tpr[fpr <= rate + 1e-12].max()) for rate in false_alarm_rates]


def redrawn(decision: Decision, rng: np.random.Generator) -> Decision:
    """The decision set by its own rule on a bootstrap draw of its calibration scores (a cross-fitted one's, each
    fold's drawn from that fold)."""
    if decision.out_of_fold_scores:
        return replace(decision, out_of_fold_scores=[np.sort(rng.choice(f, len(f))).tolist()
                                                     for f in decision.out_of_fold_scores])
    drawn = rng.choice(np.asarray(decision.calibration_scores), decision.n_images)
    return replace(decision, threshold=false_alarm_threshold(drawn, decision.target_false_alarm)[0])


def recall_over_draws(saved: archive.SavedMaps, decision: Decision, draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """The test split's recall at the decision set again on `draws` draws of its good images."""
    rng, bad = np.random.default_rng(seed), saved.labels == 1
    return np.array([redrawn(decision, rng).flags(saved.scores, saved.set_scores)[bad].mean()
                     for _ in range(draws)])


def expected_range(recalls: np.ndarray, n: int = 3, seed: int = 0) -> float:
    """The mean of max - min over `n` recalls picked at random: what `n` draws of the good images would span."""
    picked = np.random.default_rng(seed).choice(recalls, (DRAWS * 10, n))
    return float(np.ptp(picked, axis=1).mean())


def with_spread(runs: pd.DataFrame) -> pd.DataFrame:
    """Each run's ranking at its measured false-alarm rate and at one false alarm on the test's good images, and
    its recall over draws of its good images: 5th and 95th percentile, and the range three draws would span."""
    rows = []
    for _, r in runs.iterrows():
        saved = archive.load(r["run"])
        decision = open_run(r["run"]).recorded_decision("evaluating the run again")
        at_rate, at_one = oracle_recall(saved, r["false_alarm_rate"], 1 / r["n_good"])
        # a decision set on training images (no held-out split) keeps no calibration scores to draw from
        recalls = recall_over_draws(saved, decision) if decision.calibration_scores else np.full(1, np.nan)
        rows.append({"oracle_recall": at_rate, "oracle_recall_one": at_one,
                     "redraw_low": float(np.percentile(recalls, 5)), "redraw_high": float(np.percentile(recalls, 95)),
                     "redraw_range_of_three": expected_range(recalls)})
    return runs.assign(**pd.DataFrame(rows, index=runs.index))
