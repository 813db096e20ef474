"""Prediction on a user's own images: heat-map overlays and `scores.csv`, surviving unreadable files."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .batches import maps_in_batches
from .data.images import IMAGE_EXTS, content_mask, fit_to_square, read_image
from .errors import DskdError
from .files import atomic_write, write_text
from .runs import LoadedRun, RunDir, load_run

log = logging.getLogger(__name__)
COLUMNS = ["path", "score", "is_anomalous", "overlay", "error"]


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


def _predict_one(loaded: LoadedRun, path: Path, out: Path, cmap) -> dict[str, Any]:
    from PIL import Image

    cfg = loaded.run.config
    original = read_image(path)
    img = fit_to_square(original, cfg.image_size, Image.BILINEAR, cfg.fit_mode)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None]
    valid = torch.from_numpy(content_mask(original.shape[1], original.shape[0], cfg.image_size, cfg.fit_mode))[None]
    (_, _, result), = maps_in_batches(loaded.model, x, loaded.device, 1, loaded.precision, valid=valid)
    amap, score = result.map[0, 0].cpu().numpy(), float(result.score[0])
    heat = cmap(np.clip(amap / (2 * loaded.image_threshold + 1e-12), 0, 1))[..., :3]
    overlay = (0.5 * img / 255.0 + 0.5 * heat).clip(0, 1)
    target = out / f"{path.stem}_overlay.png"
    atomic_write(target, lambda tmp: Image.fromarray((overlay * 255).astype(np.uint8)).save(tmp, "PNG"))
    return {"path": str(path), "score": score, "is_anomalous": score > loaded.image_threshold,
            "overlay": str(target), "error": ""}


def predict(run_dir: str | Path | RunDir, inputs: list[str | Path], out: str | Path, *,
            device: str = "auto", quiet: bool = True, strict: bool = False) -> list[dict[str, Any]]:
    """Heat-map overlays and `scores.csv` for a user's own images.

    `is_anomalous` compares the image score with the run's threshold: the mean plus three standard deviations of
    the training images' scores (defect-free by construction), stored at training time. An unreadable image is
    skipped with a warning and listed in `scores.csv` with its error (with `strict`, it stops the prediction).
    """
    from matplotlib import colormaps

    loaded = load_run(run_dir, device)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DskdError(f"{out} is a file, not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in tqdm(collect_images(inputs), desc="predict", disable=quiet):
        try:
            rows.append(_predict_one(loaded, path, out, colormaps["jet"]))
        except DskdError as exc:
            if strict:
                raise
            log.warning("skipped %s", exc)
            rows.append({"path": str(path), "score": "", "is_anomalous": "", "overlay": "", "error": str(exc)})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "scores.csv", buf.getvalue())
    return rows
