"""Experiments: what a notebook's parameters mean under a profile, and the grid of runs it needs.

A notebook says which dataset and methods it wants; `experiment` decides what its `ExperimentConfig` means under
the profile's rules (`demo` swaps every benchmark for the synthetic textures and says so) and `run_grid` trains
only the runs it lacks, then evaluates them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..data import categories as present_categories
from ..data import get_dataset
from ..errors import DskdError
from ..run.config import RunConfig
from ..run.folder import RunDir
from ..run.methods import get_method
from .claims import CLAIM_METHODS
from .executors import execute
from .experiment_config import Experiment, ExperimentConfig, from_parameters, parameter_fields, planning_pass

log = logging.getLogger(__name__)


def experiment(*, dataset: str, config: ExperimentConfig | None = None, runs_root: str | Path | None = None,
               **params: Any) -> Experiment:
    """What `config` means for `dataset` (a notebook passes `suite.from_parameters(globals())`); without it, `params`
    name its fields (profile=..., seeds=..., executor="ray", ...), and any other keyword is a run setting
    (split_file=...). Under a profile whose rules say `stand_in`, the synthetic textures stand in for the
    benchmark; an absent benchmark is skipped (and said so) or an error, as the profile's `missing_data` says.
    Run folders go to `runs_root` (default `<out_dir>/runs`), which benchmarks and notebooks of one profile share."""
    known = {name for name, _, _ in parameter_fields()}
    config = config or from_parameters(params)
    rules, spec, out_dir = config.rules(), get_dataset(dataset), Path(config.out_dir)
    extra = {**config.run_settings(), **{k: v for k, v in params.items() if k not in known and v is not None}}
    root = str(Path(config.data_root or out_dir / "data").expanduser().resolve())
    base = dict(dataset=dataset, profile=config.profile, data_root=root, seeds=list(config.seeds), out_dir=out_dir,
                overrides=extra, executor=config.executor, runs_folder=Path(runs_root) if runs_root else None)
    if rules.stand_in or dataset == "synthetic":
        cats = list(config.categories or get_dataset("synthetic").categories)[:rules.max_categories]
        return Experiment(categories=cats, stand_in=dataset != "synthetic", **base)
    try:
        found = present_categories(dataset, root)
    except DskdError:
        found = []
    wanted = list(config.categories or spec.categories or found)[:rules.max_categories]
    missing = [c for c in wanted if c not in found] or ([] if wanted else ["any category"])
    if missing:
        where = f"{config.data_root or root} (looked for {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''})"
        if rules.missing_data == "error":
            raise DskdError(f"{spec.title} not found at {where}; download it with "
                            f"'python -m dskd.data download {dataset} --root {root}'")
        reason = f"dataset not found at {where}"
        log.warning("%s: %s", spec.title, reason)
        wanted = [c for c in wanted if c in found]
        if not wanted:
            return Experiment(categories=[], skipped=reason, **base)
    if "split_file" not in extra and spec.standard_split_file(root):
        extra["split_file"] = spec.standard_split_file(root)
    return Experiment(categories=wanted, **base)


def grid_configs(exp: Experiment, methods: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("dskd",),
                 ) -> list[tuple[str, str, int, RunConfig]]:
    """(category, method, seed, settings) of every run the grid needs, without training anything."""
    if not isinstance(methods, Mapping):
        methods = {m: get_method(m).overrides for m in methods}
    return [(category, name, seed, exp.config(category, seed, **method))
            for category in exp.categories for name, method in methods.items() for seed in exp.seeds]


def run_grid(exp: Experiment, methods: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("dskd",),
             quiet: bool = True) -> pd.DataFrame:
    """Train (if needed) and evaluate every category x method x seed on the experiment's executor (local by
    default); one row per run. A run that fails is logged with its error and left out of the table.

    Under `./run_all.sh`'s planning pass (`planning_pass()`) nothing trains: the runs are only recorded."""
    grid = grid_configs(exp, methods)
    runs_root = exp.runs_root
    if plan := planning_pass():
        record_plan(plan, [cfg for *_, cfg in grid], runs_root)
        return pd.DataFrame()
    t0 = time.perf_counter()
    outcomes = execute([cfg for *_, cfg in grid], runs_root, exp.executor, quiet=quiet)
    rows = []
    for (category, name, seed, _), outcome in zip(grid, outcomes, strict=True):
        if not outcome.ok:
            continue
        metrics = outcome.metrics
        rows.append({
            "category": category, "method": name, "seed": seed,
            **{k: v for k, v in metrics.items() if not isinstance(v, dict)},
            "per_defect_image_auroc": metrics.get("per_defect_image_auroc", {}),
            "train_minutes": RunDir(Path(outcome.path), outcome.config).info().get("train_minutes"),
            "run": outcome.path, "wall_seconds": round((time.perf_counter() - t0) / max(1, len(grid)), 1),
        })
    return pd.DataFrame(rows)


LEDGER_DATASETS = ("mvtec_ad", "mvtec3d", "mt_defects", "mpdd")  # the real benchmarks a profile's ledger reads


def claims_runs(config: ExperimentConfig, quiet: bool = True) -> tuple[pd.DataFrame, dict[str, str]]:
    """The runs behind the claims ledger (`dskd.repro.claims`): every method it compares on every benchmark the profile
    reaches (the synthetic textures alone under stand-in profiles), cached runs reused and missing ones trained;
    and, per dataset, what produced them."""
    frames, described = [], {}
    for dataset in ("synthetic",) if config.rules().stand_in else LEDGER_DATASETS:
        exp = experiment(dataset=dataset, config=config)
        runs = pd.DataFrame() if exp.skipped else run_grid(exp, CLAIM_METHODS, quiet=quiet)
        if not runs.empty:
            frames.append(runs.assign(dataset=dataset))
            described[dataset] = exp.describe()
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), described


def record_plan(plan: Path, configs: list[RunConfig], runs_root: Path) -> None:
    """Append the runs a notebook needs to the plan file (one JSON line each: where, and with which settings)."""
    import json

    plan.parent.mkdir(parents=True, exist_ok=True)
    with open(plan, "a") as f:
        for cfg in configs:
            f.write(json.dumps({"runs_root": str(runs_root.resolve()), "config": cfg.to_dict()}) + "\n")
