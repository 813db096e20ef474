"""What is fitted on a run's training images (defect-free by construction) after its last epoch: the students'
BatchNorm statistics, the map normalization and the image threshold.

Students and scales produce discrepancies of different ranges; `ModelConfig.map_norm` puts them on one footing
before fusion with statistics of the training images, and the threshold that `predict` uses is read off the
training images' scores under those same maps.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..model.config import N_SCALES
from ..model.network import DSKD
from .batch_maps import maps_in_batches, to_input
from .folder import autocast

THRESHOLD_SIGMAS = 3.0  # predict's threshold: mean + 3 std of the training images' scores


def _moments(model: DSKD, images: torch.Tensor, device: torch.device, batch_size: int, precision: str,
             valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Per student and scale, the mean and std of the native maps; each map cell weighs by the fraction of it
    that shows the image (`valid`), so padding does not enter. Also the native maps, kept for re-fusing."""
    k = len(model.students)
    sums, sqs, weights = (torch.zeros(k, N_SCALES, dtype=torch.float64) for _ in range(3))
    kept = []
    for sl, native, _ in maps_in_batches(model, images, device, batch_size, precision, fused=False):
        part = None if valid is None else valid[sl]
        kept.append((native, part))
        shown = None if part is None else part[:, None].to(device, torch.float64)
        for i, name in enumerate(model.students):
            for j, m in enumerate(native[name]):
                m = m.double()
                w = torch.ones_like(m) if shown is None else F.interpolate(shown, size=m.shape[-2:], mode="area")
                sums[i, j] += (w * m).sum().cpu()
                sqs[i, j] += (w * m**2).sum().cpu()
                weights[i, j] += w.sum().cpu()
    mean = sums / weights
    return mean, (sqs / weights - mean**2).clamp_min(1e-12).sqrt(), kept


def fit_map_statistics(model: DSKD, images: torch.Tensor, device: torch.device, batch_size: int,
                       valid: torch.Tensor | None = None, *, precision: str = "float32") -> dict[str, Any]:
    """Set the model's map normalization from the training images, then score them under it.

    One pass through the network: the native per-scale maps are kept (small) and re-fused after the
    normalization has been set, so the threshold sees the same maps that evaluation will.
    """
    mean, std, kept = _moments(model, images, device, batch_size, precision, valid)
    norm = torch.zeros(len(model.students), 2, N_SCALES)
    norm[:, 1] = 1.0
    if model.config.map_norm == "zscore":
        norm[:, 0], norm[:, 1] = mean.float(), std.float()
    elif model.config.map_norm == "mean":
        norm[:, 1] = mean.float()
    model.map_norm_stats.copy_(norm.to(model.map_norm_stats.device))
    with torch.inference_mode():
        scores = torch.cat([model.fuse(native, images.shape[-2:], valid=part, keep_students=False).score.float().cpu()
                            for native, part in kept])
    threshold = float(scores.mean() + THRESHOLD_SIGMAS * scores.std()) if len(scores) > 1 else float(scores.max())
    return {"map_stats": {"mean": mean.tolist(), "std": std.tolist()}, "train_scores": scores.tolist(),
            "image_threshold": threshold}


@torch.no_grad()
def recalibrate_batchnorm(model: DSKD, images: torch.Tensor, device: torch.device, batch_size: int,
                          precision: str = "float32") -> None:
    """Replace the students' BatchNorm running statistics by averages over `images` under the final weights.

    One pass without gradients, every student norm in training mode (as SWA's update_bn), in batches of
    `batch_size` as in training. Re-estimating Se's norms first and then Sd's gave the same maps, for twice the time.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.weight.requires_grad]
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
        m.train()
    for i in range(0, len(images), batch_size):
        x = to_input(images[i: i + batch_size], device)
        if len(x) > 1:
            with autocast(device, precision):
                model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()
