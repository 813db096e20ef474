"""The claims ledger: each claim of the paper (as its abstract states it), the evidence this suite measured, and a
verdict from one rule.

A claim compares our side with the better of one or more other sides (the better chosen by its mean, per dataset
and metric: a choice that can only make the claim harder to meet). Each seed gives a paired difference, ours minus
theirs, of the metric averaged over the dataset's categories; a row reports both sides' means, the mean difference
and its spread (the sample standard deviation of the paired differences over seeds, ddof 1).

`verdict` is the rule. It is a screening rule, not a significance test: with three seeds, |mean| > spread is
t > 1.73 with 2 degrees of freedom (one-sided p about 0.11), so "holds" means "measured in our favour at these
settings", no more; one seed has no spread and is always inconclusive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DskdError
from ..run import archive
from ..run.metrics import all_metrics
from .ablations import fuse_saved
from .tables import METRICS, save_table

MIN_POINTS = 0.1  # a difference smaller than this (percentage points) is never called a result
VERDICTS = ("holds", "does not hold", "inconclusive")


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    ours: str  # a method (dskd.run.methods) or, for scales, a subset of pyramid levels
    against: tuple[str, ...]


CLAIMS = (
    Claim("dual_vs_single", "the dual student improves on the single-student networks (Se ~ STFPM, Sd ~ Reverse "
          "Distillation)", "dskd", ("se_only", "sd_only")),
    Claim("inversion", "two students of inverted structures beat two of the same structure (an ensemble alone does "
          "not explain the gain)", "dskd", ("dual_se", "dual_sd")),
    Claim("df_embedding", "the DF embedding, through which the students interact, helps", "dskd", ("dskd_no_df",)),
    Claim("pyramid", "matching and fusing the whole pyramid beats the best single level", "{1,2,3}",
          ("{1}", "{2}", "{3}")),
)
CLAIM_METHODS = ("dskd", "se_only", "sd_only", "dual_se", "dual_sd", "dskd_no_df")


def verdict(differences: Sequence[float]) -> str:
    """The rule, written once: the paired differences (ours - theirs, one per seed, in percentage points)."""
    d = np.asarray([x for x in differences if not np.isnan(x)], float)
    if len(d) < 2:
        return "inconclusive"
    mean, spread = float(d.mean()), float(d.std(ddof=1))
    if abs(mean) <= max(spread, MIN_POINTS):
        return "inconclusive"
    return "holds" if mean > 0 else "does not hold"


def level_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """dskd's runs re-fused from their saved maps at each pyramid level alone and at all three (the run's own
    fusion otherwise): one row per run and subset, as `method` "{1}" ... "{1,2,3}"; empty where no maps are at hand."""
    rows = []
    for _, r in runs[runs["method"] == "dskd"].iterrows():
        try:
            saved = archive.load(r["run"])
        except DskdError:
            continue
        for subset in ((0,), (1,), (2,), (0, 1, 2)):
            maps, scores = fuse_saved(saved, scales=subset)
            m = all_metrics(saved.labels, scores, saved.masks, maps, valid=saved.valid)
            rows.append({"dataset": r["dataset"], "category": r["category"], "seed": r["seed"],
                         "method": "{" + ",".join(str(s + 1) for s in subset) + "}",
                         **{k: m.get(k) for k in METRICS}})
    return pd.DataFrame(rows)


def ledger(runs: pd.DataFrame, described: dict[str, str]) -> pd.DataFrame:
    """One row per claim x dataset x metric from a table of runs (dataset, category, method, seed, metrics; the
    pyramid claim reads the rows `level_rows` adds); `described` says, per dataset, what produced the runs."""
    if runs.empty:
        return pd.DataFrame()
    numeric = runs.assign(**{m: pd.to_numeric(runs[m], errors="coerce") for m in METRICS})
    per_seed = numeric.groupby(["dataset", "method", "seed"])[list(METRICS)].mean()
    rows = []
    for claim in CLAIMS:
        for dataset in dict.fromkeys(runs["dataset"]):
            for metric in METRICS:
                rows.append(_row(claim, dataset, metric, per_seed, described.get(dataset, "")))
    return pd.DataFrame(rows)


def _row(claim: Claim, dataset: str, metric: str, per_seed: pd.DataFrame, described: str) -> dict:
    def side(method: str) -> pd.Series:
        key = (dataset, method)
        return per_seed.loc[key, metric].dropna() if key in per_seed.index.droplevel("seed") else pd.Series(dtype=float)

    base = {"claim": claim.key, "dataset": dataset, "metric": metric, "ours": claim.ours, "evidence": described}
    ours, present = side(claim.ours), {m: side(m) for m in claim.against}
    present = {m: s for m, s in present.items() if len(s)}
    if ours.empty or not present:
        missing = [m for m in (claim.ours, *claim.against) if side(m).empty]
        return {**base, "against": "", "seeds": 0, "verdict": "no evidence",
                "note": f"not measured here: {', '.join(missing)}"}
    best = max(present, key=lambda m: present[m].mean())
    paired = (100 * (ours - present[best])).dropna()
    spread = float(paired.std(ddof=1)) if len(paired) > 1 else float("nan")
    return {**base, "against": best, "seeds": len(paired), "ours_mean": round(100 * ours.mean(), 2),
            "against_mean": round(100 * present[best].mean(), 2), "difference": round(float(paired.mean()), 2),
            "spread": round(spread, 2), "verdict": verdict(paired.tolist()), "note": ""}


def claims_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per claim, across datasets and metrics: how many rows hold, do not hold, are inconclusive or unmeasured."""
    if table.empty:
        return pd.DataFrame()
    counts = table.groupby("claim", sort=False)["verdict"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=[*VERDICTS, "no evidence"], fill_value=0)
    counts["overall"] = [_overall(row) for _, row in counts.iterrows()]
    texts = {c.key: c.text for c in CLAIMS}
    return counts.assign(claim_text=[texts[k] for k in counts.index])


def _overall(row: pd.Series) -> str:
    measured = {v: int(row[v]) for v in VERDICTS if row[v]}
    if not measured:
        return "no evidence"
    if len(measured) == 1:
        return next(iter(measured))
    return "mixed (" + ", ".join(f"{n} {v}" for v, n in measured.items()) + ")"


RULE = ("Verdict rule (dskd/repro/claims.py): per seed, ours minus the better other side (chosen by its mean), "
        "in points; 'holds' when the mean difference exceeds both its spread over seeds (sample std) and "
        f"{MIN_POINTS} points, 'does not hold' when it is below minus both, else 'inconclusive' (always so with one "
        "seed). A screening rule, not a significance test: with 3 seeds it is t > 1.73 (2 df, one-sided p about "
        "0.11). Every number is this suite's measurement at the settings in the evidence column; none is the "
        "paper's.")


def claims_tables(runs: pd.DataFrame, described: dict[str, str], out_dir: str | Path,
                  name: str = "claims") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ledger and its summary, saved as `<out_dir>/tables/<name>.csv|md` and `<name>_summary.csv|md`."""
    table = ledger(pd.concat([runs, level_rows(runs)], ignore_index=True) if not runs.empty else runs, described)
    summary = claims_summary(table)
    save_table(table.set_index(["claim", "dataset", "metric"]) if not table.empty else table, name, note=RULE,
               out_dir=out_dir)
    save_table(summary, f"{name}_summary", note=RULE, out_dir=out_dir)
    return table, summary
