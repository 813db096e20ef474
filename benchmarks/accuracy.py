"""Accuracy on real data: does the dual student beat each single student on MT Defects?

    python -m benchmarks.accuracy --data-root ../shared/data \
        --split-file ../shared/data/mt_defects/splits/differnet_train_free.txt

`quick` profile (offline teacher), 3 seeds, five configurations: dskd, se_only, sd_only, dskd_no_df and dskd
with df_source=teacher. Runs are cached under results/runs/, so an interrupted benchmark continues where it
stopped. Writes results/benchmarks/accuracy_mt.csv and .md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from dskd import suite
from dskd.config import FIT_MODES, MAP_NORMS, PRECISIONS
from dskd.files import atomic_write, write_text
from dskd.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("dskd", "se_only", "sd_only", "dskd_no_df", "dskd_df_teacher")


def accuracy_table(runs: pd.DataFrame, exp: suite.Experiment) -> pd.DataFrame:
    cfg = exp.config("mt_defects", exp.seeds[0])
    rows = []
    for method, sub in runs.groupby("method", sort=False):
        method_cfg = exp.config("mt_defects", exp.seeds[0], **METHODS[method].overrides).validate()
        row = {"variant": method_cfg.model.variant, "df_source": method_cfg.model.df_source,
               "config": method, "seeds": len(sub)}
        for m in suite.METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = sub[m].mean(), sub[m].std(ddof=0)
        per_type = pd.DataFrame(list(sub["per_defect_image_auroc"])).mean()
        row.update({f"image_auroc_{t}": v for t, v in per_type.items()})
        row.update(backbone=cfg.model.backbone, image_size=cfg.image_size, epochs=cfg.epochs,
                   fit_mode=cfg.fit_mode, map_norm=cfg.model.map_norm,
                   train_minutes=float(sub["train_minutes"].sum()))
        rows.append(row)
    return pd.DataFrame(rows).set_index("config")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--split-file", help="MT_Free training list (default: the documented 80/20 split)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(METHODS))
    p.add_argument("--profile", default="quick")
    p.add_argument("--image-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--fit-mode", choices=FIT_MODES)
    p.add_argument("--map-norm", choices=MAP_NORMS)
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--out", default=str(REPO / "results"))
    p.add_argument("--name", default="accuracy_mt", help="file name of the table under <out>/benchmarks/")
    args = p.parse_args(argv)

    out = Path(args.out)
    exp = suite.experiment(dataset="mt_defects", profile=args.profile, data_root=args.data_root, seeds=args.seeds,
                           out_dir=out, image_size=args.image_size, epochs=args.epochs, split_file=args.split_file,
                           fit_mode=args.fit_mode, map_norm=args.map_norm, precision=args.precision)
    if exp.skipped or exp.stand_in:
        raise SystemExit(f"error: {exp.skipped or 'profile ' + args.profile + ' does not use real data'}")
    t0 = time.perf_counter()
    runs = suite.run_grid(exp, args.configs, quiet=False)
    table = accuracy_table(runs, exp)
    target = out / "benchmarks"
    atomic_write(target / f"{args.name}.csv", lambda tmp: table.round(4).to_csv(tmp))
    shown = table[[c for c in table.columns if c.endswith(("_mean", "_std"))] + ["train_minutes"]].copy()
    for m in suite.METRICS:
        pairs = zip(shown[f"{m}_mean"], shown[f"{m}_std"], strict=True)
        shown[m] = [f"{100 * a:.1f} ± {100 * b:.1f}" for a, b in pairs]
    per_type = table[[c for c in table.columns if c.startswith("image_auroc_") and not c.endswith(("mean", "std"))]]
    write_text(target / f"{args.name}.md", "\n".join([
        f"# {args.name}", "",
        f"Measured by this suite on {exp.describe()}; split file: {args.split_file or 'default'}.",
        f"Fit mode {table['fit_mode'].iloc[0]}, map normalization {table['map_norm'].iloc[0]}. "
        f"Values in percent, mean ± std over seeds; train_minutes summed over seeds.", "",
        suite.markdown(shown[[*suite.METRICS, "train_minutes"]].assign(train_minutes=shown["train_minutes"].round(1))),
        "", "Per defect type, image AUROC (percent, mean over seeds):", "",
        suite.markdown((100 * per_type).round(1)), "",
        f"Benchmark wall time: {(time.perf_counter() - t0) / 60:.1f} min (cached runs take no training time).", ""]))
    print((target / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
