"""`python -m dskd {train,evaluate,predict,calibrate,export}`: a thin layer over the library.

The `train` flags are generated from the settings dataclasses (`dskd.cli_flags`): every field is a flag with its
choices, its range, its help line and the chosen profile's value as the default shown in `--help`. Problems with
arguments or data exit with code 2 and one line on stderr (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .cli_flags import add_setting_flags, profile_in, setting_fields
from .deploy.predictors import ENGINES, FORMATS
from .errors import DskdError, os_problem
from .run.config import DEVICES, RunConfig
from .run.profiles import PROFILES, profile_config
from .settings import checked_flag, field_named, flag_names

log = logging.getLogger("dskd")


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


def _default_category(args: argparse.Namespace) -> str | None:
    from .data import categories, get_dataset

    if args.category is not None or args.dataset in (None, "synthetic"):
        return args.category
    spec = get_dataset(args.dataset)
    if len(spec.categories) == 1:
        return spec.categories[0]
    present = categories(args.dataset, args.data_root) if args.data_root else []
    if len(present) == 1:
        return present[0]
    known = ", ".join(present or spec.categories) or "a subfolder of --data-root"
    raise DskdError(f"--category is required for {args.dataset}; one of {known}")


def _train(args: argparse.Namespace) -> None:
    from .run.training import fit

    overrides = {name: getattr(args, name) for name, _, _ in setting_fields()}
    overrides.update(category=_default_category(args), lr=args.lr)
    for where in ("data_root", "split_file"):  # recorded resolved, so the run is found from any folder
        if overrides.get(where):
            overrides[where] = str(Path(overrides[where]).expanduser().resolve())
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    run = fit(profile_config(args.profile, **overrides), args.out, resume=args.resume, quiet=args.quiet,
              wait=args.wait)
    print(run.path)


def _evaluate(args: argparse.Namespace) -> None:
    from .run.evaluation import evaluate

    result = evaluate(args.run, args.data_root, save_maps=args.save_maps, device=args.device, quiet=args.json,
                      threshold_from=args.threshold_from)
    if args.json:
        print(json.dumps(result))
        return
    shown = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO",
             "image_f1_max": "F1-max (oracle: set on the test labels)", "pixel_f1_max": "pixel F1-max (oracle)",
             "false_alarm_rate": "false alarms (good flagged)", "recall": "recall",
             "precision_at_threshold": "precision",
             "f1_at_threshold": "F1", "n_test": "test images", "seconds": "seconds"}
    d = result["decision"]
    for key, label in shown.items():
        if key == "false_alarm_rate":
            print(f"at the deployed decision, {result['decides_by']} ({d['rule']}, set on {d['source']}):")
            if result["bound_false_alarm"] is not None:
                print(f"{'promised false alarms':>40}: {result['expected_false_alarm']:.4f} on average, at most "
                      f"{result['bound_false_alarm']:.4f} with {d['confidence']:.0%} confidence")
        value = result.get(key)
        interval = result.get({"false_alarm_rate": "false_alarm_interval", "recall": "recall_interval"}.get(key, ""))
        shown_value = '—' if value is None else f'{value:.4f}' if isinstance(value, float) else value
        print(f"{label:>40}: {shown_value}" + (f" [{interval[0]:.4f}, {interval[1]:.4f}] (95%, Clopper-Pearson)"
                                                if interval else ""))
    if result["shift"] is not None:
        sh = result["shift"]
        print(f"{'good images like the calibration ones':>40}: {'no' if sh['shifted'] else 'yes'} (p = "
              f"{sh['p_value']:.2g}, level {sh['level']}; {sh['test']})")
    for kind, s in result["score_summary"].items():
        print(f"{kind:>40}: {s['n']} image(s), scores {s['min']:.4f} to {s['max']:.4f} (median {s['median']:.4f}); "
              f"{s['flagged']:.1%} flagged by the decision")


def _predict(args: argparse.Namespace) -> None:
    from .deploy.prediction import predict

    rows = predict(args.run, args.inputs, args.out, model=args.model, engine=args.engine, device=args.device,
                   strict=args.strict, quiet=args.quiet)
    for row in rows:  # a file name that is not valid UTF-8 is printed with its undecodable bytes escaped
        score = "" if row["score"] == "" else format(row["score"], ".5f")
        path = row["path"].encode("utf-8", "backslashreplace").decode("utf-8")
        print(f"{score}\t{row['decision'] or 'unreadable'}\t{path}")
    if all(row["score"] == "" for row in rows):
        raise DskdError(f"none of the {len(rows)} image(s) could be read; see {args.out}/scores.csv")


def _calibrate(args: argparse.Namespace) -> None:
    from .deploy.calibration import calibrate

    d = calibrate(args.inputs, run=args.run, model=args.model, engine=args.engine, device=args.device,
                  target_false_alarm=args.target_false_alarm, quiet=args.quiet)
    print(f"{d.decides_by()} on {d.source}: it {d.promise()}")
    if d.note:
        print(f"note: {d.note}")


def _export(args: argparse.Namespace) -> None:
    from .deploy.export import export

    if args.batch != "dynamic" and not (args.batch.isdigit() and int(args.batch) > 0):
        raise DskdError(f"--batch must be 'dynamic' or a positive whole number, not '{args.batch}'")
    print(export(args.run, args.format, args.out, image_size=args.image_size,
                 batch=None if args.batch == "dynamic" else int(args.batch), student_maps=args.student_maps,
                 int8=args.int8, int8_teacher=args.int8_teacher,
                 calibration_images=args.calibration_images))


def _end_progress_bars() -> None:
    """A progress bar an error interrupted ends its line, so that the error is a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        command = next((a for a in argv if not a.startswith("-")), None)
        args = build_parser(profile_in(argv), settings=command in ("train", None)).parse_args(argv)
        {"train": _train, "evaluate": _evaluate, "predict": _predict, "calibrate": _calibrate,
         "export": _export}[args.command](args)
    except DskdError as exc:
        if debug:
            raise
        _end_progress_bars()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if debug or exc.filename is None:  # an OSError naming no file is not the user's to fix
            raise
        _end_progress_bars()
        print(f"error: {os_problem(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last completed epoch is saved (continue with --resume)", file=sys.stderr)
        return 130
    return 0
