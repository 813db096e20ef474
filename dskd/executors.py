"""Executors for a grid of runs: `local` (one after another, in this process; the default) and `ray` (one Ray task
per run, on every GPU of a machine or across a cluster).

Each run trains (or resumes from its last epoch checkpoint) and is evaluated with its maps saved, in its own folder
under `runs_root`, so that a notebook finds it cached. A run that fails for a reason of its own (bad data, a
non-finite loss) is reported with its one-line error and does not stop the others; a Ray task whose worker or node
dies is retried elsewhere and resumes from the run's checkpoint. Nothing here imports Ray unless asked to.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .config import RunConfig
from .errors import DskdError

log = logging.getLogger(__name__)
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ExecutorConfig:
    name: str = "local"
    ray_address: str | None = None  # None: start Ray on this machine; "auto" or "ray://host:10001": join a cluster
    gpus_per_run: float | None = None  # None: 1 where the cluster has GPUs, else 0; fractions share a GPU
    cpus_per_run: float = 1.0
    max_retries: int = 3  # how often a run whose worker or node died is started again

    def validate(self) -> ExecutorConfig:
        if self.name not in EXECUTORS:
            raise DskdError(f"executor '{self.name}' is not one of {', '.join(EXECUTORS)}")
        if (self.gpus_per_run is not None and self.gpus_per_run < 0) or self.cpus_per_run <= 0:
            raise DskdError(f"gpus_per_run must be >= 0 and cpus_per_run > 0, got {self.gpus_per_run} and "
                            f"{self.cpus_per_run}")
        return self


@dataclass
class Outcome:
    config: RunConfig
    path: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0  # inside the task: training (or finding it cached) and evaluation

    @property
    def ok(self) -> bool:
        return self.error is None


def run_folder(cfg: RunConfig, runs_root: Path | str) -> Path:
    return Path(runs_root) / cfg.validate().with_device("any").run_name()


def train_and_evaluate(config: dict[str, Any], runs_root: str, threads: int | None = None) -> dict[str, Any]:
    """One run, as a task: train or resume it, evaluate it with its maps saved; its log goes to `<run>/run.log`.
    Returns {"path", "metrics"} or {"error"} (a problem of the run's own, stated in one line)."""
    from .experiments import evaluated
    from .training import fit

    if threads:
        os.environ["DSKD_NUM_THREADS"] = str(threads)
    cfg, t0 = RunConfig.from_dict(config), time.perf_counter()
    try:
        folder = run_folder(cfg, runs_root)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".worker.pid").write_text(f"{os.getpid()} {os.getppid()}")  # the worker, and who started it
        handler = logging.FileHandler(folder / "run.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("dskd").addHandler(handler)
        logging.getLogger("dskd").setLevel(logging.INFO)
        try:
            run = fit(cfg, runs_root=runs_root, quiet=True)
            metrics = evaluated(run)
            return {"path": str(run.path), "metrics": metrics, "seconds": round(time.perf_counter() - t0, 3)}
        finally:
            logging.getLogger("dskd").removeHandler(handler)
            handler.close()
    except DskdError as exc:
        return {"error": str(exc)}


def execute(configs: list[RunConfig], runs_root: Path | str, executor: ExecutorConfig | None = None,
            quiet: bool = False) -> list[Outcome]:
    """Train and evaluate every distinct run of `configs` (two equal configs are one run); one Outcome each, in
    the order given."""
    executor = (executor or ExecutorConfig()).validate()
    unique = list({run_folder(c, runs_root): c for c in configs}.items())
    if executor.name == "ray":
        from .ray_executor import run_on_ray

        results = run_on_ray([c for _, c in unique], Path(runs_root), executor, quiet)
    else:
        results = [train_and_evaluate(c.to_dict(), str(runs_root))
                   for _, c in tqdm(unique, desc="runs", unit="run", disable=quiet or len(unique) < 2)]
    by_folder = {folder: r for (folder, _), r in zip(unique, results, strict=True)}
    outcomes = [Outcome(c, **by_folder[run_folder(c, runs_root)]) for c in configs]
    for o in outcomes:
        if not o.ok:
            log.error("run failed: %s", o.error)
    return outcomes


def summary(outcomes: list[Outcome]) -> str:
    failed = [o for o in outcomes if not o.ok]
    lines = [f"{len(outcomes) - len(failed)} run(s) done, {len(failed)} failed"]
    lines += [f"  FAILED {o.config.run_name()}: {o.error}" for o in failed]
    return "\n".join(lines)

