"""Pyramid distillation loss: how far each student's features are, in direction, from the teacher's."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .config import LOSS_KINDS

EPS = 1e-6  # F.cosine_similarity's floor on each vector's norm


def channel_norm(x: torch.Tensor) -> torch.Tensor:
    """B x H x W: each pixel's feature-vector length (floored at EPS)."""
    return torch.linalg.vector_norm(x, dim=1).clamp_min(EPS)


def cosine_distance(teacher: torch.Tensor, student: torch.Tensor,
                    teacher_norm: torch.Tensor | None = None) -> torch.Tensor:
    """1 - cosine similarity along channels: B x H x W, 0 where the feature vectors point the same way.

    F.cosine_similarity's value, computed as one dot product over two norms: F.cosine_similarity divides both
    full feature maps by their norms first, two more passes over the largest tensors of the map path.
    `teacher_norm` (`channel_norm(teacher)`) lets several students share the teacher's norms."""
    t_norm = channel_norm(teacher) if teacher_norm is None else teacher_norm
    return 1.0 - (teacher * student).sum(1) / (t_norm * channel_norm(student))


def scale_loss(teacher: torch.Tensor, student: torch.Tensor, kind: str = "pixel_cosine") -> torch.Tensor:
    """One scale's loss. `pixel_cosine` (STFPM): mean over pixels of the per-pixel cosine distance.
    `flat_cosine` (Reverse Distillation): one cosine between the flattened maps of each image."""
    if kind == "pixel_cosine":
        return cosine_distance(teacher, student).mean()
    if kind == "flat_cosine":
        return (1.0 - F.cosine_similarity(teacher.flatten(1), student.flatten(1), dim=1, eps=EPS)).mean()
    raise ValueError(f"unknown loss '{kind}'; choose one of {', '.join(LOSS_KINDS)}")


def pyramid_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
                 scale_weights: Sequence[float] = (1.0, 1.0, 1.0), kind: str = "pixel_cosine") -> torch.Tensor:
    """Weighted sum over scales of `scale_loss`; the teacher's features carry no gradient."""
    return sum(w * scale_loss(t.detach(), s, kind)
               for w, t, s in zip(scale_weights, teacher, student, strict=True))  # type: ignore[return-value]
