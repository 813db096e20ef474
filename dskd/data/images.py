"""The one image decoder: images and masks read the same way everywhere (training, evaluation, prediction,
calibration, the exported path), by the rule in `DECODING`; and fitting them to the network's square input.
NumPy, Pillow and tifffile only (it runs on a line-side PC)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import DskdError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")  # read everywhere; a GIF's first frame
DECODING = """Every image file becomes one RGB picture in [0, 1], whatever its format, by one rule:
- integers are divided by their format's full scale: 8-bit by 255, 16-bit by 65535, a TIFF that declares 12 (or
  10, 14) bits per sample by 4095 (1023, 16383), 1-bit by 1 (so 12-bit data stored unshifted in a 16-bit PNG
  reads at 1/16 of its brightness: shift it by 4 bits, or save a TIFF that declares 12 bits);
- floats are taken as they are and must lie in [0, 1] (NaN, infinities or values outside are refused with one line:
  save the image scaled to [0, 1], or as 8- or 16-bit integers);
- grayscale is repeated into R, G and B; palette images take their palette's colours; CMYK and YCbCr are converted
  to RGB; alpha is ignored (the colour channels are read as they are); EXIF and TIFF orientation is applied;
  a multi-page TIFF gives its first page;
- the picture reaches the network in 1/255 steps (rounded to 8 bits, as ImageNet teachers saw their images), so an
  8-bit PNG, a 16-bit TIFF and a float TIFF of the same picture score alike.
Masks, in any of those formats, are defect where non-zero: an opaque mask (no alpha, or an alpha that is the same
everywhere, as image editors write it) by its colour or gray value, a mask whose alpha varies by its alpha."""
_ORIENT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],  # as ImageOps.exif_transpose
           5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1), 8: lambda a: np.rot90(a, 1)}
_TIFF_PLAIN = (0, 1, 2)  # photometric MINISWHITE, MINISBLACK, RGB: read by tifffile; other TIFFs by Pillow
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _tiff(path: Path | str) -> tuple[np.ndarray, float] | None:
    """(H x W x C array, full scale) of a plain TIFF by tifffile, which keeps 16-bit colour and floats that Pillow
    truncates or clips; None for TIFFs it cannot or should not read (compressed without imagecodecs, palette,
    CMYK, YCbCr), which Pillow then reads."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if page.photometric not in _TIFF_PLAIN:
                return None
            a = page.asarray()
            orientation = int(page.tags["Orientation"].value) if "Orientation" in page.tags else 1
            bits, planar, photometric = int(page.bitspersample), int(page.planarconfig), int(page.photometric)
    except Exception:  # tifffile raises many kinds (missing codecs among them): Pillow gets its turn
        return None
    if planar == 2 and a.ndim == 3:
        a = np.moveaxis(a, 0, -1)
    if a.dtype == bool:
        a, full = a.astype(np.uint8), 1.0
    elif a.dtype.kind == "f":
        full = 1.0
    elif a.dtype.kind == "u":
        full = float(2 ** bits - 1) if bits in (1, 2, 4, 8, 10, 12, 14, 16) else float(np.iinfo(a.dtype).max)
    else:
        return None
    if photometric == 0:  # MINISWHITE: 0 is white
        a = (full - a.astype(np.float64)) if a.dtype.kind != "f" else 1.0 - a
    a = a if a.ndim == 3 else a[..., None]
    return np.ascontiguousarray(_ORIENT.get(orientation, lambda x: x)(a)), full


def _pillow(im: Image.Image) -> tuple[np.ndarray, float]:
    """(H x W x C array, full scale) of an opened Pillow image, orientation applied, channels as stored (gray,
    gray + alpha, RGB, RGBA); palette, CMYK and YCbCr converted to RGB(A)."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im, dtype=np.uint16)[..., None], 65535.0
    if im.mode == "I":
        a = np.asarray(im, dtype=np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"32-bit integer pixels from {a.min()} to {a.max()}; save it as 8- or 16-bit")
        return a[..., None], 65535.0
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)[..., None], 1.0
    if im.mode == "1":
        return np.asarray(im.convert("L"))[..., None], 255.0
    if im.mode in ("L", "LA", "RGB", "RGBA"):
        a = np.asarray(im)
        return (a[..., None] if a.ndim == 2 else a), 255.0
    with warnings.catch_warnings():  # a palette's transparency given in bytes: converted below, as it asks
        warnings.simplefilter("ignore")
        has_alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB")), 255.0


def _decoded(path: Path | str, what: str) -> tuple[np.ndarray, float]:
    """(H x W x C array as stored, its full scale), or one line naming the file."""
    try:
        found = _tiff(path) if Path(path).suffix.lower() in (".tif", ".tiff") else None
        if found is None:
            with Image.open(path) as im:
                im.load()
                found = _pillow(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DskdError(f"{path}: unreadable or truncated {what} ({exc}); re-extract, convert or remove the file") \
            from exc
    a, full = found
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or 0 in a.shape:
        raise DskdError(f"{path}: this {what} has the shape {a.shape}, not a picture's (gray, gray + alpha, RGB or "
                        "RGBA expected); save it as an ordinary image")
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        if not finite.all() or a.min() < -1e-6 or a.max() > 1 + 1e-6:
            low, high = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (np.nan, np.nan)
            bad = "" if finite.all() else f"{int((~finite).sum())} NaN or infinite values, "
            raise DskdError(f"{path}: a float {what} with {bad}values from {low:.4g} to {high:.4g}; float images "
                            "are read as [0, 1]: save it scaled to [0, 1], or as 8- or 16-bit integers")
    return a, full


def read_picture(path: Path | str) -> np.ndarray:
    """H x W x 3 float32 RGB in [0, 1], by the rule in DECODING; one line naming the file when it cannot be."""
    a, full = _decoded(path, "image")
    colour = a[..., :3] if a.shape[2] >= 3 else a[..., :1]
    picture = np.clip(colour.astype(np.float32) / np.float32(full), 0.0, 1.0)
    return np.repeat(picture, 3, axis=2) if picture.shape[2] == 1 else picture


def read_image(path: Path | str) -> np.ndarray:
    """H x W x 3 uint8: the picture of `read_picture` in the 1/255 steps the network takes it in."""
    a, full = _decoded(path, "image")
    colour = a[..., :3] if a.shape[2] >= 3 else a[..., :1]
    if colour.dtype != np.uint8 or full != 255.0:
        colour = np.round(np.clip(colour.astype(np.float64) / full, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(colour, 3, axis=2) if colour.shape[2] == 1 else np.ascontiguousarray(colour)


def read_mask(path: Path | str) -> np.ndarray:
    """H x W bool by the mask rule in DECODING: opaque masks by colour, masks whose alpha varies by alpha."""
    a, _ = _decoded(path, "mask")
    if a.shape[2] in (2, 4):
        alpha = a[..., -1]
        a = a[..., -1:] if alpha.min() != alpha.max() else a[..., :-1]
    return (a > 0).any(axis=2)


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
