"""What a notebook or `./run_all.sh` is told, declared once: `ExperimentConfig`'s fields are the notebooks'
parameters (each notebook's `parameters` cell is generated from them), `./run_all.sh`'s flags and the keywords of
`suite.experiment`. Adding a parameter is adding a field here. How each profile treats the benchmarks is a value
of `PROFILE_RULES`, never a comparison of profile names."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DskdError
from ..run.config import RunConfig
from ..run.profiles import PROFILES, profile_config
from ..settings import check_values, checked_flag, choices_of, flag_type, setting
from .task import ExecutorConfig


@dataclass(frozen=True)
class ProfileRules:
    """What a profile does beyond its run settings (`config.PROFILES`)."""

    stand_in: bool = False  # the synthetic textures stand in for every benchmark (and every table says so)
    missing_data: str = "skip"  # a benchmark absent from the data root: "skip" it, saying so, or stop with an "error"
    max_categories: int | None = None  # at most this many categories of each dataset; None: all
    complexity_size: int = 256  # image side of the complexity table (notebook 23)
    cell_timeout_s: int = 3600  # most seconds one notebook cell may run (./run_all.sh --timeout overrides it)


# A table's cell trains its notebook's whole grid of runs, so the cell limits follow the profiles' run lengths with
# room to spare: test notebooks take about 1 minute each, demo about 3, one `quick` MT Defects run 7.4 minutes of up
# to 36 a notebook, and `paper` is sized for a GPU.
PROFILE_RULES: dict[str, ProfileRules] = {
    "demo": ProfileRules(stand_in=True, cell_timeout_s=3600),
    "quick": ProfileRules(cell_timeout_s=8 * 3600),
    "paper": ProfileRules(missing_data="error", cell_timeout_s=72 * 3600),
    "test": ProfileRules(stand_in=True, max_categories=1, complexity_size=64, cell_timeout_s=900),
}


def _profiles() -> list[str]:
    return list(PROFILES)


PLAN_ENV = "DSKD_PLAN"  # set by `./run_all.sh --executor ray`'s planning pass: the file where the runs are recorded


def planning_pass() -> Path | None:
    """The plan file while notebooks run only to record the runs they need (`planning.plan`): nothing trains and
    nothing is written to the results, which their real run writes afterwards."""
    return Path(os.environ[PLAN_ENV]) if os.environ.get(PLAN_ENV) else None


@dataclass(frozen=True)
class ExperimentConfig:
    """A notebook's parameters. Each field is one parameter everywhere at once: a line of every notebook's
    `parameters` cell, a flag of `./run_all.sh`, a keyword of `suite.experiment`."""

    profile: str = setting("demo", "demo (synthetic, offline) | quick (real data, CPU) | paper (ResNet18, 200 "
                                   "epochs) | test", _profiles)
    data_root: str | None = setting(None, "folder holding mvtec_ad/, mvtec3d/, mt_defects/ (or the dataset folder "
                                          "itself)")
    categories: list[str] | None = setting(None, "None: every category of the dataset")
    backbone: str | None = setting(None, "None: the profile's teacher")
    image_size: int | None = setting(None, "None: the profile's (quick: each dataset's own)", at_least=32,
                                     at_most=1024, multiple_of=32)
    epochs: int | None = setting(None, "None: the profile's (quick: each dataset's own)", at_least=1)
    seeds: list[int] = setting(help="training seeds of every run", factory=lambda: [0], at_least=0,
                               at_most=2**32 - 1)
    out_dir: str = setting("../results/demo", "tables, figures and runs; ./run_all.sh passes results/<profile>")
    complexity_size: int | None = setting(None, "image side of the complexity table; None: the profile's",
                                          at_least=32, at_most=1024, multiple_of=32)
    executor: ExecutorConfig = setting(help="where the runs a notebook lacks are trained", factory=ExecutorConfig)

    def rules(self) -> ProfileRules:
        if self.profile not in PROFILE_RULES:
            raise DskdError(f"unknown profile '{self.profile}'; choose one of {', '.join(PROFILE_RULES)}")
        return PROFILE_RULES[self.profile]

    def run_settings(self) -> dict[str, Any]:
        """The run settings this config overrides (None keeps the profile's)."""
        return {k: v for k in ("backbone", "image_size", "epochs") if (v := getattr(self, k)) is not None}

    def but(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class Experiment:
    """One dataset under one profile: which categories, which settings, where results go."""

    dataset: str  # the benchmark the notebook is about
    profile: str
    data_root: str
    categories: list[str]
    seeds: list[int]
    out_dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    stand_in: bool = False  # True when the synthetic textures stand in for the benchmark (demo profile)
    skipped: str | None = None  # why nothing was run (quick profile, data absent)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # where `run_grid` trains the runs it lacks
    runs_folder: Path | None = None  # where run folders live; None: <out_dir>/runs

    @property
    def runs_root(self) -> Path:
        return self.runs_folder or self.out_dir / "runs"

    @property
    def data_name(self) -> str:
        return "synthetic" if self.stand_in else self.dataset

    @property
    def label(self) -> str:
        from ..data import get_dataset

        title = get_dataset(self.dataset).title
        return f"synthetic textures standing in for {title} ({self.profile} profile)" if self.stand_in else title

    def config(self, category: str, seed: int, **method: Any) -> RunConfig:
        return profile_config(self.profile, dataset=self.data_name, category=category, data_root=self.data_root,
                              seed=seed, **{**self.overrides, **method})

    def only(self, *categories: str) -> Experiment:
        return dataclasses.replace(self, categories=list(categories))

    @property
    def profile_teacher(self) -> str:
        return profile_config(self.profile).model.backbone

    def describe(self) -> str:
        cfg = self.config(self.categories[0] if self.categories else "-", self.seeds[0]).with_device("any")
        split = f" (training list {Path(cfg.split_file).name})" if cfg.split_file else ""
        return (f"{self.label}{split}; backbone {cfg.model.backbone}, {cfg.image_size} px, {cfg.epochs} epochs, "
                f"batch {cfg.batch_size}, {cfg.precision}, seeds {', '.join(map(str, self.seeds))}, "
                f"profile '{self.profile}'")


def parameter_fields() -> list[tuple[str, dataclasses.Field, type]]:
    """(parameter name, field, owning dataclass) of every notebook parameter, the executor's flattened."""
    out = []
    for f in dataclasses.fields(ExperimentConfig):
        if f.name == "executor":
            out += [("executor" if g.name == "name" else g.name, g, ExecutorConfig)
                    for g in dataclasses.fields(ExecutorConfig) if g.metadata.get("cli", True)]
        else:
            out.append((f.name, f, ExperimentConfig))
    return out


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def parameters_cell(config: ExperimentConfig | None = None) -> str:
    """The source of every notebook's `parameters` cell: one line per parameter, its value and its help."""
    flat = flatten(config or ExperimentConfig())
    lines = [(f"{name} = {flat[name]!r}", f.metadata["help"]) for name, f, _ in parameter_fields()]
    width = max(len(line) for line, _ in lines)
    return "\n".join(f"{line:<{width}}  # {help_text}" for line, help_text in lines)


def flatten(config: ExperimentConfig) -> dict[str, Any]:
    """Parameter name -> value, as a notebook holds them."""
    flat = {}
    for name, f, owner in parameter_fields():
        holder = config.executor if owner is ExecutorConfig else config
        flat[name] = getattr(holder, f.name)
    return flat


def from_parameters(values: Mapping[str, Any]) -> ExperimentConfig:
    """The config that a notebook's variables (its `globals()`) or run_all's flags describe; other names are
    ignored, and a parameter absent or None keeps its default."""
    known = {name: (f, owner) for name, f, owner in parameter_fields()}
    mine = {n: values[n] for n in known if values.get(n) is not None}  # None: not given
    executor = {known[n][0].name: v for n, v in mine.items() if known[n][1] is ExecutorConfig}
    top = {n: (list(v) if isinstance(v, tuple) else v) for n, v in mine.items() if known[n][1] is ExperimentConfig}
    config = ExperimentConfig(**top, executor=ExecutorConfig(**executor).validate())
    check_values(config)
    return config


def check_categories(config: ExperimentConfig) -> None:
    """Every category named must be one that some dataset of the profile knows (or that the data root holds), so
    that a typo stops run_all at once instead of leaving every table "skipped"."""
    if not config.categories:
        return
    from ..data import REGISTRY, categories

    if config.rules().stand_in:
        known = set(categories("synthetic"))
    else:
        known = {c for name, spec in REGISTRY.items() if name != "synthetic" for c in spec.categories}
        if config.data_root:
            for name in REGISTRY:
                with contextlib.suppress(DskdError, OSError):
                    known |= set(categories(name, config.data_root))
    unknown = [c for c in config.categories if c not in known]
    if unknown:
        shown = ", ".join(sorted(known)[:20]) + (", ..." if len(known) > 20 else "")
        raise DskdError(f"--categories {' '.join(unknown)}: no dataset of the {config.profile} profile has "
                        f"{'it' if len(unknown) == 1 else 'them'}; known: {shown}")


def add_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per parameter (`--data-root`, `--gpus-per-run`, ...), its help line and choices from the field."""
    hints = {cls: typing.get_type_hints(cls) for cls in (ExperimentConfig, ExecutorConfig)}
    for name, f, owner in parameter_fields():
        if name in skip:
            continue
        kind, nargs = flag_type(hints[owner][f.name], _default(f))
        help_text = f.metadata["help"] + ("" if _default(f) is None else f" (default: {_default(f)})")
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, nargs=nargs,
                            type=checked_flag(f, hints[owner][f.name], kind, name), choices=choices_of(f),
                            help=help_text.replace("%", "%%"))

__all__ = ["PROFILE_RULES", "Experiment", "ExperimentConfig", "ProfileRules", "add_flags", "check_categories",
           "flatten", "from_parameters", "parameter_fields", "parameters_cell"]
