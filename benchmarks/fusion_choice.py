"""Re-deciding the map defaults across datasets, from saved maps (nothing retrained).

    python -m benchmarks.fusion_choice --data-root ../shared/data [--grid fusion|smoothing|students|scales]
                                       [--seeds 0 1 2]
                                       [--configs dskd se_only sd_only dskd_no_df]

The `quick` profile's runs are re-fused with every combination of one grid. `fusion`: student fusion (sum | max),
scale fusion (sum | product) and map normalization (the run's fitted z-score | none); `mean` fusions are left out,
they rank every image and pixel exactly as `sum` does, and the `mean` normalization needs statistics of the training
images that the saved maps do not hold. `smoothing`: the Gaussian's sigma (input pixels) and the image score (0: the
map's maximum, k: the mean of its k largest pixels). `students`: the dual student's map from both students or from
one of them alone (is the second student worth its cost?). `scales`: the pyramid levels whose maps are fused (0:
stride 4, 1: stride 8, 2: stride 16; the multi-scale fusion the paper ablates). Each combination is scored as
`benchmarks.quick_sweep` scores a profile: the mean over datasets of the mean of the available metrics, averaged
over the configurations asked for (a default is shared by all of them); a default changes only if another
combination wins by more than the margin. Writes results/benchmarks/<grid>_choice.csv and .md.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import pandas as pd

from benchmarks.common import REPO
from dskd import suite
from dskd.atomic import atomic_write, write_text
from dskd.repro.tables import ABSENT
from dskd.run.metrics import all_metrics

DATASETS = ("mt_defects", "mpdd", "mvtec_ad")
MARGIN = 0.3  # points of the score; below it a difference is a tie (one seed's noise on MT alone is ~1 point)
GRIDS = {  # first value of each: the default, so the first combination is the defaults
    "fusion": {"student_fusion": ("sum", "max"), "scale_fusion": ("sum", "product"), "normalize": (True, False)},
    "smoothing": {"sigma": (4.0, 1.0, 2.0, 8.0), "score_share": (0.0, 0.01, 0.05)},
    "students": {"students": (("se", "sd"), ("se",), ("sd",))},
    "scales": {"scales": ((0, 1, 2), (1, 2), (0, 1), (0, 2), (0,), (1,), (2,))},
}


def rescore(run: str, grid: dict[str, tuple]) -> list[dict]:
    saved = suite.load_maps(run)
    rows = []
    for values in itertools.product(*grid.values()):
        choice = dict(zip(grid, values, strict=True))
        maps, scores = suite.fuse_saved(saved, **choice)
        m = all_metrics(saved.labels, scores, saved.masks, maps, valid=saved.valid)
        choice = {k: " + ".join(map(str, v)) if isinstance(v, tuple) else v for k, v in choice.items()}
        if "normalize" in choice:
            choice["map_norm"] = saved.fusion["map_norm"] if choice.pop("normalize") else "none"
        rows.append({**choice, **{k: m.get(k) for k in suite.METRICS}})
    return rows


def measure(args: argparse.Namespace, out: Path) -> tuple[pd.DataFrame, list[str]]:
    rows, described = [], []
    for dataset in DATASETS:
        exp = suite.experiment(dataset=dataset, profile="quick", data_root=args.data_root, seeds=args.seeds,
                               out_dir=out, runs_root=out / "quick" / "runs")
        if exp.skipped:
            continue
        described.append(exp.describe())
        for _, r in suite.run_grid(exp, args.configs).iterrows():  # cached runs are only looked up
            rows += [{"dataset": dataset, "config": r["method"], "seed": r["seed"], **x}
                     for x in rescore(r["run"], GRIDS[args.grid])]
    return pd.DataFrame(rows).astype({m: float for m in suite.METRICS}), described


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fusion_choice", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--grid", choices=sorted(GRIDS), default="fusion")
    p.add_argument("--configs", nargs="+", default=["dskd"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default=str(REPO / "results"))
    args = p.parse_args(argv)
    out = Path(args.out)
    table, described = measure(args, out)
    keys = [k if k != "normalize" else "map_norm" for k in GRIDS[args.grid]]
    per_dataset = table.groupby(["config", *keys, "dataset"], sort=False)[list(suite.METRICS)].mean()
    per_dataset["available_mean"] = per_dataset.mean(axis=1, skipna=True)
    per_config = 100 * per_dataset["available_mean"].groupby(level=["config", *keys], sort=False).mean()
    score = per_config.groupby(level=keys, sort=False).mean().round(2)
    shown = (100 * per_dataset[list(suite.METRICS)]).round(1).unstack("dataset").astype(object).fillna(ABSENT)
    shown[("score", "mean")] = per_config.round(2)
    name, target = f"{args.grid}_choice", out / "benchmarks"
    atomic_write(target / f"{name}.csv", lambda tmp: table.round(4).to_csv(tmp, index=False))
    best, default = score.idxmax(), score.iloc[0]
    best = best if isinstance(best, tuple) else (best,)
    verdict = ("kept: no combination beats them by more than the margin" if score.max() <= default + MARGIN
               else "changed to " + ", ".join(f"{k} {v}" for k, v in zip(keys, best, strict=True)))
    write_text(target / f"{name}.md", "\n".join([
        f"# Map defaults ({args.grid}), re-scored across datasets from saved maps", "",
        "Measured by `python -m benchmarks.fusion_choice --grid " + args.grid + "` (nothing retrained): "
        + "; ".join(described) + f". Configurations: {', '.join(args.configs)}.",
        "Values in percent, mean over seeds; score: the mean over datasets of the mean of the available metrics. "
        f"The first row of each configuration holds the defaults ({', '.join(keys)}).", "",
        suite.markdown(shown), "",
        "Score of each combination averaged over the configurations: "
        + "; ".join(f"{' / '.join(map(str, k if isinstance(k, tuple) else (k,)))} {v:.2f}" for k, v in score.items())
        + ".", "",
        f"Best: {', '.join(f'{k} {v}' for k, v in zip(keys, best, strict=True))} ({score.max():.2f}); the defaults "
        f"score {default:.2f}. A default changes only when another combination beats it by more than {MARGIN} "
        f"points (quick_sweep's near-tie margin): defaults {verdict}.", ""]))
    print((target / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
