"""Cross-fitting's deployed model: one frozen teacher and K student sets, set k trained on every good image but fold
k (`RunConfig.folds`).

The teacher runs once per image for all K sets. The model's map is the sets' normalized native maps averaged per
student and scale, then fused as one model's maps are (with sum or mean fusion, the mean of the sets' maps), so
archives, exports and ablations read it as any model's. Its decision also needs each set's own image score
(`AnomalyOutput.set_scores`): the cross-conformal rule compares set k's score of a new image with its scores of the
fold it never trained on (`dskd.decision.crossfit`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .config import N_SCALES, ModelConfig
from .maps import AnomalyOutput, fuse_native, normalize_scales
from .network import DSKD, check_images, fold_batchnorm


class CrossFitModel(nn.Module):
    def __init__(self, config: ModelConfig, folds: int, pretrained: bool = True) -> None:
        super().__init__()
        first = DSKD(config, pretrained)
        self.teacher = first.teacher
        self.sets = nn.ModuleList([first, *(DSKD(config, teacher=self.teacher) for _ in range(folds - 1))])
        self.config = first.config
        identity = torch.zeros(len(self.config.students), 2, N_SCALES)
        identity[:, 1] = 1.0
        self.register_buffer("map_norm_stats", identity)  # the averaged maps are normalized already
        self.inference_only = False

    @property
    def students(self) -> tuple[str, ...]:
        return self.config.students

    def for_inference(self) -> CrossFitModel:
        """As `DSKD.for_inference`, for the teacher and every student set."""
        self.eval()
        fold_batchnorm(self)
        self.to(memory_format=torch.channels_last)
        for m in (self, *self.sets):
            m.inference_only = True
        return self

    def native_maps(self, images: torch.Tensor) -> dict[str | tuple[str, int], list[torch.Tensor]]:
        """Student -> per scale, the sets' normalized maps averaged; (student, k) -> set k's own maps."""
        check_images(images)
        if self.inference_only:
            images = images.contiguous(memory_format=torch.channels_last)
        teacher = self.teacher(self.teacher.normalize(images))
        natives = [m.native_maps(images, teacher) for m in self.sets]
        out: dict[str | tuple[str, int], list[torch.Tensor]] = {}
        norms = [m.map_norm() for m in self.sets]
        for name in self.students:
            normalized = [n[name] if norm is None else normalize_scales(n[name], norm[name], self.config.scale_fusion)
                          for norm, n in zip(norms, natives, strict=True)]
            out[name] = [torch.stack(level).mean(0) for level in zip(*normalized, strict=True)]
        for k, native in enumerate(natives):
            out.update({(name, k): maps for name, maps in native.items()})
        return out

    def fuse(self, native: dict, size: tuple[int, int], scales: list[int] | None = None,
             valid: torch.Tensor | None = None, keep_students: bool = True) -> AnomalyOutput:
        """The averaged maps fused; where the sets' own maps are there too (not in maps read back from an archive),
        each set's score of each image (`set_scores`, B x K)."""
        cfg = self.config
        out = fuse_native({n: native[n] for n in self.students}, size, keep_students=keep_students,
                          scale_fusion=cfg.scale_fusion, student_fusion=cfg.student_fusion, sigma=cfg.sigma,
                          scales=scales, score_share=cfg.score_share, valid=valid)
        if not all((n, 0) in native for n in self.students):
            return out
        scores = [m.fuse({n: native[(n, k)] for n in self.students}, size, scales, valid,
                         keep_students=False).score for k, m in enumerate(self.sets)]
        return replace(out, set_scores=torch.stack(scores, 1))

    def anomaly_map(self, images: torch.Tensor, scales: list[int] | None = None,
                    valid: torch.Tensor | None = None, keep_students: bool = True) -> AnomalyOutput:
        return self.fuse(self.native_maps(images), images.shape[-2:], scales, valid, keep_students)
