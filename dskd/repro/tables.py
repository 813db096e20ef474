"""Tables: per-category benchmark tables, method (ablation) tables and per-defect tables, in percent, with
'mean ± std' over seeds, saved as CSV and Markdown with the settings that produced them in the first line.
Metrics a dataset cannot give (pixel metrics without masks) are shown as '—'."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..atomic import atomic_write, write_text
from ..data import get_dataset
from ..stats import clopper_pearson
from .experiment_config import Experiment, planning_pass

METRICS = ("image_auroc", "pixel_auroc", "aupro")  # threshold-free
AT_THRESHOLD = ("false_alarm_rate", "recall", "f1_at_threshold", "image_f1_max")  # decisions, and the oracle
AT_THRESHOLD_MEANING = ("false_alarm_rate is the share of the test's good images flagged, recall that of its "
                        "defective images, f1_at_threshold their F1. image_f1_max is the oracle F1-max, its threshold "
                        "fitted on the test labels: a reference, not a result.")
REFERENCE_DIR = Path(__file__).resolve().parents[2] / "results" / "reference"
ABSENT = "—"


def _numeric(runs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """The metric columns as floats, NaN where a run could not give one (pixel metrics without masks)."""
    return runs.assign(**{m: pd.to_numeric(runs[m], errors="coerce") if m in runs else float("nan")
                          for m in metrics})


def summarize(runs: pd.DataFrame, metrics: Sequence[str] = METRICS, by: Sequence[str] = ("category", "method"),
              ) -> pd.DataFrame:
    """Mean and standard deviation over seeds (std is 0 with a single seed)."""
    g = _numeric(runs, metrics).groupby(list(by), sort=False)[list(metrics)]
    mean, std = g.mean(), g.std(ddof=0).fillna(0.0)
    out = pd.concat({"mean": mean, "std": std}, axis=1).swaplevel(0, 1, axis=1).sort_index(axis=1, level=0)
    out[("seeds", "n")] = g.size()
    return out


def _fmt(mean: float, std: float, n: int) -> str:
    if mean is None or math.isnan(mean):
        return ABSENT
    return f"{100 * mean:.1f}" if n <= 1 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def benchmark_table(exp: Experiment, runs: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Per category (then texture / object / overall means for MVTec AD, overall mean elsewhere):
    one column per metric x method, values in percent, 'mean ± std' over seeds."""
    if runs.empty:
        return skipped_table(exp)
    per_seed = _numeric(runs, metrics).pivot_table(index=["category", "seed"], columns="method",
                                                   values=list(metrics), dropna=False)
    groups: list[tuple[str, list[str]]] = [(c, [c]) for c in exp.categories]
    textures = get_dataset(exp.dataset).textures
    if textures and not exp.stand_in:
        tex = [c for c in exp.categories if c in textures]
        obj = [c for c in exp.categories if c not in textures]
        groups += [("texture mean", tex), ("object mean", obj)]
    if len(exp.categories) > 1:
        groups.append(("mean", list(exp.categories)))
    methods = list(dict.fromkeys(runs["method"]))
    table = {}
    for label, cats in groups:
        if not cats:
            continue
        # Means over categories are taken per seed first, so the std is over seeds, not over categories.
        sub = per_seed[per_seed.index.get_level_values("category").isin(cats)].groupby(level="seed").mean()
        table[label] = {f"{m} / {meth}": _fmt(sub[(m, meth)].mean(), sub[(m, meth)].std(ddof=0), len(sub))
                        for m in metrics for meth in methods if (m, meth) in sub}
    return pd.DataFrame.from_dict(table, orient="index")


def decision_table(exp: Experiment, runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Each run's test split decided at its deployed threshold: what the threshold promised (its expected rate and
    its 95 % bound), the false alarms and recall measured (counts, percent and Clopper–Pearson 95 % intervals),
    whether the measurement is consistent with the bound, whether the test's good images score like the calibration
    images (the shift test), and F1 beside the oracle F1-max; and the note that says how it was all set."""
    if runs.empty:
        return skipped_table(exp), ""
    rows = {(r["category"], r["method"], r["seed"]): decision_row(r) for _, r in runs.iterrows()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.names = ["category", "method", "seed"]
    rules = ", ".join(sorted(set(runs["decision_rule"])))
    counts = pd.to_numeric(runs["decision_images"])
    targets = ", ".join(f"{t:.0%}" for t in sorted(set(runs["target_false_alarm"].dropna())))
    note = (f"Decisions at each run's deployed threshold, set without test labels ({rules}; target false-alarm rate "
            f"{targets or '—'}; {_span(counts.min(), counts.max())} calibration images per run). {DECISION_MEANING}")
    return table, note


DECISION_MEANING = (
    "promised: the false-alarm rate the threshold holds for good images like the calibration ones, on average and "
    "with 95 % confidence (its bound); false alarms: the test's good images flagged, recall: its defective ones "
    "(count, percent, Clopper–Pearson 95 % interval); consistent: the false-alarm interval reaches down to the bound; "
    "shift p: the one-sided Mann–Whitney U test that the test's good images score higher than the calibration ones "
    "(shifted below 0.01: no rate set on those images can be promised for these). oracle F1-max: its threshold "
    "fitted on the test labels, a reference, not a result. Percent.")


def _counted(k: object, n: object) -> str:
    """"k of n: rate [low, high]" in percent, or — where the split has none."""
    if not present(k) or not present(n) or int(n) == 0:
        return ABSENT
    low, high = clopper_pearson(int(k), int(n))
    return f"{int(k)} of {int(n)}: {100 * int(k) / int(n):.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def present(v: object) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def percent(v: object) -> str:
    return f"{100 * float(v):.1f}" if present(v) else ABSENT


def decision_row(r: pd.Series) -> dict[str, str]:
    def get(key: str) -> object:
        return r[key] if key in r else None

    promised = ABSENT if not present(get("expected_false_alarm")) else \
        f"{percent(get('expected_false_alarm'))} (≤ {percent(get('bound_false_alarm'))})"
    consistent, shifted = get("consistent_with_bound"), get("shifted")
    return {"calibration images": str(int(get("decision_images"))), "promised": promised,
            "false alarms": _counted(get("good_flagged"), get("n_good")),
            "consistent": ABSENT if not present(consistent) else ("yes" if consistent else "no"),
            "shift p": ABSENT if not present(get("shift_p_value")) else
            f"{float(get('shift_p_value')):.2g}" + (" (shifted)" if shifted else ""),
            "recall": _counted(get("defective_flagged"), get("n_defective")),
            "F1": percent(get("f1_at_threshold")), "oracle F1-max": percent(get("image_f1_max")),
            "good outlined": _counted(get("good_outlined_count"), get("n_good")),
            "SegF1": percent(get("pixel_f1_at_threshold")), "oracle pixel F1-max": percent(get("pixel_f1_max"))}


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}–{high}"


def skipped_table(exp: Experiment | None) -> pd.DataFrame:
    return pd.DataFrame({"note": [f"skipped: {exp.skipped if exp and exp.skipped else 'no runs'}"]})


def method_table(runs: pd.DataFrame, exp: Experiment | None = None, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """One row per method: the mean over categories (per seed), then 'mean ± std' over seeds, in percent."""
    if runs.empty:
        return skipped_table(exp)
    per_seed = _numeric(runs, metrics).groupby(["method", "seed"], sort=False)[list(metrics)].mean()
    rows = {}
    for method, sub in per_seed.groupby(level="method", sort=False):
        rows[method] = {m: _fmt(sub[m].mean(), sub[m].std(ddof=0), len(sub)) for m in metrics}
        rows[method]["train_minutes"] = round(float(runs[runs["method"] == method]["train_minutes"].mean()), 2)
    return pd.DataFrame.from_dict(rows, orient="index")


def per_defect_table(runs: pd.DataFrame, exp: Experiment | None = None) -> pd.DataFrame:
    """Image AUROC (percent) of each defect type against the good images, per method, mean over seeds."""
    if runs.empty:
        return skipped_table(exp)
    rows = []
    for _, r in runs.iterrows():
        for defect, value in (r["per_defect_image_auroc"] or {}).items():
            rows.append({"method": r["method"], "defect_type": defect, "seed": r["seed"], "image_auroc": value})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows).groupby(["defect_type", "method"])["image_auroc"].mean().unstack("method")
    return (100 * df).round(1)


def save_table(table: pd.DataFrame, name: str, exp: Experiment | None = None, note: str = "",
               out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """`tables/<name>.csv` and `.md`; the Markdown says what produced the numbers. Nothing is written during a
    planning pass, whose tables would be empty."""
    out = Path(out_dir or (exp.out_dir if exp else "results")) / "tables"
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    if planning_pass():
        return csv_path, md_path
    atomic_write(csv_path, lambda tmp: table.to_csv(tmp))
    header = [f"# {name}", ""]
    if exp is not None:
        header.append(f"Measured by this suite on {exp.describe()}.")
    if note:
        header.append(note)
    write_text(md_path, "\n".join(header) + "\n\n" + markdown(table) + "\n")
    return csv_path, md_path


def markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (index included; column levels joined with ' / '); a missing number reads "—"."""
    cols = [" / ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in table.columns]
    index_name = " / ".join(str(n) for n in table.index.names if n) or ""
    lines = ["| " + " | ".join([index_name, *cols]) + " |", "|" + "---|" * (len(cols) + 1)]
    for idx, row in table.iterrows():
        key = " / ".join(map(str, idx)) if isinstance(idx, tuple) else str(idx)
        cells = (ABSENT if isinstance(v, float) and v != v else str(v) for v in row.tolist())  # NaN != NaN
        lines.append("| " + " | ".join([key, *cells]) + " |")
    return "\n".join(lines)


def reference(dataset: str) -> pd.DataFrame:
    """Published peer numbers (never ours), each row with its source and backbone."""
    path = REFERENCE_DIR / f"{dataset}.csv"
    return pd.read_csv(path, comment="#") if path.is_file() else pd.DataFrame()


