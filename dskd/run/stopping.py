"""The stopping rule: train until the students' loss on good images they never train on stops improving.

It needs no defect, so it can decide for a user's own data. The students' loss is what they are trained to lower;
on held-out good images it stops falling when they have learned what the training images can teach (it rises when
they start to memorize them). Training keeps the last epoch's weights: on a plateau they differ from the best
epoch's by less than the rule's tolerance, and keeping them needs no second copy of the network."""

from __future__ import annotations

import math

import torch

from ..model.network import DSKD
from .batch_maps import to_input
from .folder import autocast


@torch.no_grad()
def held_out_loss(model: DSKD, images: torch.Tensor, teacher: list[torch.Tensor] | None, device: torch.device,
                  batch_size: int, precision: str) -> dict[str, float]:
    """Each student's loss and their total, averaged over the held-out images, the network in evaluation mode (its
    BatchNorm running statistics, as it will score)."""
    model.eval()
    sums: dict[str, float] = {}
    for i in range(0, len(images), batch_size):
        x = to_input(images[i: i + batch_size], device)
        feats = None if teacher is None else [t[i: i + batch_size].to(device) for t in teacher]
        with autocast(device, precision):
            losses = model.loss(x, feats)
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + float(value) * len(x)
    model.train()
    return {name: total / len(images) for name, total in sums.items()}


def stop_reason(losses: list[float], patience: int, min_improvement: float, max_epochs: int) -> str | None:
    """Why training stops after epochs with these held-out losses (the first is epoch 1), or None to go on.

    An epoch improves when its loss falls below the best improving epoch's by at least `min_improvement` of it; a
    slow, steady fall therefore counts once it adds up to that share."""
    best, best_epoch = math.inf, 0
    for epoch, loss in enumerate(losses, start=1):
        if loss < best * (1 - min_improvement):
            best, best_epoch = loss, epoch
    if losses and len(losses) - best_epoch >= patience:
        return (f"the held-out loss has not fallen {min_improvement:.1%} below its best ({best:.4g}, epoch "
                f"{best_epoch}) for {len(losses) - best_epoch} epochs")
    if len(losses) >= max_epochs:
        return (f"reached the most epochs allowed ({max_epochs}) while the held-out loss was still improving (best "
                f"{best:.4g} at epoch {best_epoch}); --max-epochs allows more")
    return None
