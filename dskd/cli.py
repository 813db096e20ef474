"""`python -m dskd {train,evaluate,predict,calibrate,export}`: a thin layer over the library.

Every command's flags are in `dskd.cli_flags` (train's generated from the settings dataclasses: every field a flag
with its choices, its range, its help line and the chosen profile's value as the default shown in `--help`).
Problems with arguments or data exit with code 2 and one line on stderr (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .cli_flags import build_parser, profile_in, setting_fields
from .errors import DskdError, os_problem
from .run.profiles import profile_config

log = logging.getLogger("dskd")


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
