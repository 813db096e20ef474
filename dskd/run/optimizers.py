"""The students' optimizers and their learning-rate schedule."""

from __future__ import annotations

import math

import torch

from .config import OptimConfig


def make_optimizer(params, opt: OptimConfig) -> torch.optim.Optimizer:
    # One fused kernel per step instead of a loop over tensors: it saved about 8% of a 64 px CPU step in one A/B
    # here; at 256 px the optimizer is under 1% of a step (results/benchmarks/speed.md).
    params = list(params)
    fused = {"fused": True} if params and params[0].device.type in ("cpu", "cuda") else {}
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay, **fused)
    return torch.optim.Adam(params, lr=opt.lr, betas=tuple(opt.betas), weight_decay=opt.weight_decay, **fused)


def set_cosine_lr(optims: dict[str, torch.optim.Optimizer], recipes: dict[str, OptimConfig], progress: float) -> None:
    """Half a cosine from each recipe's rate to 0 over the run; a function of the step alone, so resuming needs no
    state."""
    factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    for name, opt in optims.items():
        for group in opt.param_groups:
            group["lr"] = recipes[name].lr * factor
