"""Prediction on a user's own images, whichever engine runs the model: overlays at each image's own size and
`scores.csv`, surviving unreadable files, never overwriting one output with another. Needs no PyTorch unless the
engine is PyTorch."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..atomic import WriteError, atomic_write
from ..data.images import IMAGE_EXTS, content_mask, fit_to_square, read_image
from ..decision import excess_flags
from ..errors import DskdError
from ..stats import SHIFT_LEVEL
from . import overlay
from .predictors import Predictor, open_predictor

log = logging.getLogger(__name__)
COLUMNS = ["path", "score", "decision", "threshold", "p_value", "overlay", "error"]


def collect_images(inputs: list[str | Path]) -> list[tuple[Path, Path]]:
    """(image, its output name relative to --out) for every image file named or inside a folder named. A folder's
    images keep their names under the folder's own name when several inputs are given; any name taken twice
    (000.png in two folders, 000.png beside 000.jpg) gets a numbered suffix, so no output overwrites another."""
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
            if not images:
                raise DskdError(f"{item}: no images ({', '.join(IMAGE_EXTS)}) in this folder")
            prefix = Path(item.resolve().name) if len(inputs) > 1 else Path()
            found += [(p, prefix / p.stem) for p in images]
        elif item.is_file():
            found.append((item, Path(item.stem)))
        else:
            raise DskdError(f"{item}: no such image or folder")
    taken: set[str] = set()
    named = []
    for path, stem in found:
        name, k = f"{stem}_overlay.png", 1
        while name.lower() in taken:
            k += 1
            name = f"{stem}_{k}_overlay.png"
        taken.add(name.lower())
        named.append((path, Path(name)))
    return named


def predict_image(predictor: Predictor, original: np.ndarray) -> tuple[np.ndarray, float, np.ndarray | None]:
    """(S x S map, score, each student set's score of a cross-fitted model or None) of one H x W x 3 uint8 image."""
    size, mode = predictor.image_size, predictor.fit_mode
    x = fit_to_square(original, size, Image.BILINEAR, mode).transpose(2, 0, 1)[None]
    valid = content_mask(original.shape[1], original.shape[0], size, mode)[None] if mode == "pad" else None
    maps, scores, set_scores = predictor.infer(np.ascontiguousarray(x), valid)
    return maps[0], float(scores[0]), None if set_scores is None else set_scores[0]


def scored(predictor: Predictor, paths: list[Path], desc: str, quiet: bool
           ) -> Iterator[tuple[Path, np.ndarray | None, np.ndarray | None, float | DskdError, np.ndarray | None]]:
    """(path, image, map, score, set scores) for each path in turn (`predict_image`), or (path, None, None, the
    error, None) for an unreadable one.
    Close it (`contextlib.closing`) when stopping early: its progress bar then ends its line before an error's."""
    with tqdm(total=len(paths), desc=desc, disable=quiet, unit="image") as bar:
        for path in paths:
            try:
                original = read_image(path)
            except DskdError as exc:
                yield path, None, None, exc, None
            else:
                yield path, original, *predict_image(predictor, original)
            bar.update()


class _ScoresFile:
    """`scores.csv`, rewritten (atomically) every `every` rows and at the end: a failure keeps what was done."""

    def __init__(self, path: Path, every: int = 50) -> None:
        self.path, self.every, self.rows = path, every, []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) % self.every == 0:
            self.write()

    def write(self) -> None:
        def save(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(self.rows)

        atomic_write(self.path, save)


def predict(run_dir: str | Path | None, inputs: list[str | Path], out: str | Path, *, model: str | Path | None = None,
            engine: str | None = None, device: str = "auto", quiet: bool = True,
            strict: bool = False) -> list[dict[str, Any]]:
    """Overlays and `scores.csv` for a user's own images, from a run folder (PyTorch) or an exported `model` file.

    The decision is the run's deployed one (`dskd.decision`: set on good images, never on test labels; stored
    in the run and in exported files): `score >= threshold`, or a cross-fitted model's p-value at most the target.
    An unreadable image is skipped with a warning and listed in `scores.csv` with its error (with `strict`, it
    stops the prediction). When the share flagged is clearly above what the decision promises for good images, one
    warning says so (a changed line or camera)."""
    predictor = open_predictor(run_dir, model, engine, device)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DskdError(f"{out} is a file, not a folder; choose another --out")
    named = collect_images(inputs)
    log.info("predicting %d image(s) with %s (%s, %s; outline at %.4g)", len(named), predictor.source,
             predictor.decision.decides_by(), predictor.decision.rule, predictor.pixel_threshold)
    table = _ScoresFile(out / "scores.csv")
    try:
        out.mkdir(parents=True, exist_ok=True)
        _predict_all(predictor, named, out, table, strict, quiet)
        table.write()
    except WriteError as exc:
        raise DskdError(_stopped(exc, table, len(named))) from exc
    _check_share(predictor, table.rows)
    return table.rows


def _predict_all(predictor: Predictor, named: list[tuple[Path, Path]], out: Path, table: _ScoresFile, strict: bool,
                 quiet: bool) -> None:
    """Each image's overlay written and its row added, in order."""
    with closing(scored(predictor, [p for p, _ in named], "predict", quiet)) as outcomes:
        for (_, name), (path, original, amap, score, set_scores) in zip(named, outcomes, strict=True):
            if isinstance(score, DskdError):
                if strict:
                    raise score
                log.warning("skipped %s", score)
                table.add({"path": str(path), "score": "", "decision": "", "threshold": predictor.threshold,
                           "p_value": "", "overlay": "", "error": str(score)})
                continue
            decision = predictor.decision
            ranked = None if set_scores is None or not decision.out_of_fold_scores else set_scores[None]
            defective = bool(decision.flags(np.array([score]), ranked)[0])
            p = None if ranked is None else float(decision.p_values(ranked)[0])
            picture = overlay.render(original, amap, predictor.fit_mode, predictor.threshold, score,
                                     predictor.pixel_threshold, defective=defective, p_value=p)
            atomic_write(out / name, lambda tmp, pic=picture: pic.save(tmp, "PNG"))
            table.add({"path": str(path), "score": score, "threshold": predictor.threshold,
                       "p_value": "" if p is None else p, "overlay": str(out / name), "error": "",
                       "decision": "defective" if defective else "good"})


def _stopped(exc: WriteError, table: _ScoresFile, total: int) -> str:
    """The one line of a prediction that a full disk (or a read-only folder) stopped: how far it got, what was kept."""
    try:
        table.write()
        kept = f"their scores are in {table.path}"
    except WriteError:
        kept = f"{table.path} could not be written either"
    return f"{exc}; stopped after {len(table.rows)} of {total} images ({kept})"


def _check_share(predictor: Predictor, rows: list[dict[str, Any]]) -> None:
    read = [r for r in rows if not r["error"]]
    flagged = sum(r["decision"] == "defective" for r in read)
    p = excess_flags(predictor.decision, flagged, len(read))
    if p is not None and p < SHIFT_LEVEL:
        log.warning("%d of %d images flagged (%.1f%%), clearly above the %.1f%% the threshold promises for good parts "
                    "(one-sided binomial test, p = %.2g < %g): if most of these parts are good, the line or the camera "
                    "has changed since calibration; calibrate on good images from the line: python -m dskd calibrate "
                    "%s GOOD_DIR", flagged, len(read), 100 * flagged / len(read),
                    100 * predictor.decision.bound_false_alarm, p, SHIFT_LEVEL,
                    f"--run {predictor.source}" if predictor.kind == "run" else f"--model {predictor.source}")
