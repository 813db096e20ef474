"""Inspection overlays: the anomaly map over the image at the image's own size and aspect ratio, the region above
the threshold outlined, and the score and decision printed on it. NumPy and Pillow only (runs on a line-side PC)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.images import content_box
from ..decision.outline import outline

_JET = np.array([[0, 0, 0.5], [0, 0, 1], [0, 0.5, 1], [0, 1, 1], [0.5, 1, 0.5], [1, 1, 0], [1, 0.5, 0], [1, 0, 0],
                 [0.5, 0, 0]])
OUTLINE = (255, 0, 255)  # magenta: visible on the jet colours and on grey parts alike
def jet(t: np.ndarray) -> np.ndarray:
    """H x W in [0, 1] -> H x W x 3 in [0, 1] (matplotlib's 'jet', by linear interpolation of its anchors)."""
    pos = np.clip(t, 0, 1) * (len(_JET) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_JET) - 2)
    frac = (pos - lo)[..., None]
    return _JET[lo] * (1 - frac) + _JET[lo + 1] * frac


_JET_LUT = np.rint(jet(np.linspace(0.0, 1.0, 256)) * 255).astype(np.float32)  # 256 x 3: the colours in 1/255 steps
BLOCK_ROWS = 256


def map_to_image(amap: np.ndarray, width: int, height: int, fit_mode: str) -> np.ndarray:
    """The S x S map in the original image's frame: the padding cut away (pad mode), then resized to W x H."""
    size = amap.shape[-1]
    top, left, h, w = content_box(width, height, size, fit_mode)
    crop = np.ascontiguousarray(amap[top: top + h, left: left + w], dtype=np.float32)
    return np.asarray(Image.fromarray(crop, mode="F").resize((width, height), Image.BILINEAR))


def _outline(region: np.ndarray, width: int) -> np.ndarray:
    """The border pixels of a boolean region, `width` pixels thick."""
    inner = region.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:] &= inner[:-1]
        shrunk[:-1] &= inner[1:]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return region & ~inner


def render(image: np.ndarray, amap: np.ndarray, fit_mode: str, threshold: float, score: float,
           pixel_threshold: float | None = None, defective: bool | None = None,
           p_value: float | None = None) -> Image.Image:
    """Overlay for one image (H x W x 3 uint8) and its map (S x S): colour 0.5 at the pixel threshold (default: the
    image threshold), the decision's outline (`dskd.decision.outline`: only on a part it flags), and 'DEFECTIVE' or
    'good' (the decision, by default the score against the image threshold) with the score and the threshold, or
    the p-value that decided, in the corner."""
    height, width = image.shape[:2]
    full = map_to_image(amap, width, height, fit_mode)
    at = threshold if pixel_threshold is None else pixel_threshold
    defective = score >= threshold if defective is None else defective
    spread = max(at - float(full.min()), 1e-6)
    level = np.clip(np.rint((0.5 + 0.5 * (full - at) / spread) * 255), 0, 255).astype(np.uint8)
    out = np.empty_like(image)
    for top in range(0, height, BLOCK_ROWS):  # in blocks: a 24-megapixel frame never has a float copy whole
        rows = slice(top, top + BLOCK_ROWS)
        out[rows] = (0.55 * image[rows] + 0.45 * _JET_LUT[level[rows]]).astype(np.uint8)
    out[_outline(outline(full, defective, at), max(1, min(width, height) // 200))] = OUTLINE
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    against = f"threshold {threshold:.3f}" if p_value is None else f"p {p_value:.3g}"
    text = f"{'DEFECTIVE' if defective else 'good'}  score {score:.3f}  {against}"
    font = ImageFont.load_default(size=max(10, min(width, height) // 25))
    box = draw.textbbox((4, 4), text, font=font)
    draw.rectangle((0, 0, box[2] + 4, box[3] + 4), fill=(200, 0, 0) if defective else (0, 110, 0))
    draw.text((4, 4), text, fill=(255, 255, 255), font=font)
    return canvas
