"""Reading images and masks the same way everywhere (training, evaluation, predict), and fitting them to the
network's square input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import DskdError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def _to_rgb(im: Image.Image) -> np.ndarray:
    """H x W x 3 uint8. EXIF orientation is applied; grayscale, palette, CMYK and RGBA (alpha dropped) become
    RGB; 16-bit images are scaled from their full range (0..65535) to 0..255, never clipped."""
    im = ImageOps.exif_transpose(im)
    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        a = np.asarray(im, dtype=np.float64)
        full = 65535.0 if im.mode in _SIXTEEN_BIT or a.max() > 255 else 255.0
        a = np.round(a / full * 255.0).clip(0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def read_image(path: Path | str) -> np.ndarray:
    """H x W x 3 uint8, or one line naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DskdError(f"{path}: unreadable or truncated image ({exc}); re-extract or remove the file") from exc


def read_mask(path: Path | str) -> np.ndarray:
    """H x W bool, non-zero = defect (EXIF orientation applied, like its image)."""
    try:
        with Image.open(path) as im:
            im.load()
            a = np.asarray(ImageOps.exif_transpose(im))
    except (OSError, SyntaxError, ValueError) as exc:
        raise DskdError(f"{path}: unreadable or truncated mask ({exc}); re-extract or remove the file") from exc
    return (a.max(axis=2) if a.ndim == 3 else a) > 0


def image_size(path: Path | str) -> tuple[int, int]:
    """(width, height) as displayed (EXIF rotation applied), from the header only."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DskdError(f"{path}: unreadable image ({exc}); re-extract or remove the file") from exc
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def content_box(width: int, height: int, size: int, mode: str) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image inside its size x size input; the rest is padding."""
    if mode == "stretch" or width == height:
        return 0, 0, size, size
    scale = size / max(width, height)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return (size - h) // 2, (size - w) // 2, h, w


def content_mask(width: int, height: int, size: int, mode: str) -> np.ndarray:
    """size x size bool: True where the input shows the image, False on padding."""
    top, left, h, w = content_box(width, height, size, mode)
    mask = np.zeros((size, size), bool)
    mask[top: top + h, left: left + w] = True
    return mask


def fit_to_square(arr: np.ndarray, size: int, resample: int, mode: str) -> np.ndarray:
    """Resize to size x size: `stretch` ignores the aspect ratio, `pad` keeps it and pads with zeros."""
    im = Image.fromarray(arr)
    top, left, h, w = content_box(im.width, im.height, size, mode)
    if (h, w) == (size, size):
        return np.asarray(im.resize((size, size), resample))
    small = np.asarray(im.resize((w, h), resample))
    out = np.zeros((size, size, *small.shape[2:]), dtype=small.dtype)
    out[top: top + h, left: left + w] = small
    return out
