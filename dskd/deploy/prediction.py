"""Prediction on a user's own images, whichever engine runs the model: overlays at each image's own size and
`scores.csv`, surviving unreadable files, never overwriting one output with another. Needs no PyTorch unless the
engine is PyTorch."""

from __future__ import annotations

import csv
import errno
import hashlib
import logging
import os
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from ..atomic import WriteError, atomic_write
from ..data.images import IMAGE_EXTS
from ..decision import excess_flags
from ..errors import DskdError
from ..stats import SHIFT_LEVEL
from . import overlay
from .predictors import Predictor, open_predictor, scored

log = logging.getLogger(__name__)
COLUMNS = ["path", "score", "decision", "threshold", "p_value", "overlay", "error"]
SCORES = "scores.csv"
SOFTWARE = "dskd predict"  # an overlay's PNG text: what predict wrote is never read as a part's image


def save_overlay(picture: Image.Image, path: Path) -> None:
    """An overlay as PNG, marked as predict's own (`is_overlay`)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)
    picture.save(path, "PNG", pnginfo=info)


def is_overlay(path: Path) -> bool:
    """Whether a file is an overlay predict wrote (its PNG text says so; the header alone is read)."""
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get("Software") == SOFTWARE
    except (OSError, SyntaxError, ValueError):
        return False


# An overlay's file name, at most: file systems allow 255 bytes, and an atomic write's temporary name is longer.
MAX_NAME_BYTES = 200


def collect_images(inputs: list[str | Path]) -> list[tuple[Path, Path]]:
    """(image, its output name relative to --out) for every image file named or inside a folder named. A folder's
    images keep their names under the folder's own name when several inputs are given; any name taken twice
    (000.png in two folders, 000.png beside 000.jpg) gets a numbered suffix, so no output overwrites another, and a
    name too long for a file system is shortened (`MAX_NAME_BYTES`)."""
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images = images_in(item)
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
        name, k = _fitting(stem.name, "_overlay.png"), 1
        while name.lower() in taken:
            k += 1
            name = _fitting(stem.name, f"_{k}_overlay.png")
        taken.add(name.lower())
        named.append((path, stem.parent / name))
    return named


def images_in(folder: Path) -> list[Path]:
    """A folder's images (`IMAGE_EXTS`), sorted; one line for each other file it holds, which is not read, and one
    for what predict itself wrote there (overlays, scores.csv), which is never read as a part."""
    images, own = [], 0
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.name == SCORES or (path.suffix.lower() == ".png" and is_overlay(path)):
            own += 1
        elif path.suffix.lower() in IMAGE_EXTS:
            images.append(path)
        else:
            log.warning("%s: not read (dskd reads %s)", path, ", ".join(IMAGE_EXTS))
    if own:
        log.info("%s: %d file(s) that predict wrote (overlays, %s) are not read", folder, own, SCORES)
    return images


def _fitting(stem: str, ending: str) -> str:
    """`stem + ending`, the stem cut (and told apart by a digest of the whole) where the name would be longer than
    `MAX_NAME_BYTES`."""
    name = stem + ending
    if len(os.fsencode(name)) <= MAX_NAME_BYTES:
        return name
    digest = "~" + hashlib.sha1(os.fsencode(stem)).hexdigest()[:10]
    while len(os.fsencode(stem + digest + ending)) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return stem + digest + ending


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
            # a file name that is not valid UTF-8 is written with its undecodable bytes escaped (\\udcXX)
            with open(tmp, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
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
    table = _ScoresFile(out / SCORES)
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
            written, error = _write_overlay(picture, out / name)
            table.add({"path": str(path), "score": score, "threshold": predictor.threshold,
                       "p_value": "" if p is None else p, "overlay": written, "error": error,
                       "decision": "defective" if defective else "good"})


def _write_overlay(picture: Image.Image, path: Path) -> tuple[str, str]:
    """(the overlay written, "") or ("", why not) when the file system refuses this one name; a refusal that would
    stop every write (a full disk, a read-only folder) stops the prediction."""
    try:
        atomic_write(path, lambda tmp: save_overlay(picture, tmp))
    except WriteError as exc:
        if getattr(exc.__cause__, "errno", None) not in (errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL):
            raise
        log.warning("%s", exc)
        return "", str(exc)
    return str(path), ""


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
