"""Accuracy on real data: the dual student against each single student, on every real dataset at hand.

    python -m benchmarks.accuracy --data-root ../shared/data

Datasets: MT Defects (DifferNet's training list when it lies beside the data), MPDD and MVTec AD, each with
whatever categories the data root holds (here: MPDD metal_plate, MVTec AD bottle with its masks). Configurations:
dskd, se_only, sd_only, dskd_no_df (`--configs` adds the controls dual_se, dual_sd); `quick` profile; seeds 0 1 2.
Runs are cached under results/quick/runs/ (shared with `./run_all.sh --profile quick`), so an interrupted benchmark
continues where it stopped, and a call with one seed first and more seeds later only trains what is new. Writes
results/benchmarks/accuracy_real.csv and .md (threshold-free metrics, then the decisions at each run's deployed
threshold), accuracy_real_runs.csv (every run) and accuracy_real_claims.csv and .md (the claims ledger).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import REPO
from dskd import suite
from dskd.atomic import atomic_write, write_text
from dskd.model.config import MAP_NORMS
from dskd.repro import claims
from dskd.repro.tables import ABSENT, AT_THRESHOLD_MEANING
from dskd.repro.task import run_folder
from dskd.run.config import FIT_MODES, PRECISIONS
from dskd.run.methods import METHODS

CONFIGS = ("dskd", "se_only", "sd_only", "dskd_no_df")
DATASETS = ("mt_defects", "mpdd", "mvtec_ad")


def accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset x category x configuration: mean and std over seeds of every metric, per-defect-type
    image AUROC, and the median training minutes of one run. Absent metrics (no masks) stay NaN."""
    rows = []
    for (dataset, category, method), sub in runs.groupby(["dataset", "category", "method"], sort=False):
        row = {"dataset": dataset, "category": category, "config": method, "seeds": len(sub), **_decisions(sub)}
        for m in (*suite.METRICS, *suite.AT_THRESHOLD):
            values = pd.to_numeric(sub[m], errors="coerce") if m in sub else pd.Series(dtype=float)
            row[f"{m}_mean"], row[f"{m}_std"] = values.mean(), values.std(ddof=0)
        per_type = pd.DataFrame(list(sub["per_defect_image_auroc"])).mean()
        row.update({f"image_auroc_{t}": v for t, v in per_type.items()})
        # the median: one run slowed by another job on the same CPU does not move it
        row["train_minutes_per_run"] = float(sub["train_minutes"].median())
        rows.append(row)
    return pd.DataFrame(rows)


def _decisions(sub: pd.DataFrame) -> dict[str, object]:
    """How the runs' thresholds were set: rule, target false-alarm rate, validation images (median over seeds);
    empty for runs evaluated before decisions were recorded."""
    if "decision_rule" not in sub:
        return {"decision_rule": "", "target_false_alarm": "", "decision_images": float("nan")}
    return {"decision_rule": ", ".join(sorted(set(sub["decision_rule"].dropna()))),
            "target_false_alarm": ", ".join(f"{t:.0%}" for t in sorted(set(sub["target_false_alarm"].dropna()))),
            "decision_images": float(pd.to_numeric(sub["decision_images"]).median())}


def finished_seeds(exp: suite.Experiment, configs: list[str]) -> list[int]:
    """The seeds for which every configuration's run has finished (its metrics are written) in every category."""
    return [seed for seed in exp.seeds if all(
        (run_folder(exp.config(c, seed, **METHODS[m].overrides), exp.runs_root) / "metrics.json").is_file()
        for c in exp.categories for m in configs)]


def _cell(mean: float, std: float) -> str:
    return ABSENT if pd.isna(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"


def dual_against_single(per_dataset: pd.DataFrame) -> list[str]:
    """Per metric, dskd against the better single student on the mean over the datasets that have the metric."""
    means = per_dataset.groupby(level="config", sort=False).mean()  # NaN (no masks) skipped per metric
    if not {"dskd", "se_only", "sd_only"} <= set(means.index):
        return []
    lines = ["dskd against the better single student, per metric, mean over the datasets that have it (points):", ""]
    for m in suite.METRICS:
        col = f"{m}_mean"
        best = means.loc[["se_only", "sd_only"], col].idxmax()
        gap = 100 * (means.loc["dskd", col] - means.loc[best, col])
        verdict = "better" if gap > 0 else "worse" if gap < 0 else "equal"
        lines.append(f"- {m}: dskd {100 * means.loc['dskd', col]:.2f}, {best} {100 * means.loc[best, col]:.2f}: "
                     f"dskd is {verdict} by {abs(gap):.2f}.")
    return [*lines, ""]


def decisions_report(table: pd.DataFrame) -> list[str]:
    """What a line would see: the test split decided at each run's deployed threshold (set on held-out good images,
    never on test labels), beside the oracle F1-max."""
    shown = table[["dataset", "category", "config", "decision_rule", "target_false_alarm", "decision_images"]].copy()
    for m in suite.AT_THRESHOLD:
        shown[m] = [_cell(a, b) for a, b in zip(table[f"{m}_mean"], table[f"{m}_std"], strict=True)]
    return ["At the deployed threshold (set at the target false-alarm rate on held-out good images; decision_images: "
            f"how many, median over seeds). {AT_THRESHOLD_MEANING} Percent, mean ± std over seeds:", "",
            suite.markdown(shown.set_index(["dataset", "category", "config"])), ""]


def markdown_report(table: pd.DataFrame, described: dict[str, str], minutes: float, note: str = "") -> str:
    shown = table[["dataset", "category", "config", "seeds"]].copy()
    for m in suite.METRICS:
        shown[m] = [_cell(a, b) for a, b in zip(table[f"{m}_mean"], table[f"{m}_std"], strict=True)]
    shown["train min/run (median)"] = table["train_minutes_per_run"].round(2)
    lines = ["# Accuracy on real data: dual student vs single students", "",
             "Measured by `python -m benchmarks.accuracy` on this 2-core CPU. Values in percent, mean ± std over "
             "seeds; — : the data has no masks. Settings per dataset:", ""]
    lines += [f"- {d}: {text}" for d, text in described.items()]
    lines += ["", note] if note else []
    lines += ["", suite.markdown(shown.set_index(["dataset", "category", "config"])), ""]
    lines += decisions_report(table)
    for (dataset, category), sub in table.groupby(["dataset", "category"], sort=False):
        per_type = sub.set_index("config")[[c for c in sub.columns if c.startswith("image_auroc_")
                                             and not c.endswith(("_mean", "_std"))]].dropna(axis=1, how="all")
        lines += [f"Per defect type, image AUROC, {dataset} / {category} (percent, mean over seeds):", "",
                  suite.markdown((100 * per_type).round(1)), ""]
    per_dataset = table.groupby(["config", "dataset"], sort=False)[[f"{m}_mean" for m in suite.METRICS]].mean()
    score = (100 * per_dataset.mean(axis=1, skipna=True).groupby(level="config", sort=False).mean()).round(2)
    lines += ["Score of each configuration (the rule that chose the `quick` profile): mean over datasets of the mean "
              "of the available metrics, percent:", "", suite.markdown(score.to_frame("score")), ""]
    lines += dual_against_single(per_dataset)
    lines.append(f"Benchmark wall time: {minutes:.1f} min (cached runs take no training time).")
    return "\n".join(lines) + "\n"


RUN_COLUMNS = ("dataset", "category", "method", "seed", *suite.METRICS, *suite.AT_THRESHOLD, "train_minutes")


def write_claims(target: Path, name: str, runs: pd.DataFrame, described: dict[str, str]) -> None:
    """`<name>_runs.csv` (every run's metrics, and dskd's re-fused at each pyramid level: what the ledger reads) and
    the claims ledger built from it, `<name>_claims.csv` and `.md`."""
    per_run = pd.concat([runs, claims.level_rows(runs)], ignore_index=True)
    per_run = per_run[[c for c in RUN_COLUMNS if c in per_run]]
    atomic_write(target / f"{name}_runs.csv", lambda tmp: per_run.to_csv(tmp, index=False))
    ledger = claims.ledger(per_run, described)
    atomic_write(target / f"{name}_claims.csv", lambda tmp: ledger.to_csv(tmp, index=False))
    lines = ["# Claims ledger on real data", "", f"Built by `python -m benchmarks.accuracy` from `{name}_runs.csv`.",
             claims.RULE, "", "Summary (rows per verdict):", "", suite.markdown(claims.claims_summary(ledger)), "",
             suite.markdown(ledger.drop(columns="evidence").set_index(["claim", "dataset", "metric"])), "",
             "Evidence per dataset:", "", *[f"- {d}: {text}" for d, text in described.items()], ""]
    write_text(target / f"{name}_claims.md", "\n".join(lines))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(METHODS))
    p.add_argument("--profile", default="quick")
    p.add_argument("--image-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--split-file", help="MT Defects' training list (default: DifferNet's, when beside the data)")
    p.add_argument("--fit-mode", choices=FIT_MODES)
    p.add_argument("--map-norm", choices=MAP_NORMS)
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--out", default=str(REPO / "results"), help="tables go to <out>/benchmarks/")
    p.add_argument("--runs-root", help="run folders (default: <out>/<profile>/runs, shared with ./run_all.sh)")
    p.add_argument("--name", default="accuracy_real", help="file name of the table under <out>/benchmarks/")
    p.add_argument("--note", default="", help="a line for the table's header (e.g. which runs shared the CPU)")
    p.add_argument("--only-cached", action="store_true",
                   help="train nothing: per dataset, tabulate the seeds whose runs of every configuration exist")
    return p


def dataset_runs(dataset: str, args: argparse.Namespace) -> tuple[pd.DataFrame, str] | None:
    """One dataset's runs (trained where missing, unless --only-cached) and the line that describes them; None
    when the dataset is absent or has nothing to tabulate."""
    out = Path(args.out)
    exp = suite.experiment(dataset=dataset, profile=args.profile, data_root=args.data_root, seeds=args.seeds,
                           out_dir=out, image_size=args.image_size, epochs=args.epochs, fit_mode=args.fit_mode,
                           map_norm=args.map_norm, precision=args.precision,
                           split_file=args.split_file if dataset == "mt_defects" else None,
                           runs_root=args.runs_root or out / args.profile / "runs")
    if exp.stand_in:
        raise SystemExit(f"error: profile {args.profile} does not use real data")
    if exp.skipped:
        print(f"skipped {dataset}: {exp.skipped}")
        return None
    if args.only_cached:
        exp.seeds = finished_seeds(exp, args.configs)
        if not exp.seeds:
            print(f"skipped {dataset}: no seed has every configuration trained")
            return None
    cfg = exp.config(exp.categories[0], exp.seeds[0]).validate()
    split = f"; training list {Path(cfg.split_file).name}" if cfg.split_file else ""
    described = (f"{exp.describe()}; fit mode {cfg.fit_mode}, map normalization {cfg.model.map_norm}, "
                 f"BatchNorm recalibration {'on' if cfg.recalibrate_bn else 'off'}{split}")
    return suite.run_grid(exp, args.configs, quiet=False).assign(dataset=dataset), described


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    found = {d: r for d in args.datasets if (r := dataset_runs(d, args)) is not None}
    if not found:
        raise SystemExit("error: none of the datasets was found under --data-root")
    runs = pd.concat([r for r, _ in found.values()], ignore_index=True)
    described = {d: line for d, (_, line) in found.items()}
    table = accuracy_table(runs)
    target = Path(args.out) / "benchmarks"
    write_claims(target, args.name, runs, described)
    atomic_write(target / f"{args.name}.csv", lambda tmp: table.round(4).to_csv(tmp, index=False))
    write_text(target / f"{args.name}.md", markdown_report(table, described, (time.perf_counter() - t0) / 60,
                                                            args.note))
    print((target / f"{args.name}.md").read_text())
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
