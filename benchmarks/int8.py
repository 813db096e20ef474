"""INT8 against FP32 on real data: the same trained runs exported to OpenVINO three times, scored on their test splits.

    python -m benchmarks.int8 --data-root ../shared/data [--runs-root results/quick/runs] [--seeds 0]

For each dataset with masks (MT Defects, MPDD metal_plate) and each seed, the `quick` profile's dskd run (trained
by `python -m benchmarks.accuracy` when missing) is exported as FP32, as INT8 (`--int8`: the students and the DF
embedding quantized by NNCF, calibrated on up to 300 of the run's training images; the teacher and the map path in
float) and with the teacher quantized too (`--int8-teacher`); each is run by OpenVINO on the test split, and the
change in image AUROC, pixel AUROC and AUPRO is reported (target: within 0.5 points). Writes
results/benchmarks/int8.csv and .md. INT8 speed is in speed_engines.md (`python -m benchmarks.engines`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import REPO, machine
from dskd.atomic import atomic_write, write_text
from dskd.repro.tables import METRICS, markdown

PRECISIONS = ("fp32", "int8", "int8_teacher")  # int8: `--int8` (students and DF embedding); + `--int8-teacher`
TARGET = 0.5  # points


def score_export(xml: Path, run_dir: Path) -> dict[str, float]:
    """Metrics of an exported model on its run's test split, through OpenVINO."""
    from dskd.data import run_images
    from dskd.deploy.predictors import open_predictor
    from dskd.run.batch_maps import preload, valid_tensor
    from dskd.run.folder import open_run
    from dskd.run.metrics import all_metrics

    cfg = open_run(run_dir).config
    test = run_images(cfg, "test")
    images, masks = preload(test, desc="test images", quiet=True)
    valid = valid_tensor(test)
    predictor = open_predictor(model=xml, engine="openvino")
    maps, scores = [], []
    t0 = time.perf_counter()
    for i in range(0, len(images), 16):
        m, s, _ = predictor.infer(images[i: i + 16].numpy(), None if valid is None else valid[i: i + 16].numpy())
        maps.append(m)
        scores.append(s)
    seconds = time.perf_counter() - t0
    result = all_metrics(test.labels, np.concatenate(scores), masks.numpy(), np.concatenate(maps),
                         test.defect_types, valid=None if valid is None else valid.numpy())
    return {**{k: result[k] for k in METRICS}, "seconds": seconds, "n_test": len(images)}


def compare(run_dir: Path, work: Path) -> list[dict]:
    from dskd.deploy.export import export

    rows = []
    for precision in PRECISIONS:
        t0 = time.perf_counter()
        xml = export(run_dir, "openvino", work / f"{run_dir.name}_{precision}.xml", int8=precision != "fp32",
                     int8_teacher=precision == "int8_teacher")
        rows.append({"precision": precision, "export_s": round(time.perf_counter() - t0, 1),
                     **score_export(xml, run_dir)})
    return rows


def measure(args: argparse.Namespace) -> tuple[pd.DataFrame, list[str]]:
    """Every dskd run of the chosen datasets (trained where missing), exported and scored at each precision; and
    the lines that describe the runs."""
    from dskd import suite

    rows, described = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            exp = suite.experiment(dataset=dataset, profile="quick", data_root=args.data_root, seeds=args.seeds,
                                   runs_root=args.runs_root)
            if exp.skipped:
                print(f"skipped {dataset}: {exp.skipped}")
                continue
            described.append(f"- {exp.describe()}")
            for run in suite.run_grid(exp, ["dskd"]).itertuples():  # trains only what is missing
                for row in compare(Path(run.run), Path(tmp)):
                    rows.append({"dataset": dataset, "category": run.category, "seed": run.seed, **row})
    return pd.DataFrame(rows), described


def report(table: pd.DataFrame, described: list[str]) -> str:
    shown = table.copy()
    for m in METRICS:
        shown[m] = (100 * shown[m]).round(2)
    shown["seconds"] = shown["seconds"].round(2)  # inference over the test split, batches of 16
    keys = ["dataset", "category", "seed"]
    wide = table.pivot_table(index=keys, columns="precision", values=list(METRICS))
    deltas = pd.concat({p: pd.DataFrame({m: 100 * (wide[(m, p)] - wide[(m, "fp32")]) for m in METRICS})
                        for p in PRECISIONS[1:]}, names=["precision"]).round(2)
    worst = float(deltas.loc["int8"].abs().to_numpy().max())
    worst_teacher = float(deltas.loc["int8_teacher"].abs().to_numpy().max())
    return "\n".join([
        "# INT8 (NNCF) against FP32, OpenVINO, real data", "",
        f"Measured by `python -m benchmarks.int8` on {machine()}. The `quick` profile's dskd runs (trained in "
        "float32), each exported by `python -m dskd export --format openvino` three times (FP32; `--int8`: the "
        "students and the DF embedding quantized by NNCF, calibrated on up to 300 of the run's own training images, "
        "the teacher and the map path in float; `--int8 --int8-teacher`: the teacher quantized too) and scored on "
        "the test split through OpenVINO. Percent. The runs:", "", *described, "",
        markdown(shown.set_index(keys)), "",
        "INT8 minus FP32, points:", "", markdown(deltas), "",
        f"- `--int8`, largest change: {worst:.2f} points (target: within {TARGET}): "
        f"{'met' if worst <= TARGET else 'MISSED'}.",
        f"- `--int8 --int8-teacher`, largest change: {worst_teacher:.2f} points.",
        ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.int8", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--datasets", nargs="+", default=["mt_defects", "mpdd"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--runs-root", default=str(REPO / "results" / "quick" / "runs"))
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    args = p.parse_args(argv)
    table, described = measure(args)
    atomic_write(Path(args.out) / "int8.csv", lambda t: table.round(5).to_csv(t, index=False))
    text = report(table, described)
    write_text(Path(args.out) / "int8.md", text)
    print(text)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
