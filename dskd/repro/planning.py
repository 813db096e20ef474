"""Plan, then train, then tabulate: `./run_all.sh --executor ray` first runs every chosen notebook in a planning
pass that records the runs it needs without training any (`experiments.run_grid` under `planning_pass()`), trains the
union of those runs once on the executor, and only then runs the notebooks, which find every run cached. Two
notebooks that need the same run never train it twice."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from ..run.config import RunConfig
from .executors import execute, summary
from .experiment_config import PLAN_ENV
from .notebook_exec import Limits, papermill
from .task import ExecutorConfig, run_folder

log = logging.getLogger(__name__)


def plan(notebooks: list[Path], params: dict, work: Path, limits: Limits) -> dict[Path, list[RunConfig]]:
    """runs_root -> the distinct runs the notebooks need there. A notebook that stops during planning (its later
    cells need trained runs) has recorded every run it asked for by then; one that runs past `limits` is stopped."""
    plan_file = work / "plan.jsonl"
    for nb in notebooks:
        papermill(nb, work / nb.name, params, work / f"{nb.stem}.log", limits, env={PLAN_ENV: str(plan_file)})
    planned: dict[Path, dict[Path, RunConfig]] = {}
    for line in plan_file.read_text().splitlines() if plan_file.is_file() else []:
        entry = json.loads(line)
        root, cfg = Path(entry["runs_root"]), RunConfig.from_dict(entry["config"])
        planned.setdefault(root, {})[run_folder(cfg, root)] = cfg
    return {root: list(runs.values()) for root, runs in planned.items()}


def plan_and_train(notebooks: list[Path], params: dict, out_dir: Path, executor: ExecutorConfig, limits: Limits) -> int:
    """Plan the notebooks' runs, train them on `executor`; prints a summary and returns how many runs failed."""
    with tempfile.TemporaryDirectory(prefix=".plan-", dir=out_dir if out_dir.is_dir() else None) as tmp:
        planned = plan(notebooks, params, Path(tmp), limits)
    n = sum(len(v) for v in planned.values())
    print(f"planned {n} distinct run(s) for {len(notebooks)} notebook(s); training them on {executor.name}", flush=True)
    outcomes = []
    for root, configs in planned.items():
        outcomes += execute(configs, root, executor)
    print(summary(outcomes), flush=True)
    return sum(not o.ok for o in outcomes)
