"""The embedded default dataset: procedural textures with painted defects and exact masks.

Written once to disk in the MVTec AD layout, so the same reader serves it as the real benchmarks.
Deterministic for a seed: each image draws from its own generator, seeded by (seed, category, split, index).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

GENERATOR_VERSION = "2"  # bump when the images change, so that stale copies on disk are regenerated
CATEGORIES = ("stripes", "grid", "noise")
DEFECTS = ("scratch", "spot", "hole", "stain")
SIZE, N_TRAIN, N_TEST_GOOD, N_TEST_PER_DEFECT = 128, 60, 16, 6


def _rng(seed: int, *key: object) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32("/".join(map(str, key)).encode())])


def texture(category: str, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A defect-free H x W x 3 float image in [0, 1]; normal variation is phase, offset and slight colour."""
    from scipy.ndimage import gaussian_filter  # only when generating: deployed predictors have no SciPy

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    jitter = rng.normal(0, 0.02, 3)
    if category == "stripes":
        angle, period = 0.35 + rng.normal(0, 0.03), 10.0 + rng.normal(0, 0.3)
        v = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 6.3))
        a, b = np.array([0.20, 0.35, 0.55]), np.array([0.80, 0.75, 0.45])
    elif category == "grid":
        period, (oy, ox) = 16, rng.integers(0, 16, 2)
        v = (((yy + oy) % period < 2) | ((xx + ox) % period < 2)).astype(np.float64)
        v = gaussian_filter(v, 0.6)
        a, b = np.array([0.75, 0.72, 0.65]), np.array([0.25, 0.25, 0.30])
    elif category == "noise":
        v = gaussian_filter(rng.normal(0, 1, (size, size)), 2.0, mode="wrap")
        v = (v - v.min()) / (v.max() - v.min() + 1e-9)
        a, b = np.array([0.55, 0.40, 0.25]), np.array([0.85, 0.70, 0.50])
    else:
        raise ValueError(f"unknown synthetic category '{category}'; choose one of {', '.join(CATEGORIES)}")
    img = a * (1 - v[..., None]) + b * v[..., None] + jitter + rng.normal(0, 0.02, (size, size, 3))
    return img.clip(0, 1)


def paint_defect(img: np.ndarray, defect: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect, blended so that it is visible but not trivial; returns (image, mask), the mask being
    exactly the set of changed pixels."""
    size = img.shape[0]
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    cy, cx = rng.integers(size // 5, size - size // 5, 2)
    if defect == "scratch":
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.18, 0.35) * size
        dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=int(rng.integers(1, 3)))
        colour = np.array([0.05, 0.05, 0.05]) if rng.random() < 0.5 else np.array([0.97, 0.97, 0.97])
        alpha = 0.6
    elif defect in ("spot", "hole"):
        r = rng.uniform(0.03, 0.07) * size
        draw.ellipse([cx - r, cy - r * rng.uniform(0.7, 1.3), cx + r, cy + r * rng.uniform(0.7, 1.3)], fill=255)
        colour = np.array([0.10, 0.10, 0.10]) if defect == "hole" else rng.uniform(0.1, 0.9, 3)
        alpha = 0.8 if defect == "hole" else 0.5
    elif defect == "stain":
        for _ in range(3):
            oy, ox = rng.normal(0, 0.04 * size, 2)
            r = rng.uniform(0.04, 0.08) * size
            draw.ellipse([cx + ox - r, cy + oy - r, cx + ox + r, cy + oy + r], fill=255)
        colour, alpha = np.array([0.55, 0.15, 0.10]), 0.35
    else:
        raise ValueError(f"unknown defect '{defect}'; choose one of {', '.join(DEFECTS)}")
    mask = np.asarray(canvas) > 0
    out = img.copy()
    out[mask] = (1 - alpha) * img[mask] + alpha * colour
    return out, mask


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _write_category(folder: Path, category: str, seed: int) -> None:
    to8 = lambda a: (a * 255 + 0.5).astype(np.uint8)  # noqa: E731
    for i in range(N_TRAIN):
        _save(to8(texture(category, _rng(seed, category, "train", i))), folder / "train" / "good" / f"{i:03d}.png")
    for i in range(N_TEST_GOOD):
        _save(to8(texture(category, _rng(seed, category, "test", i))), folder / "test" / "good" / f"{i:03d}.png")
    for defect in DEFECTS:
        for i in range(N_TEST_PER_DEFECT):
            rng = _rng(seed, category, defect, i)
            img, mask = paint_defect(texture(category, rng), defect, rng)
            _save(to8(img), folder / "test" / defect / f"{i:03d}.png")
            _save(mask.astype(np.uint8) * 255, folder / "ground_truth" / defect / f"{i:03d}_mask.png")


def ensure_synthetic(root: Path | str, categories: tuple[str, ...] = CATEGORIES, seed: int = 0) -> Path:
    """Generate the missing categories under `root` (each written to a temporary folder, then renamed)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for category in categories:
        target = root / category
        stamp = target / ".generator"
        if target.is_dir() and stamp.is_file() and stamp.read_text() == f"{GENERATOR_VERSION} {seed}":
            continue
        if target.is_dir():
            log.info("synthetic category '%s' under %s is stale; regenerating it", category, _shown(root))
            shutil.rmtree(target)
        log.info("generating synthetic category '%s' under %s", category, _shown(root))
        tmp = Path(tempfile.mkdtemp(prefix=f".{category}-", dir=root))
        try:
            _write_category(tmp, category, seed)
            (tmp / ".generator").write_text(f"{GENERATOR_VERSION} {seed}")
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # another process may have won the race; that is fine
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _shown(folder: Path) -> str:
    """A folder as a log line names it: relative to the working directory when it lies near it (a notebook's log,
    kept with its results, then names no machine's folders), else as it is."""
    rel = os.path.relpath(folder)
    return rel if not rel.startswith(("../../", "..\\..")) else str(folder)
