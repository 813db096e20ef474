"""The grid of runs on this machine: local executor against Ray, what Ray adds per run, and a projection of the
paper's full grid onto 1, 8 and 64 GPUs.

    unshare -n bash -c "ip link set lo up; python -m benchmarks.grid"    # Ray stays on the loopback address

One grid, trained twice from scratch: `--notebook`'s runs under the `demo` profile (default: 10_table_mvtec_ad, 3
synthetic categories x 3 methods), first with the local executor (one run after another, 2 threads), then on Ray
with two single-threaded workers. Ray's overhead per run is its wall time minus the busiest worker's summed
in-task time, spread over the runs. The projection uses the measured overhead and per-run GPU times computed from
the measured training throughput in results/benchmarks/speed_gpu_h200.md; it is a projection, not a measurement.
Writes results/benchmarks/grid.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO
from dskd import suite
from dskd.atomic import write_text
from dskd.repro.executors import execute
from dskd.repro.experiments import grid_configs
from dskd.repro.task import ExecutorConfig

H200_TRAIN_IMG_S = 838  # results/benchmarks/speed_gpu_h200.md: paper profile (ResNet18, 256 px, batch 16)
# The paper's grid: training images per category (official splits) and the runs per category of every table and
# ablation (methods of the tables, students and DF ablations, without double counting), 3 seeds each.
PAPER_GRID = {"MVTec AD": (15, 242, 5), "MVTec 3D-AD": (10, 266, 3), "MT Defects": (1, 761, 3)}
EPOCHS, SEEDS = 200, 3


def demo_grid(methods: tuple[str, ...], data_root: str) -> list:
    exp = suite.experiment(dataset="mvtec_ad", profile="demo", data_root=data_root)
    return [cfg for *_, cfg in grid_configs(exp, methods)]


def timed(configs: list, root: Path, executor: ExecutorConfig) -> tuple[float, list]:
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    outcomes = execute(configs, root, executor, quiet=True)
    wall = time.perf_counter() - t0
    failed = [o.error for o in outcomes if not o.ok]
    if failed:
        raise SystemExit(f"error: {len(failed)} run(s) failed, e.g. {failed[0]}")
    return wall, outcomes


def projection(overhead_s: float) -> list[str]:
    runs = sum(cats * per for cats, _, per in PAPER_GRID.values()) * SEEDS
    gpu_s = sum(cats * per * SEEDS * EPOCHS * n_train / H200_TRAIN_IMG_S for cats, n_train, per in PAPER_GRID.values())
    longest = max(EPOCHS * n_train / H200_TRAIN_IMG_S for _, n_train, _ in PAPER_GRID.values())
    parts = ", ".join(f"{k} {c} categories x {p} methods" for k, (c, _, p) in PAPER_GRID.items())
    lines = [f"Paper grid: {runs} runs ({parts}, {SEEDS} seeds, {EPOCHS} epochs); {gpu_s / 3600:.1f} GPU hours "
             f"of training at {H200_TRAIN_IMG_S} img/s (projected, evaluation not included).", "",
             "| GPUs | projected wall time |", "|---|---|"]
    for n in (1, 8, 64):
        wall = max(gpu_s / n, longest) + overhead_s * runs / n
        lines.append(f"| {n} | {wall / 3600:.2f} h |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.grid", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(suite.TABLE_METHODS))
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dskd-grid-"))
    configs = demo_grid(tuple(args.methods), str(work / "data"))
    local_wall, _ = timed(configs, work / "local", ExecutorConfig("local"))
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_wall, outcomes = timed(configs, work / "ray", ExecutorConfig("ray", cpus_per_run=1))
    busy = sorted((o.seconds for o in outcomes), reverse=True)
    lanes = [0.0, 0.0]
    for b in busy:  # the two workers' busy time, packed as Ray would
        lanes[lanes.index(min(lanes))] += b
    overhead = max(0.0, ray_wall - max(lanes)) / len(configs)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    text = "\n".join([
        "# The grid on this machine: local executor vs Ray", "",
        "Measured by `python -m benchmarks.grid` (inside `unshare -n`, loopback only) on this 2-core CPU: "
        f"{len(configs)} runs of the `demo` profile ({', '.join(args.methods)} x 3 synthetic categories, "
        "EfficientNet-Lite0, 128 px, 3 epochs, float32, seed 0), each trained from scratch and evaluated with its "
        "maps saved.", "",
        "| executor | wall time |", "|---|---|",
        f"| local (one run at a time, 2 threads) | {local_wall:.1f} s |",
        f"| Ray (two single-threaded workers) | {ray_wall:.1f} s |", "",
        f"Ray's overhead: {overhead:.2f} s per run (measured: wall time minus the busier worker's in-task time, over "
        f"{len(configs)} runs; target <= 2 s).", "", *projection(overhead), ""])
    write_text(Path(args.out) / "grid.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
