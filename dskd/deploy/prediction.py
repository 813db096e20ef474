"""Prediction on a user's own images, whichever engine runs the model: overlays at each image's own size and
`scores.csv`, surviving unreadable files. Needs no PyTorch unless the engine is PyTorch."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..atomic import atomic_write, write_text
from ..data.images import IMAGE_EXTS, content_mask, fit_to_square, read_image
from ..errors import DskdError
from . import overlay
from .predictors import Predictor, open_predictor

log = logging.getLogger(__name__)
COLUMNS = ["path", "score", "decision", "threshold", "overlay", "error"]


def collect_images(inputs: list[str | Path]) -> list[Path]:
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_EXTS)
            if not found:
                raise DskdError(f"{item}: no images ({', '.join(IMAGE_EXTS)}) in this folder")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise DskdError(f"{item}: no such image or folder")
    return paths


def predict_image(predictor: Predictor, original: np.ndarray) -> tuple[np.ndarray, float]:
    """(S x S map, score) of one H x W x 3 uint8 image."""
    size, mode = predictor.image_size, predictor.fit_mode
    x = fit_to_square(original, size, Image.BILINEAR, mode).transpose(2, 0, 1)[None]
    valid = content_mask(original.shape[1], original.shape[0], size, mode)[None] if mode == "pad" else None
    maps, scores = predictor.infer(np.ascontiguousarray(x), valid)
    return maps[0], float(scores[0])


def _one(predictor: Predictor, path: Path, out: Path) -> dict[str, Any]:
    original = read_image(path)
    amap, score = predict_image(predictor, original)
    target = out / f"{path.stem}_overlay.png"
    picture = overlay.render(original, amap, predictor.fit_mode, predictor.threshold, score, predictor.pixel_threshold)
    atomic_write(target, lambda tmp: picture.save(tmp, "PNG"))
    return {"path": str(path), "score": score, "decision": "defective" if score >= predictor.threshold else "good",
            "threshold": predictor.threshold, "overlay": str(target), "error": ""}


def predict(run_dir: str | Path | None, inputs: list[str | Path], out: str | Path, *, model: str | Path | None = None,
            engine: str | None = None, device: str = "auto", quiet: bool = True,
            strict: bool = False) -> list[dict[str, Any]]:
    """Overlays and `scores.csv` for a user's images, from a run folder (PyTorch) or an exported `model` file.

    The decision is `score >= threshold`, the run's deployed threshold (`dskd.run.decision`: set on good images held
    out of training, never on test labels; stored in the run and in exported files). An unreadable image
    is skipped with a warning and listed in `scores.csv` with its error (with `strict`, it stops the prediction).
    """
    predictor = open_predictor(run_dir, model, engine, device)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DskdError(f"{out} is a file, not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    log.info("predicting with %s (threshold %.4g, %s; outline at %.4g)", predictor.source, predictor.threshold,
             predictor.threshold_rule, predictor.pixel_threshold)
    rows = []
    for path in tqdm(collect_images(inputs), desc="predict", disable=quiet):
        try:
            rows.append(_one(predictor, path, out))
        except DskdError as exc:
            if strict:
                raise
            log.warning("skipped %s", exc)
            rows.append({"path": str(path), "score": "", "decision": "", "threshold": predictor.threshold,
                         "overlay": "", "error": str(exc)})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "scores.csv", buf.getvalue())
    return rows
