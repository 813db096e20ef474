"""Re-deciding the dual student's map defaults across datasets, from saved maps (nothing retrained).

    python -m benchmarks.fusion_choice --data-root ../shared/data [--seeds 0]

For each real dataset at hand, the `quick` profile's dskd runs are re-fused with every combination of student
fusion (sum | max), scale fusion (sum | product) and map normalization (the run's fitted z-score | none). `mean`
fusions are left out: they rank every image and pixel exactly as `sum` does. The `mean` map normalization needs
statistics fitted on the training images, which the saved maps do not hold, so it is not compared here. Each
combination is scored as `benchmarks.quick_sweep` scores a profile: the mean over datasets of the mean of the
available metrics; a default changes only if another combination wins that mean. Writes
results/benchmarks/fusion_choice.csv and .md.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import pandas as pd

from dskd import suite
from dskd.files import atomic_write, write_text
from dskd.metrics import all_metrics
from dskd.tables import ABSENT

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("mt_defects", "mpdd", "mvtec_ad")
MARGIN = 0.3  # points of the score; below it a difference is a tie (one seed's noise on MT alone is ~1 point)
CHOICES = {"student_fusion": ("sum", "max"), "scale_fusion": ("sum", "product"), "normalize": (True, False)}


def rescore(run: str) -> list[dict]:
    saved = suite.load_maps(run)
    rows = []
    for student, scale, normalize in itertools.product(*CHOICES.values()):
        maps, scores = suite.refuse(saved, student_fusion=student, scale_fusion=scale, normalize=normalize)
        m = all_metrics(saved.labels, scores, saved.masks, maps, valid=saved.valid)
        rows.append({"student_fusion": student, "scale_fusion": scale,
                     "map_norm": saved.fusion["map_norm"] if normalize else "none",
                     **{k: m.get(k) for k in suite.METRICS}})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fusion_choice", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default=str(REPO / "results"))
    args = p.parse_args(argv)
    out, rows, described = Path(args.out), [], []
    for dataset in DATASETS:
        exp = suite.experiment(dataset=dataset, profile="quick", data_root=args.data_root, seeds=args.seeds,
                               out_dir=out, runs_root=out / "quick" / "runs")
        if exp.skipped:
            continue
        described.append(exp.describe())
        for _, r in suite.run_grid(exp, ["dskd"]).iterrows():  # cached runs are only looked up
            rows += [{"dataset": dataset, "category": r["category"], "seed": r["seed"], **x} for x in rescore(r["run"])]
    table = pd.DataFrame(rows).astype({m: float for m in suite.METRICS})
    keys = list(CHOICES)[:2] + ["map_norm"]
    per_dataset = table.groupby([*keys, "dataset"], sort=False)[list(suite.METRICS)].mean()
    per_dataset["available_mean"] = per_dataset.mean(axis=1, skipna=True)
    score = (100 * per_dataset["available_mean"].groupby(level=keys, sort=False).mean()).round(2).to_frame("score")
    shown = (100 * per_dataset[list(suite.METRICS)]).round(1).unstack("dataset").astype(object).fillna(ABSENT)
    target = out / "benchmarks"
    atomic_write(target / "fusion_choice.csv", lambda tmp: table.round(4).to_csv(tmp, index=False))
    best, default = score["score"].idxmax(), score["score"].iloc[0]
    verdict = ("kept: no combination beats them by more than the margin" if score["score"].max() <= default + MARGIN
               else f"changed to student {best[0]}, scale {best[1]}, {best[2]}")
    write_text(target / "fusion_choice.md", "\n".join([
        "# The dual student's map defaults, re-scored across datasets from saved maps", "",
        "Measured by `python -m benchmarks.fusion_choice` (nothing retrained): " + "; ".join(described) + ".",
        "Values in percent; first row: the defaults (student sum, scale sum, z-score).", "",
        suite.markdown(shown.join(score.set_axis(pd.MultiIndex.from_tuples([("score", "mean")]), axis=1))), "",
        f"Best mean over datasets: student fusion {best[0]}, scale fusion {best[1]}, map normalization {best[2]} "
        f"({score['score'].max():.2f}); the defaults score {default:.2f}. A default changes only when another "
        f"combination beats it by more than {MARGIN} points (quick_sweep's near-tie margin): defaults {verdict}.",
        ""]))
    print((target / "fusion_choice.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
