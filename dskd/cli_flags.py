"""The command line's parser: every command's flags, train's generated from the settings dataclasses (`RunConfig`,
`OptimConfig`, `ModelConfig`): every field a flag with its choices, its range check (`dskd.settings.checked_flag`), its
help line and the chosen profile's value as the default shown in `--help`."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from .deploy.predictors import ENGINES, FORMATS
from .errors import DskdError
from .model.config import ModelConfig
from .run.config import DEVICES, OptimConfig, RunConfig
from .run.profiles import BY_DATASET, PROFILES, profile_config
from .settings import checked_flag, choices_of, field_named, flag_names, flag_type

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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2, like every other user error
        raise DskdError(f"{self.prog}: {message}")


def build_parser(profile: str = "quick", settings: bool = True) -> argparse.ArgumentParser:
    """The parser; `settings=False` leaves out train's generated flags, whose choices read the registries (which
    import PyTorch), so that predicting from an exported model runs without it."""
    p = _Parser(prog="python -m dskd", description="Dual-Student Knowledge Distillation for anomaly detection.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub, profile, settings)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_calibrate(sub)
    _add_export(sub)
    return p


def _add_train(sub: argparse._SubParsersAction, profile: str, settings: bool) -> None:
    t = sub.add_parser("train", help="train a run (flags override the profile)",
                       description="Every setting is a flag; defaults shown are the --profile's (give --profile "
                                   "before --help to see another's).")
    t.add_argument("--profile", choices=sorted(PROFILES), default="quick", help="base settings (default: quick)")
    t.add_argument("--lr", type=float, help="learning rate of both students' optimizers (shorthand)")
    if settings:
        add_setting_flags(t, profile)
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    t.add_argument("--wait", action="store_true", help="if another process trains --out, wait for it")
    t.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("evaluate", help="score a trained run on its test split")
    e.add_argument("--run", required=True)
    e.add_argument("--data-root", help="where the data is now, if it moved since training")
    e.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    e.add_argument("--save-maps", action="store_true", help="store maps, scores, labels and masks (maps.npz)")
    e.add_argument("--device", default="auto", choices=DEVICES)
    e.add_argument("--threshold-from", metavar="DIR", help="a labelled folder (good/ and one folder per defect "
                   "type): decide this evaluation at its F1-max threshold; the deployed decision stays as it is")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("predict", help="anomaly maps and scores for your own images")
    source = r.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a trained run folder (PyTorch)")
    source.add_argument("--model", help="an exported model: .onnx (ONNX Runtime or OpenVINO) or .xml (OpenVINO)")
    r.add_argument("--engine", choices=ENGINES, help="default: torch for --run, else by the file's suffix")
    r.add_argument("inputs", nargs="+", help="image files or folders")
    r.add_argument("--out", required=True)
    r.add_argument("--device", default="auto", choices=DEVICES)
    r.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    r.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("calibrate", help="reset the deployed threshold on good images taken on the line",
                       description="Sets the threshold by the rule training uses, on good images only, and states the "
                                   "false-alarm rate it promises; the previous decision stays in the record.")
    source = c.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a trained run folder (PyTorch); export it again afterwards")
    source.add_argument("--model", help="an exported .onnx or OpenVINO .xml file, rewritten in place (no PyTorch)")
    c.add_argument("--engine", choices=ENGINES, help="default: torch for --run, else by the file's suffix")
    c.add_argument("inputs", nargs="+", metavar="GOOD_DIR", help="folders (or files) of good images from the line")
    target = field_named(RunConfig, "target_false_alarm")
    c.add_argument(*flag_names(target.name, target), dest="target_false_alarm",
                   type=checked_flag(target, float, float, target.name),
                   help="the false-alarm target (default: the current decision's)")
    c.add_argument("--device", default="auto", choices=DEVICES)
    c.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_export(sub: argparse._SubParsersAction) -> None:
    """`export`: its own function, as its flags grow (formats, batch, INT8)."""
    x = sub.add_parser("export", help="the run's whole inference path in one file, for deployment without PyTorch")
    x.add_argument("--run", required=True)
    x.add_argument("--format", default="onnx", choices=FORMATS)
    x.add_argument("--out", help="target file (default: RUN/model.onnx, .xml or .pt)")
    x.add_argument("--image-size", type=int, help="input side (default: the run's)")
    x.add_argument("--batch", default="dynamic", help="'dynamic' or a fixed batch size (default: dynamic)")
    x.add_argument("--student-maps", action="store_true", help="also output each student's map")
    x.add_argument("--int8", action="store_true", help="OpenVINO: INT8 networks (NNCF), calibrated on training images")
    x.add_argument("--calibration-images", type=int, default=300, help="with --int8: how many (default 300)")
    x.add_argument("--int8-teacher", action="store_true",
                   help="with --int8: quantize the teacher too (faster; it cost MT Defects more accuracy)")
