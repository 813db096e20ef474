"""`python -m dskd {train,evaluate,predict}`: a thin layer over `dskd.engine`.

Problems with arguments or data exit with code 2 and one line on stderr (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .config import DF_INPUTS, DF_SOURCES, FIT_MODES, LR_SCHEDULES, MAP_NORMS, PROFILES, VARIANTS, profile_config
from .data import DATASETS, OFFICIAL_CATEGORIES
from .errors import DskdError

log = logging.getLogger("dskd")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2, like every other user error
        raise DskdError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    from .backbones import list_backbones

    p = _Parser(prog="python -m dskd", description="Dual-Student Knowledge Distillation for anomaly detection.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a run (flags override the profile)")
    t.add_argument("--profile", choices=sorted(PROFILES), default="quick", help="base settings (default: quick)")
    t.add_argument("--dataset", choices=DATASETS)
    t.add_argument("--category")
    t.add_argument("--data-root")
    t.add_argument("--backbone", choices=list_backbones())
    t.add_argument("--variant", choices=VARIANTS)
    t.add_argument("--df-source", choices=("auto", *DF_SOURCES),
                   help="what feeds the DF embedding: Se's pyramid, the teacher's, or both concatenated")
    t.add_argument("--df-detach", action="store_const", const=True, help="Sd's loss does not train Se")
    t.add_argument("--df-input", choices=DF_INPUTS,
                   help="with df_source se or both: Se's own features, or its predictions of the teacher's")
    t.add_argument("--image-size", type=int)
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float, help="learning rate of both students' optimizers")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", choices=("auto", "cpu", "cuda"))
    t.add_argument("--split-file", help="MT Defects: list of MT_Free images to train on")
    t.add_argument("--fit-mode", choices=FIT_MODES, help="non-square images: stretch, or pad (no distortion)")
    t.add_argument("--map-norm", choices=MAP_NORMS)
    t.add_argument("--lr-schedule", choices=LR_SCHEDULES)
    t.add_argument("--no-bn-recalibration", dest="recalibrate_bn", action="store_const", const=False,
                   help="keep the BatchNorm running statistics of the last epoch as they are")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser("evaluate", help="score a trained run on its test split")
    e.add_argument("--run", required=True)
    e.add_argument("--data-root", help="where the data is now, if it moved since training")
    e.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    e.add_argument("--save-maps", action="store_true", help="store maps, scores, labels and masks (maps.npz)")
    e.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))

    r = sub.add_parser("predict", help="anomaly maps and scores for your own images")
    r.add_argument("--run", required=True)
    r.add_argument("inputs", nargs="+", help="image files or folders")
    r.add_argument("--out", required=True)
    r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return p


def _train(args: argparse.Namespace) -> None:
    from .engine import fit

    category = args.category
    if category is None and args.dataset not in (None, "synthetic"):
        if args.dataset != "mt_defects":
            known = ", ".join(OFFICIAL_CATEGORIES[args.dataset])
            raise DskdError(f"--category is required for {args.dataset}; one of {known}")
        category = "mt_defects"
    cfg = profile_config(
        args.profile, dataset=args.dataset, category=category, data_root=args.data_root,
        backbone=args.backbone, variant=args.variant, df_source=args.df_source, df_detach=args.df_detach,
        df_input=args.df_input, image_size=args.image_size, lr_schedule=args.lr_schedule,
        recalibrate_bn=args.recalibrate_bn,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
        split_file=args.split_file, fit_mode=args.fit_mode, map_norm=args.map_norm,
    )
    run = fit(cfg, args.out, resume=args.resume, quiet=args.quiet)
    print(run.path)


def _evaluate(args: argparse.Namespace) -> None:
    from .engine import evaluate

    result = evaluate(args.run, args.data_root, save_maps=args.save_maps, device=args.device, quiet=args.json)
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "pixel_f1_max", "n_test", "seconds"):
            print(f"{key:>14}: {result[key]:.4f}" if isinstance(result[key], float) else f"{key:>14}: {result[key]}")


def _predict(args: argparse.Namespace) -> None:
    from .engine import predict

    for row in predict(args.run, args.inputs, args.out, device=args.device):
        print(f"{row['score']:.5f}\t{'ANOMALOUS' if row['is_anomalous'] else 'ok'}\t{row['path']}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        {"train": _train, "evaluate": _evaluate, "predict": _predict}[args.command](args)
    except DskdError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last completed epoch is saved (continue with --resume)", file=sys.stderr)
        return 130
    return 0
