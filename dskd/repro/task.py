"""What every executor runs: one run as a task (train or resume it, evaluate it with its maps saved, in its own
folder), and the options that say where tasks run. Below both executors, so that neither imports the other."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DskdError
from ..run.config import RunConfig
from ..settings import check_values, setting

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ExecutorConfig:
    name: str = setting("local", "local: train here, one run after another | ray: one Ray task per run", EXECUTORS)
    ray_address: str | None = setting(None, "for ray: None starts Ray here; auto, or ray://HOST:10001, joins a "
                                            "running cluster")
    gpus_per_run: float | None = setting(None, "for ray: GPUs per run (fractions share a GPU; None: 1 where there "
                                               "are GPUs)", at_least=0)
    cpus_per_run: float = setting(1.0, "for ray: CPUs per run", above=0)
    max_retries: int = setting(3, "how often a run whose worker or node died is started again", cli=False,
                               at_least=0)

    def validate(self) -> ExecutorConfig:
        if self.name not in EXECUTORS:
            raise DskdError(f"executor '{self.name}' is not one of {', '.join(EXECUTORS)}")
        check_values(self)
        return self


def run_folder(cfg: RunConfig, runs_root: Path | str) -> Path:
    """Where a run lives; `runs_root` may be a link to a folder not made yet (results/quick/runs -> ../runs)."""
    return Path(runs_root).resolve() / cfg.validate().with_device("any").run_name()


def train_and_evaluate(config: dict[str, Any], runs_root: str, threads: int | None = None) -> dict[str, Any]:
    """One run, as a task: train or resume it, evaluate it with its maps saved; its log goes to `<run>/run.log`.
    Returns {"path", "metrics"} or {"error"} (a problem of the run's own, stated in one line)."""
    from ..run.evaluation import evaluate_once
    from ..run.training import fit

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
            metrics = evaluate_once(run)
            return {"path": str(run.path), "metrics": metrics, "seconds": round(time.perf_counter() - t0, 3)}
        finally:
            logging.getLogger("dskd").removeHandler(handler)
            handler.close()
    except DskdError as exc:
        return {"error": str(exc)}
