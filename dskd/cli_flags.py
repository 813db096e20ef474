"""The `train` command's flags, generated from the settings dataclasses (`RunConfig`, `OptimConfig`, `ModelConfig`):
every field a flag with its choices, its range check (`dskd.settings.checked_flag`), its help line and the chosen
profile's value as the default shown in `--help`."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from .model.config import ModelConfig
from .run.config import OptimConfig, RunConfig
from .run.profiles import BY_DATASET, PROFILES, profile_config
from .settings import checked_flag, choices_of, flag_names, flag_type

NESTED_PREFIX = {"model": "", "se_optim": "se_optim_", "sd_optim": "sd_optim_"}


def setting_fields() -> list[tuple[str, dataclasses.Field, Any]]:
    """(override name, field, owning dataclass) for every settable field, nested ones flattened."""
    hints = {cls: typing.get_type_hints(cls) for cls in (RunConfig, OptimConfig, ModelConfig)}
    out = []
    for f in dataclasses.fields(RunConfig):
        if f.name in NESTED_PREFIX:
            inner = hints[RunConfig][f.name]
            out += [(NESTED_PREFIX[f.name] + g.name, g, inner) for g in dataclasses.fields(inner)]
        elif f.metadata.get("cli", True):
            out.append((f.name, f, RunConfig))
    return out


def _current(cfg: RunConfig, name: str) -> Any:
    for holder, prefix in ((cfg.se_optim, "se_optim_"), (cfg.sd_optim, "sd_optim_")):
        if name.startswith(prefix):
            return getattr(holder, name[len(prefix):])
    return getattr(cfg.model, name) if hasattr(cfg.model, name) else getattr(cfg, name)


def _by_dataset(name: str) -> str:
    from .data import REGISTRY

    i = ("image_size", "epochs").index(name)
    return "each dataset's own: " + ", ".join(f"{n} {spec.quick[i]}" for n, spec in REGISTRY.items())


def add_setting_flags(parser: argparse.ArgumentParser, profile: str) -> None:
    shown = profile_config(profile)
    for name, f, owner in setting_fields():
        default = _current(shown, name) if PROFILES[profile].get(name) != BY_DATASET else _by_dataset(name)
        kind, nargs = flag_type(typing.get_type_hints(owner)[f.name], default)
        flags = flag_names(name, f)
        help_text = f"{f.metadata.get('help', '')} ({profile}: {default})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            hint = typing.get_type_hints(owner)[f.name]
            parser.add_argument(*flags, dest=name, type=checked_flag(f, hint, kind, name), nargs=nargs,
                                choices=choices_of(f), default=None, help=help_text,
                                metavar=None if choices_of(f) else name.upper())


def profile_in(argv: list[str]) -> str:
    """The profile a command line names (its flags' defaults are that profile's); quick when none."""
    for i, a in enumerate(argv):
        if a == "--profile" and i + 1 < len(argv) and argv[i + 1] in PROFILES:
            return argv[i + 1]
        if a.startswith("--profile=") and a.split("=", 1)[1] in PROFILES:
            return a.split("=", 1)[1]
    return "quick"
