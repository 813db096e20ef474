"""Choosing the `quick` profile across datasets, never on one: image size x epochs on every real dataset at hand.

    python -m benchmarks.quick_sweep --data-root ../shared/data [--seeds 0]

Grid: image size 128 / 192 / 256, with epochs sized so that one run on the largest training set (MT Defects'
761 images, DifferNet's list) trains in at most 10 minutes on a 2-core CPU, from throughputs measured through the
CLI on real data (27 img/s at 128 px, 7 img/s at 256 px; 13 img/s at 192 px interpolated): 21, 10 and 5 epochs.
Each setting is scored by the mean over datasets of the mean of its available metrics (image AUROC everywhere;
pixel AUROC and AUPRO where masks exist); the best score wins, near-ties (within 0.3 points) go to the faster
setting. Writes results/benchmarks/quick_sweep.csv and .md (with the measured training minutes of every run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import REPO
from dskd.atomic import atomic_write, write_text
from dskd.repro.executors import execute
from dskd.repro.tables import METRICS, markdown
from dskd.run.profiles import profile_config

SETTINGS = ((128, 21), (192, 10), (256, 5))
DATASETS = {  # name -> (dataset, category, extra settings)
    "MT Defects": ("mt_defects", "mt_defects", {"split_file": "mt_defects/splits/differnet_train_free.txt"}),
    "MPDD metal_plate": ("mpdd", "metal_plate", {}),
    "MVTec AD bottle (no masks)": ("mvtec_ad", "bottle", {}),
}


def configs(root: Path, seeds: list[int], variant: str):
    for size, epochs in SETTINGS:
        for label, (dataset, category, extra) in DATASETS.items():
            extra = {k: str(root / v) if k == "split_file" else v for k, v in extra.items()}
            for seed in seeds:
                yield (size, epochs, label, seed), profile_config(
                    "quick", dataset=dataset, category=category, data_root=str(root), image_size=size, epochs=epochs,
                    seed=seed, variant=variant, **extra)


def score(table: pd.DataFrame) -> pd.DataFrame:
    per_dataset = table.groupby(["size", "epochs", "dataset"])[list(METRICS)].mean()
    per_dataset["available_mean"] = per_dataset[list(METRICS)].mean(axis=1, skipna=True)
    summary = per_dataset.groupby(["size", "epochs"])["available_mean"].mean().to_frame("score")
    summary["mt_train_minutes"] = table[table["dataset"] == "MT Defects"].groupby(["size", "epochs"])[
        "train_minutes"].mean()
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quick_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variant", default="dskd")
    p.add_argument("--out", default=str(REPO / "results"))
    args = p.parse_args(argv)
    root, out = Path(args.data_root).resolve(), Path(args.out)
    keys, cfgs = zip(*configs(root, args.seeds, args.variant), strict=True)
    t0 = time.perf_counter()
    outcomes = execute(list(cfgs), out / "quick" / "runs")  # shared with ./run_all.sh --profile quick
    rows = []
    for (size, epochs, label, seed), o in zip(keys, outcomes, strict=True):
        if not o.ok:
            print(f"FAILED {label} {size} px: {o.error}")
            continue
        info = json.loads((Path(o.path) / "config.json").read_text())
        rows.append({"size": size, "epochs": epochs, "dataset": label, "seed": seed,
                     **{m: o.metrics.get(m) if o.metrics.get(m) is not None else np.nan for m in METRICS},
                     "train_minutes": info["train_minutes"]})
    table = pd.DataFrame(rows)
    summary = score(table)
    best = summary["score"].max()
    chosen = summary[summary["score"] >= best - 0.003].sort_values("mt_train_minutes").index[0]
    target = out / "benchmarks"
    atomic_write(target / "quick_sweep.csv", lambda tmp: table.round(4).to_csv(tmp, index=False))
    shown = table.assign(**{m: (100 * table[m]).round(1) for m in METRICS}).round({"train_minutes": 2})
    write_text(target / "quick_sweep.md", "\n".join([
        "# Choosing the quick profile across datasets", "",
        f"Measured by `python -m benchmarks.quick_sweep` on this 2-core CPU: variant {args.variant}, "
        f"EfficientNet-Lite0 teacher, float32, seeds {', '.join(map(str, args.seeds))}, BatchNorm recalibration, "
        "z-score maps. Values in percent; pixel metrics are absent (nan) for the bottle copy, which has no masks.", "",
        markdown(shown.set_index(["size", "epochs", "dataset", "seed"])), "",
        "Score of a setting: mean over datasets of the mean of its available metrics.", "",
        markdown(summary.assign(score=(100 * summary["score"]).round(2), mt_train_minutes=summary[
            "mt_train_minutes"].round(2))), "",
        f"Chosen (best score, near-ties within 0.3 points to the faster): {chosen[0]} px, {chosen[1]} epochs. "
        f"Sweep wall time {(time.perf_counter() - t0) / 60:.1f} min.", ""]))
    print((target / "quick_sweep.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
