"""Anomaly maps: per-student, per-scale teacher discrepancy, fused, smoothed and scored.

`fuse` works on live tensors and on saved per-scale maps alike, so an ablation over scale subsets or fusion
rules never needs to retrain.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .config import SCALE_FUSIONS, STUDENT_FUSIONS
from .losses import channel_norm, cosine_distance

_REDUCTIONS = {
    "sum": lambda x: x.sum(1, keepdim=True),
    "mean": lambda x: x.mean(1, keepdim=True),
    "product": lambda x: x.prod(1, keepdim=True),
    "max": lambda x: x.amax(1, keepdim=True),
}


def _reduce(x: torch.Tensor, how: str, allowed: tuple[str, ...], what: str) -> torch.Tensor:
    if how not in allowed:
        raise ValueError(f"unknown {what} '{how}'; choose one of {', '.join(allowed)}")
    return _REDUCTIONS[how](x)


@dataclass
class AnomalyOutput:
    map: torch.Tensor  # B x 1 x H x W, fused and smoothed
    score: torch.Tensor  # B
    per_student: dict[str, torch.Tensor]  # name -> B x 1 x H x W, scales fused, smoothed
    per_scale: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> B x S x H x W, raw (unsmoothed)
    set_scores: torch.Tensor | None = None  # B x K: a cross-fitted model's score by each of its student sets


def native_maps(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
                teacher_norms: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Per scale, B x 1 x h x w cosine distance at the scale's own resolution (what `--save-maps` stores);
    `teacher_norms` (per scale, `channel_norm`) are computed once when several students meet one teacher."""
    norms = teacher_norms if teacher_norms is not None else [channel_norm(t) for t in teacher]
    return [cosine_distance(t, s, n).unsqueeze(1) for t, s, n in zip(teacher, student, norms, strict=True)]


def discrepancy_maps(teacher: Sequence[torch.Tensor],
                     students: Mapping[str, Sequence[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    """Student name -> `native_maps`, with the teacher's norms computed once for all students."""
    norms = [channel_norm(t) for t in teacher]
    return {name: native_maps(teacher, feats, norms) for name, feats in students.items()}


def upsample_scales(native: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """B x S x H x W: each scale's map bilinearly upsampled to the input size."""
    return torch.cat([F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False) for m in native], 1)


def per_scale_maps(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
                   size: tuple[int, int]) -> torch.Tensor:
    """B x S x H x W: cosine distance at each scale, bilinearly upsampled to the input size."""
    return upsample_scales(native_maps(teacher, student), size)


def gaussian_weights(sigma: float, radius: int | None = None) -> list[float]:
    """A normalized 1-D Gaussian, truncated at 4 sigma (or at `radius`), as plain numbers: the smoothing is then a
    constant of an exported graph, not ops that build a kernel at run time."""
    full = int(4.0 * sigma + 0.5)
    r = full if radius is None else min(radius, full)
    k = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-r, r + 1)]
    return [v / sum(k) for v in k]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of every channel of a B x C x H x W batch (reflect padding; the kernel is cut
    to the image where the image is smaller than it, as reflect padding needs). Channels are folded into the batch
    and smoothed by one single-channel kernel: OpenVINO's CPU plugin stalls on the grouped-convolution form."""
    if sigma <= 0:
        return x
    c, (h, w) = x.shape[1], x.shape[-2:]
    kh = torch.tensor(gaussian_weights(sigma, h - 1), device=x.device, dtype=x.dtype)
    kw = torch.tensor(gaussian_weights(sigma, w - 1), device=x.device, dtype=x.dtype)
    r_h, r_w = kh.numel() // 2, kw.numel() // 2
    y = x.reshape(-1, 1, h, w)
    y = F.conv2d(F.pad(y, (0, 0, r_h, r_h), mode="reflect"), kh.view(1, 1, -1, 1))
    y = F.conv2d(F.pad(y, (r_w, r_w, 0, 0), mode="reflect"), kw.view(1, 1, 1, -1))
    return y.reshape(-1, c, h, w)


@functools.lru_cache(maxsize=64)
def resampling_matrix(n_in: int, n_out: int, sigma: float) -> np.ndarray:
    """n_out x n_in float32: bilinear upsampling (F.interpolate's, align_corners=False) followed by
    `gaussian_blur`'s reflect-padded Gaussian, along one axis, as one matrix. Both are linear, so a map's upsampling
    and smoothing become two matrix products: one BLAS call each instead of interpolation, padding and
    convolution passes over the full-size map."""
    rows = np.arange(n_out)
    src = np.maximum((rows + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.floor(src).astype(int)
    frac = src - lo
    up = np.zeros((n_out, n_in))
    np.add.at(up, (rows, lo), 1.0 - frac)
    np.add.at(up, (rows, np.minimum(lo + 1, n_in - 1)), frac)
    if sigma <= 0:
        return up.astype(np.float32)
    taps = gaussian_weights(sigma, n_out - 1)
    r, blur = len(taps) // 2, np.zeros((n_out, n_out))
    for t, weight in enumerate(taps):
        idx = np.abs(rows + t - r)
        np.add.at(blur, (rows, np.where(idx > n_out - 1, 2 * (n_out - 1) - idx, idx)), weight)
    return (blur @ up).astype(np.float32)


def upsample_smooth_sum(native: Sequence[torch.Tensor], size: tuple[int, int], sigma: float) -> torch.Tensor:
    """B x 1 x H x W: the sum over scales of each native B x 1 x h x w map upsampled to `size` and smoothed,
    i.e. `gaussian_blur(upsample_scales(native, size).sum(1, keepdim=True), sigma)`, as
    A @ concat_j(m_j @ B_j^T), with the constant matrices of `resampling_matrix` (A = [A_1 ... A_S])."""
    (h_out, w_out), rows, cols = (int(size[0]), int(size[1])), [], []
    for m in native:  # int(): a TorchScript trace gives sizes as tensors, and the matrices are constants of the size
        b = torch.from_numpy(resampling_matrix(int(m.shape[-1]), w_out, sigma)).to(m)
        rows.append(m @ b.T)
        cols.append(torch.from_numpy(resampling_matrix(int(m.shape[-2]), h_out, sigma)).to(m))
    return torch.cat(cols, 1) @ torch.cat(rows, -2)


def fuse_scales(per_scale: torch.Tensor, how: str = "sum", scales: Sequence[int] | None = None) -> torch.Tensor:
    """B x S x H x W -> B x 1 x H x W over the chosen scale indices (0 = finest)."""
    return _reduce(per_scale if scales is None else per_scale[:, list(scales)], how, SCALE_FUSIONS, "scale fusion")


def fuse_students(stacked: torch.Tensor, how: str = "sum") -> torch.Tensor:
    """B x K x H x W -> B x 1 x H x W."""
    return _reduce(stacked, how, STUDENT_FUSIONS, "student fusion")


def top_count(share: float, pixels: int) -> int:
    """How many of a map's `pixels` a `score_share` averages (0: the maximum alone)."""
    return min(pixels, max(1, math.ceil(share * pixels)))


def image_score(amap: torch.Tensor, share: float = 0.0) -> torch.Tensor:
    """The map's maximum (share 0), or the mean of its largest pixels, a `share` of the map: a single pixel's
    noise then moves the score less (docs/findings.md, section 27). Padding arrives as -inf and is left out."""
    flat = amap.flatten(1)
    if share <= 0:
        return flat.amax(1)
    top = flat.topk(top_count(share, int(flat.shape[1])), dim=1).values
    shown = torch.isfinite(top)
    return torch.where(shown, top, torch.zeros_like(top)).sum(1) / shown.sum(1).clamp_min(1).to(top)


def _valid_score(amap: torch.Tensor, valid: torch.Tensor | None, share: float) -> torch.Tensor:
    """The image score over the pixels that show the image (`valid`), never the padding."""
    return image_score(amap if valid is None else amap.masked_fill(~valid.to(amap.device)[:, None], float("-inf")),
                       share)


def normalize_scales(maps: Sequence[torch.Tensor], norm: torch.Tensor, scale_fusion: str) -> list[torch.Tensor]:
    """Each scale's map as (m - loc) / scale with a student's 2 x S statistics (`fuse` says why); under product
    fusion m / scale."""
    return [(m if scale_fusion == "product" else m - norm[0, j].to(m)) / norm[1, j].to(m) for j, m in enumerate(maps)]


def fuse(per_scale: Mapping[str, torch.Tensor], *, scale_fusion: str = "sum", student_fusion: str = "sum",
         sigma: float = 4.0, scales: Sequence[int] | None = None, score_share: float = 0.0,
         norm: Mapping[str, torch.Tensor] | None = None, valid: torch.Tensor | None = None) -> AnomalyOutput:
    """Per-student per-scale maps -> AnomalyOutput.

    `norm` maps a student to a 2 x S tensor (location, scale) fitted on training images: each scale's map
    becomes (m - loc) / scale before fusion, so that scales and students with different ranges weigh alike
    (m / scale under product fusion, whose factors must stay non-negative). `valid` (B x H x W bool, True where
    the input shows the image) keeps padding out of the image score.
    """
    fused = []
    for name, maps in per_scale.items():
        if norm is not None and name in norm:
            loc, spread = norm[name][0].view(1, -1, 1, 1), norm[name][1].view(1, -1, 1, 1)
            if scale_fusion == "product":  # a product needs non-negative factors: rescale, do not shift
                loc = torch.zeros_like(loc)
            maps = (maps - loc.to(maps)) / spread.to(maps)
        fused.append(fuse_scales(maps, scale_fusion, scales))
    smoothed = gaussian_blur(torch.cat(fused, dim=1), sigma)
    amap = fuse_students(smoothed, student_fusion)
    return AnomalyOutput(
        map=amap,
        score=_valid_score(amap, valid, score_share),
        per_student={name: smoothed[:, i: i + 1] for i, name in enumerate(per_scale)},
        per_scale=dict(per_scale),
    )


LINEAR_FUSIONS = ("sum", "mean")


def fuse_native(native: Mapping[str, Sequence[torch.Tensor]], size: tuple[int, int], *, keep_students: bool = True,
                scale_fusion: str = "sum", student_fusion: str = "sum", sigma: float = 4.0,
                scales: Sequence[int] | None = None, score_share: float = 0.0,
                norm: Mapping[str, torch.Tensor] | None = None, valid: torch.Tensor | None = None) -> AnomalyOutput:
    """Native per-scale maps (student -> per scale, B x 1 x h x w) -> AnomalyOutput, as `fuse` after upsampling.

    Upsampling, normalization and smoothing are linear, and so are sum and mean fusion: when neither the
    per-student maps (`keep_students=False`) nor a non-linear fusion are asked for, every student's normalized map
    is summed at each scale's own resolution, and the scales are upsampled, summed and smoothed by two matrix
    products (`upsample_smooth_sum`). The map equals `fuse`'s to float rounding (tests) at a fraction of its cost;
    this is the path of exported graphs and of prediction."""
    if keep_students or scale_fusion not in LINEAR_FUSIONS or student_fusion not in LINEAR_FUSIONS:
        per_scale = {name: upsample_scales(maps, size) for name, maps in native.items()}
        return fuse(per_scale, scale_fusion=scale_fusion, student_fusion=student_fusion, sigma=sigma, scales=scales,
                    score_share=score_share, norm=norm, valid=valid)
    if norm is not None:
        native = {name: normalize_scales(maps, norm[name], scale_fusion) if name in norm else maps
                  for name, maps in native.items()}
    picked = list(range(len(next(iter(native.values()))))) if scales is None else list(scales)
    summed = [sum(maps[j] for maps in native.values()) for j in picked]
    amap = upsample_smooth_sum(summed, size, sigma)
    if scale_fusion == "mean":
        amap = amap / len(picked)
    if student_fusion == "mean":
        amap = amap / len(native)
    return AnomalyOutput(map=amap, score=_valid_score(amap, valid, score_share), per_student={})


__all__ = [
    "SCALE_FUSIONS", "STUDENT_FUSIONS", "AnomalyOutput", "discrepancy_maps", "fuse", "fuse_native", "fuse_scales",
    "fuse_students", "gaussian_blur", "image_score", "native_maps", "normalize_scales", "per_scale_maps",
    "resampling_matrix", "upsample_scales", "upsample_smooth_sum",
]
