"""The GPU sweeps behind docs/findings.md sections 7, 8 and 12: many MT Defects runs, on the grid executor (Ray).

    python -m benchmarks.gpu_sweep --data-root DATA --split-file DATA/mt_defects/splits/differnet_train_free.txt \
        --grid explore|long|both|longer --workers 6 --out OUT

Each run is the `quick` profile with the grid's image size, epochs, fit mode, configuration and seed, trained and
evaluated by dskd's own engine with `precision="float32"` (the numbers speak for this CPU's float32 runs). Every
finished run appends one JSON line to OUT/sweep.jsonl: the default metrics (image AUROC, pixel AUROC, AUPRO), per-
defect image AUROC, and the same saved maps re-fused without retraining (`analysis`: top-1% score, no
normalization, and for dual runs max fusion and each student alone). Records:
results/benchmarks/mt_sweep_gpu_h200.jsonl (grid explore), mt_long_gpu_h200.jsonl (long), mt_both_gpu_h200.jsonl
(both) and mt_longer_gpu_h200.jsonl (longer); `--summarize` tabulates those with three seeds per configuration
(accuracy_mt_gpu_long.md, accuracy_mt_gpu_both.md). The `recipe` grid (2026-11-27: 42 epochs at 128 px, one
process per `--job`) was stopped on the device before its evaluations and left no record (findings section 17).
The device could only take data under 64 MiB: the images were first downscaled to 256 px on their longer side
(`--downscale-to` does that into a new folder); the teacher's weights package, absent there, travelled beside them
(its installed folder copied to a directory put on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from dskd.repro.tables import METRICS
from dskd.run.methods import METHODS

TRIO = ["dskd", "se_only", "sd_only"]


def grid(name: str) -> list[tuple[str, int, int, str, int]]:
    """(configuration, image size, epochs, fit mode, seed), most informative first."""
    if name == "smoke":  # a check of the plumbing on any machine
        return [("dskd", 64, 1, "stretch", 0), ("se_only", 64, 1, "pad", 0)]
    if name == "both":  # 2026-11-26: df_source="both" at the quick profile's 8 epochs, then converged
        quick = ["dskd_df_both", "dskd_df_both_detach", *TRIO, "dskd_df_teacher"]
        runs = [(m, 64, 8, "stretch", s) for s in (0, 1, 2) for m in quick]
        runs += [(m, 64, 20, "stretch", s) for s in (0, 1, 2) for m in ("dskd_df_both", "dskd_df_both_detach")]
        return runs + [(m, 64, 20, "stretch", s) for s in (0, 1, 2) for m in [*TRIO, "dskd_df_teacher"]]
    if name == "recipe":  # 2026-11-27: MT's longer recipe, the quick profile (128 px) at twice its 21 epochs
        return [(m, 128, 42, "stretch", s) for s in (0, 1, 2) for m in ("dskd", "se_only", "sd_only", "dskd_no_df")]
    if name == "longer":  # 2026-11-26: do the students' roles settle further out?
        return [(m, 64, 30, "stretch", s) for s in (0, 1, 2) for m in TRIO]
    if name == "long":
        runs = [(m, 64, 20, "stretch", s) for s in (0, 1, 2) for m in [*TRIO, "dskd_no_df", "dskd_df_teacher"]]
        return runs + [(m, 128, 20, "stretch", s) for s in (1, 2) for m in TRIO]
    # Sizes and epochs at about the same CPU cost (findings section 3), then the arrangements, then convergence.
    plan = [(TRIO, 128, 3, "stretch"), (TRIO, 64, 6, "stretch"), (TRIO, 96, 4, "stretch"), (TRIO, 128, 3, "pad"),
            (["dskd_df_teacher", "dskd_df_detach", "dskd_no_df", "dskd_se_adam"], 128, 3, "stretch"),
            (["dskd_df_teacher", "dskd_df_detach"], 64, 6, "stretch"),
            ([*TRIO, "dskd_df_teacher", "dskd_df_detach"], 128, 20, "stretch"), (TRIO, 64, 6, "pad"),
            (TRIO, 96, 4, "pad"), (["dskd_df_teacher", "dskd_df_detach"], 96, 4, "stretch"),
            (TRIO, 160, 2, "stretch"), (TRIO, 64, 20, "stretch")]
    return [(m, size, ep, fit, 0) for methods, size, ep, fit in plan for m in methods]


def _config(method: str, size: int, epochs: int, fit: str, seed: int, args: argparse.Namespace):
    from dskd.run.profiles import profile_config

    return profile_config("quick", dataset="mt_defects", category="mt_defects", data_root=args.data_root,
                          split_file=args.split_file, image_size=size, epochs=epochs, fit_mode=fit, seed=seed,
                          device=args.device, precision="float32", **METHODS[method].overrides)


def _refused(run_dir: Path) -> dict[str, list[float]]:
    """The run's saved per-scale maps fused in other ways, without retraining."""
    from dskd import suite
    from dskd.run.metrics import all_metrics

    saved = suite.load_maps(run_dir)
    variants: dict[str, dict] = {"topk1pct": {"score_share": 0.01}, "nonorm": {"normalize": False}}
    if len(saved.students) == 2:
        variants.update(max={"student_fusion": "max"}, only_se={"students": ["se"]}, only_sd={"students": ["sd"]})
    out = {}
    for name, options in variants.items():
        maps, scores = suite.fuse_saved(saved, **options)
        m = all_metrics(saved.labels, scores, saved.masks, maps, saved.defect_types, valid=saved.valid)
        out[name] = [round(m[k], 4) for k in METRICS]
    return out


def _record(job: tuple, outcome, size: int) -> dict:
    """One JSON line of the sweep: the run's default metrics, per-type AUROC and its maps re-fused other ways."""
    method, size, epochs, fit_mode, seed = job
    if not outcome.ok:  # one failed run does not end the sweep: it is recorded with its error
        return {"job": list(job), "error": outcome.error}
    path, res = Path(outcome.path), outcome.metrics
    return {"name": f"{method}_s{size}_e{epochs}_{fit_mode}_seed{seed}", "method": method, "size": size,
            "epochs": epochs, "fit": fit_mode, "seed": seed, "run": str(path),
            "train_minutes": json.loads((path / "config.json").read_text())["train_minutes"],
            "wall_s": round(outcome.seconds, 1),
            "loss_last": (path / "train_log.csv").read_text().strip().splitlines()[-1],
            "default": [round(res[k], 4) for k in METRICS],
            "per_type": {k: round(v, 4) for k, v in res["per_defect_image_auroc"].items()},
            "analysis": _refused(path)}


def run_sweep(args: argparse.Namespace) -> None:
    """The grid's runs on the executor (local: one after another; ray: `--workers` runs share each GPU), then one
    JSON line per run in OUT/sweep.jsonl."""
    from dskd.repro.executors import execute
    from dskd.repro.task import ExecutorConfig

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    jobs = grid(args.grid)
    if args.job is not None:  # one job of the grid: several such processes share a GPU without Ray
        if not 0 <= args.job < len(jobs):
            raise SystemExit(f"error: --job {args.job} is not in grid {args.grid} (0 to {len(jobs) - 1})")
        jobs = [jobs[args.job]]
    executor = ExecutorConfig(args.executor, args.ray_address, 1.0 / args.workers if args.device == "cuda" else 0.0,
                              max(1.0, (os.cpu_count() or 1) / args.workers))
    outcomes = execute([_config(*job, args) for job in jobs], args.runs, executor)
    with open(Path(args.out) / "sweep.jsonl", "a") as f:
        for job, outcome in zip(jobs, outcomes, strict=True):
            f.write(json.dumps(_record(job, outcome, job[1])) + "\n")


def downscale(src: Path, dst: Path, longest: int = 256) -> None:
    """A copy of MT Defects with every image at most `longest` px on its longer side (masks by nearest)."""
    import shutil

    from PIL import Image

    for f in sorted(src.glob("MT_*/Imgs/*")):
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        im = Image.open(f)
        scale = longest / max(im.size)
        if scale < 1:
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(size, Image.NEAREST if f.suffix == ".png" else Image.BICUBIC)
        im.save(out, **({"quality": 90} if f.suffix == ".jpg" else {"optimize": True}))
    shutil.copytree(src / "splits", dst / "splits", dirs_exist_ok=True)


def summarize(records: list[Path], out: Path, name: str = "accuracy_mt_gpu_long", note: str = "") -> None:
    """Mean and std over seeds, per image size and configuration, of the sweep records' default metrics."""
    import pandas as pd

    from dskd.atomic import atomic_write, write_text
    from dskd.suite import markdown

    rows = [json.loads(line) for f in records for line in Path(f).read_text().splitlines() if line.strip()]
    runs = pd.DataFrame([{"size": r["size"], "epochs": r["epochs"], "fit": r["fit"], "config": r["method"],
                          "seed": r.get("seed", 0), "image_auroc": r["default"][0], "pixel_auroc": r["default"][1],
                          "aupro": r["default"][2], "train_minutes": r["train_minutes"],
                          **{f"image_auroc_{t}": v for t, v in r["per_type"].items()}}
                         for r in rows if "error" not in r])
    keys = ["size", "epochs", "fit", "config"]
    runs = runs.drop_duplicates([*keys, "seed"], keep="last")  # a run repeated in a later file: the later one
    counts = runs.groupby(keys).seed.nunique()
    runs = runs.set_index(keys).loc[counts[counts >= 3].index].reset_index()  # seeds 0-2 only: a mean of three
    metrics = list(METRICS)
    table = runs.groupby(keys, sort=False).agg(
        seeds=("seed", "nunique"), **{f"{m}_{s}": (m, s if s == "mean" else lambda x: x.std(ddof=0))
                                      for m in metrics for s in ("mean", "std")},
        **{c: (c, "mean") for c in runs.columns if c.startswith("image_auroc_")},
        train_minutes=("train_minutes", "sum"))
    atomic_write(out / f"{name}.csv", lambda tmp: table.round(4).to_csv(tmp))
    shown = table.reset_index()[[*keys, "seeds"]].copy()
    for m in metrics:
        pairs = zip(table[f"{m}_mean"], table[f"{m}_std"], strict=True)
        shown[m] = [f"{100 * a:.1f} ± {100 * b:.1f}" for a, b in pairs]
    shown["train_minutes"] = table["train_minutes"].round(1).to_numpy()
    write_text(out / f"{name}.md", "\n".join([
        f"# {name}", "",
        "Measured by this suite with `python -m benchmarks.gpu_sweep` on one NVIDIA H200, float32: MT Defects "
        "(DifferNet's training list; images downscaled beforehand to 256 px on the longer side), `quick` profile "
        "(offline EfficientNet-Lite0 teacher, batch 8) with the image size and epochs shown, seeds 0, 1, 2. "
        "Values in percent, mean ± std over seeds; train_minutes summed over seeds (GPU minutes, not this CPU's).",
        f"Records: {', '.join(Path(f).name for f in records)} (a seed run in two files: the later one).",
        *([note] if note else []), "", markdown(shown.set_index("config")), ""]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root")
    p.add_argument("--split-file")
    p.add_argument("--grid", choices=("explore", "long", "both", "longer", "recipe", "smoke"), default="explore")
    p.add_argument("--job", type=int, help="run only this job (its index in the grid)")
    p.add_argument("--workers", type=int, default=6, help="runs at once per GPU (with --executor ray)")
    p.add_argument("--executor", choices=("local", "ray"), default="ray")
    p.add_argument("--ray-address", help="a running Ray cluster (default: start one on this machine)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--runs", default="/tmp/dskd_sweep_runs")
    p.add_argument("--out", default="results/benchmarks/sweep")
    p.add_argument("--downscale-to", help="write a downscaled copy of DATA-ROOT/mt_defects here and exit")
    p.add_argument("--summarize", nargs="+", metavar="JSONL", help="tabulate finished sweeps into --out and exit")
    p.add_argument("--name", default="accuracy_mt_gpu_long", help="with --summarize: the table's file name")
    p.add_argument("--note", default="", help="with --summarize: a line for the table's header")
    args = p.parse_args(argv)
    if args.summarize:
        summarize([Path(f) for f in args.summarize], Path(args.out), args.name, args.note)
        return 0
    if args.downscale_to:
        downscale(Path(args.data_root) / "mt_defects", Path(args.downscale_to) / "mt_defects")
        return 0
    if not (args.data_root and args.split_file):
        p.error("--data-root and --split-file are needed to run a sweep")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    run_sweep(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
