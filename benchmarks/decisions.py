"""Decisions on the line: what each deployed threshold promised, and what it did on the test split.

    python -m benchmarks.decisions --data-root ../shared/data

Per dataset, configuration, number of folds and seed (the `quick` profile's runs, cached under results/quick/runs/
and trained where missing; `--folds 1`: the held-out split, K >= 2: cross-fitting): the calibration images, the
promised false-alarm rate (mean and 95 % bound), the measured false alarms
and recall with Clopper–Pearson 95 % intervals, whether the measurement is consistent with the bound, the shift
test, and the recall the ranking allows at the same false-alarm rate (the ROC's true-positive rate at the measured
false-alarm rate: the oracle threshold for that rate), which separates ranking from calibration; the threshold-free
metrics and training minutes of each run; the recall's 5th to 95th percentile over draws of the good images the
decision was set on, the network fixed (`benchmarks.recall_spread`); per configuration over seeds, the ranking's
recall at one false alarm on the test's good images (how far apart the seeds' ROCs are where a strict target lands,
whatever the threshold) and the range of recall that three draws of the good images span, the network fixed (the
mean over seeds: the seeds' spread that calibration alone would give);
and, at the lowest seed, the images per second of its maps through PyTorch and through OpenVINO (FP32, batches of 16).
Writes results/benchmarks/decisions.csv and .md.

A cross-fitted run decides by cross-conformal p-values, which are not a threshold on its averaged score: its
oracle columns are that score's ROC, a reference the rule can beat (docs/findings.md section 26).

`--score-shares 0.05` adds, for every run, a copy whose image score is the mean of the map's largest 5 % (its weights
linked, nothing trained again; its decision set again on the same good images): the image score compared on the
same networks (docs/findings.md section 27).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import REPO
from benchmarks.recall_spread import with_spread
from dskd import suite
from dskd.atomic import atomic_write, write_text
from dskd.data import run_images
from dskd.deploy.export import export
from dskd.deploy.predictors import openvino_predictor, torch_predictor
from dskd.repro.experiments import grid_configs
from dskd.repro.tables import ABSENT, DECISION_MEANING, decision_row, percent, present
from dskd.repro.task import run_folder
from dskd.run.batch_maps import preload
from dskd.run.folder import RunDir, open_run
from dskd.run.methods import get_method
from dskd.run.set_decision import with_image_score

DATASETS = ("mt_defects", "mpdd", "mvtec_ad")


def decision_rows(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in runs.iterrows():
        shown = decision_row(r)
        shown["oracle recall at that false-alarm rate"] = percent(r["oracle_recall"])
        shown["recall, good images drawn again"] = f"{percent(r['redraw_low'])} to {percent(r['redraw_high'])}" \
            if present(r["redraw_low"]) else ABSENT
        rows.append({"dataset": r["dataset"], "category": r["category"], "config": r["method"], "seed": r["seed"],
                     **shown, **{name: percent(r.get(key)) for key, name in THRESHOLD_FREE.items()},
                     "training minutes": f"{r['train_minutes']:.1f}" if present(r.get("train_minutes")) else ABSENT})
    return pd.DataFrame(rows).set_index(["dataset", "category", "config", "seed"])


REDRAWN_MEANING = ("recall, good images drawn again: its 5th to 95th percentile when the decision is set again, by "
                   "the same rule, on draws with replacement of the good images it was set on (each fold's from that "
                   "fold), the network fixed; over seeds, the range of recall three such draws span on average. "
                   "Where the threshold is the highest calibration score (fewer than 1 / rate - 1 good images: "
                   "MPDD's), no draw can raise it, so there the spread is one-sided, a lower bound.")
THRESHOLD_FREE = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO"}


def methods(configs: list[str], folds: list[int], share: float = 0.0) -> dict[str, dict]:
    """Each configuration at each number of folds (and image score share), named as the tables show it."""
    named = {c if k == 1 else f"{c}, {k} folds": {**get_method(c).overrides, "folds": k}
             for c in configs for k in folds}
    if not share:
        return named
    return {f"{name}, top {100 * share:g} %": {**overrides, "score_share": share} for name, overrides in named.items()}


def rescored(run: str | Path, share: float, runs_root: Path) -> None:
    """A trained run's copy whose image score is the mean of its map's largest `share` (nothing trained again)."""
    source = open_run(run)
    cfg = source.config.with_overrides(score_share=share)
    with_image_score(source, run_folder(cfg, runs_root), share)


def grid(exp: suite.Experiment, configs: dict[str, dict], only_trained: bool) -> pd.DataFrame:
    """The experiment's runs of every configuration; with `only_trained`, only the seeds already trained (none is
    trained here), so that a table can be written while the rest of a grid is still to train."""
    frames = []
    for name, overrides in configs.items():
        seeds = [seed for _, _, seed, cfg in grid_configs(exp, {name: overrides})
                 if not only_trained or RunDir(run_folder(cfg, exp.runs_root), cfg).completed]
        if seeds:
            frames.append(suite.run_grid(dataclasses.replace(exp, seeds=seeds), {name: overrides}, quiet=False))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def throughput(run: str | Path, images: int = 64, batch: int = 16) -> dict[str, float]:
    """Images per second of a run's maps over its first `images` test images: PyTorch (BatchNorm folded, the path of
    `predict --run`) and OpenVINO FP32 (an export of the run), after one warm-up batch each."""
    cfg = open_run(run).config
    test = run_images(cfg, "test")
    x = preload(test, quiet=True)[0][:images].numpy()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        engines = {"torch": lambda: torch_predictor(Path(run), "cpu"),
                   "openvino": lambda: openvino_predictor(export(run, "openvino", Path(tmp) / "m.xml"))}
        for engine, opened in engines.items():
            p = opened()
            p.infer(x[:batch], None)
            t0 = time.perf_counter()
            for i in range(0, len(x), batch):
                p.infer(x[i: i + batch], None)
            out[f"images/s, {engine}"] = round(len(x) / (time.perf_counter() - t0), 1)
    return out


def speed_rows(runs: pd.DataFrame) -> pd.DataFrame:
    first = runs.sort_values("seed").groupby(["dataset", "method"], sort=False).head(1)
    rows = {(r["dataset"], r["method"]): throughput(r["run"]) for _, r in first.iterrows()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.names = ["dataset", "config"]
    return table


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and configuration over seeds: the spread of recall at the deployed threshold against the spread
    of image AUROC and of the ranking's recall at one false alarm, how many seeds were consistent with their bound,
    and how many splits the shift test flagged."""
    out = {}
    for (dataset, method), sub in runs.groupby(["dataset", "method"], sort=False):
        out[(dataset, method)] = {
            "seeds": len(sub), "recall, min to max": _min_to_max(100 * pd.to_numeric(sub["recall"])),
            "image AUROC, min to max": _min_to_max(100 * sub["image_auroc"]),
            "image AUROC, mean": f"{100 * sub['image_auroc'].mean():.1f}",
            "ranking's recall at one false alarm, min to max": _min_to_max(100 * sub["oracle_recall_one"]),
            "recall's range over three draws of the good images": percent(sub["redraw_range_of_three"].mean()),
            "false alarms, mean": f"{100 * pd.to_numeric(sub['false_alarm_rate']).mean():.1f}",
            "consistent with the bound": f"{int(sub['consistent_with_bound'].fillna(False).sum())} of {len(sub)}",
            "shift test fired": f"{int(sub['shifted'].fillna(False).sum())} of {len(sub)}"}
    table = pd.DataFrame.from_dict(out, orient="index")
    table.index.names = ["dataset", "config"]
    return table


def _min_to_max(values: pd.Series) -> str:
    return f"{values.min():.1f} to {values.max():.1f}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decisions", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--configs", nargs="+", default=["dskd"])
    p.add_argument("--folds", type=int, nargs="+", default=[1, 3], help="1: the held-out split; K: cross-fitting")
    p.add_argument("--only-trained", action="store_true", help="tabulate the runs already trained; train none")
    p.add_argument("--score-shares", type=float, nargs="+", default=[],
                   help="besides the map's maximum, the image scores 'mean of the map's largest share s' to tabulate, "
                        "on copies of the runs (weights linked: nothing trains again)")
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
        base = grid(exp, methods(args.configs, args.folds), args.only_trained)
        for share in args.score_shares:  # copies of the maximum's runs, never of another share's copies
            for run in base.get("run", []):
                rescored(run, share, exp.runs_root)
        shares = [grid(exp, methods(args.configs, args.folds, share), True) for share in args.score_shares]
        frames.append(pd.concat([base, *shares], ignore_index=True).assign(dataset=dataset))
        described.append(f"- {dataset}: {exp.describe()}")
    if not frames:
        raise SystemExit("error: none of the datasets was found under --data-root")
    runs = with_spread(pd.concat(frames, ignore_index=True))
    table, over_seeds, speed = decision_rows(runs), summary(runs), speed_rows(runs)
    target = Path(args.out) / "benchmarks"
    atomic_write(target / f"{args.name}.csv", lambda tmp: table.to_csv(tmp))
    lines = [f"# {args.name}: the deployed thresholds on the test splits", "",
             "Measured by `python -m benchmarks.decisions` on this 2-core CPU, one row per run (training minutes "
             "compare only between runs that trained alone: see the note); thresholds set on good images, never on "
             "test labels: `--folds 1` on 10 % of the good training images "
             "held out (at least 8), `K folds` on every good training image, each scored by the student set that "
             "never trained on it (cross-conformal, docs/deploy.md). FP32.",
             "", *described, "", *([args.note, ""] if args.note else []), DECISION_MEANING, REDRAWN_MEANING, "",
             suite.markdown(table), "", "Over seeds:", "", suite.markdown(over_seeds), "",
             "Images per second of the maps at each configuration's lowest seed (batches of 16, after a warm-up "
             "batch; both engines on this CPU; compare within this table only):", "", suite.markdown(speed), "",
             f"Benchmark wall time: {(time.perf_counter() - t0) / 60:.1f} min (cached runs take no training time)."]
    write_text(target / f"{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
