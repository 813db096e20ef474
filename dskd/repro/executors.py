"""Executors for a grid of runs: `local` (one after another, in this process; the default) and `ray` (one Ray task
per run, on every GPU of a machine or across a cluster).

Each run trains (or resumes from its last epoch checkpoint) and is evaluated with its maps saved, in its own folder
under `runs_root`, so that a notebook finds it cached. A run that fails for a reason of its own (bad data, a
non-finite loss) is reported with its one-line error and does not stop the others; a Ray task whose worker or node
dies is retried elsewhere and resumes from the run's checkpoint. Nothing here imports Ray unless asked to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..run.config import RunConfig
from .task import ExecutorConfig, run_folder, train_and_evaluate

log = logging.getLogger(__name__)


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

