"""Decisions on the line: what each deployed threshold promised, and what it did on the test split.

    python -m benchmarks.decisions --data-root ../shared/data

Per dataset, configuration and seed (the `quick` profile's runs, cached under results/quick/runs/ and trained where
missing): the calibration images, the promised false-alarm rate (mean and 95 % bound), the measured false alarms
and recall with Clopper–Pearson 95 % intervals, whether the measurement is consistent with the bound, the shift
test, and the recall the ranking allows at the same false-alarm rate (the ROC's true-positive rate at the measured
false-alarm rate: the oracle threshold for that rate), which separates ranking from calibration. Writes
results/benchmarks/decisions.csv and .md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import REPO
from dskd import suite
from dskd.atomic import atomic_write, write_text
from dskd.repro.tables import DECISION_MEANING, decision_row
from dskd.run import archive
from dskd.run.metrics import roc_curve

DATASETS = ("mt_defects", "mpdd", "mvtec_ad")


def oracle_recall(run: str | Path, false_alarm_rate: float) -> float:
    """The highest true-positive rate of the run's test scores at a false-positive rate no higher than the one measured
    at its deployed threshold: what a threshold fitted on the test labels for that rate would find."""
    saved = archive.load(run)
    fpr, tpr = roc_curve(saved.labels, saved.scores)
    return float(tpr[fpr <= false_alarm_rate + 1e-12].max())


def decision_rows(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in runs.iterrows():
        shown = decision_row(r)
        shown["oracle recall at that false-alarm rate"] = f"{100 * oracle_recall(r['run'], r['false_alarm_rate']):.1f}"
        rows.append({"dataset": r["dataset"], "category": r["category"], "config": r["method"], "seed": r["seed"],
                     **shown})
    return pd.DataFrame(rows).set_index(["dataset", "category", "config", "seed"])


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and configuration over seeds: the spread of recall at the deployed threshold against the spread
    of image AUROC, how many seeds were consistent with their bound, and how many splits the shift test flagged."""
    out = {}
    for (dataset, method), sub in runs.groupby(["dataset", "method"], sort=False):
        recall = 100 * pd.to_numeric(sub["recall"])
        out[(dataset, method)] = {
            "seeds": len(sub), "recall, min to max": f"{recall.min():.1f} to {recall.max():.1f}",
            "image AUROC, min to max": f"{100 * sub['image_auroc'].min():.1f} to {100 * sub['image_auroc'].max():.1f}",
            "consistent with the bound": f"{int(sub['consistent_with_bound'].fillna(False).sum())} of {len(sub)}",
            "shift test fired": f"{int(sub['shifted'].fillna(False).sum())} of {len(sub)}"}
    table = pd.DataFrame.from_dict(out, orient="index")
    table.index.names = ["dataset", "config"]
    return table


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decisions", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--configs", nargs="+", default=["dskd"])
    p.add_argument("--profile", default="quick")
    p.add_argument("--out", default=str(REPO / "results"), help="tables go to <out>/benchmarks/")
    p.add_argument("--name", default="decisions")
    p.add_argument("--note", default="", help="a line for the table's header (e.g. which runs shared the CPU)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t0, frames, described = time.perf_counter(), [], []
    for dataset in args.datasets:
        exp = suite.experiment(dataset=dataset, profile=args.profile, data_root=args.data_root, seeds=args.seeds,
                               out_dir=Path(args.out), runs_root=Path(args.out) / args.profile / "runs")
        if exp.skipped:
            print(f"skipped {dataset}: {exp.skipped}")
            continue
        frames.append(suite.run_grid(exp, args.configs, quiet=False).assign(dataset=dataset))
        described.append(f"- {dataset}: {exp.describe()}")
    if not frames:
        raise SystemExit("error: none of the datasets was found under --data-root")
    runs = pd.concat(frames, ignore_index=True)
    table, over_seeds = decision_rows(runs), summary(runs)
    target = Path(args.out) / "benchmarks"
    atomic_write(target / f"{args.name}.csv", lambda tmp: table.to_csv(tmp))
    lines = [f"# {args.name}: the deployed thresholds on the test splits", "",
             "Measured by `python -m benchmarks.decisions` on this 2-core CPU, one row per run; thresholds set on "
             "held-out good images (`--folds 1`: 10 % of the good training images, at least 8), never on test labels.",
             "", *described, "", *([args.note, ""] if args.note else []), DECISION_MEANING, "",
             suite.markdown(table), "", "Over seeds:", "", suite.markdown(over_seeds), "",
             f"Benchmark wall time: {(time.perf_counter() - t0) / 60:.1f} min (cached runs take no training time)."]
    write_text(target / f"{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
