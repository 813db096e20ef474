"""Cross-fitting's deployed model: one frozen teacher and K student sets, each trained on every good image but one
fold (`RunConfig.folds`).

The teacher runs once per image for all K sets. The ensemble's map is the sets' normalized native maps averaged
per student and scale, then fused as one model's maps are (with sum or mean fusion, the mean of the sets' maps), so
archives, exports and ablations read it as any model's. Its decision also needs each set's own image score
(`AnomalyOutput.member_scores`): the cross-conformal rule compares set k's score of a new image with its scores of
the fold it never trained on (`dskd.run.decision`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .config import N_SCALES, ModelConfig
from .maps import AnomalyOutput, fuse_native, normalize_scales
from .network import DSKD, check_images, fold_batchnorm


def member_key(student: str, k: int) -> str:
    """Where set k's native maps of `student` sit among the ensemble's native maps."""
    return f"{student}@{k}"


class FoldEnsemble(nn.Module):
    def __init__(self, config: ModelConfig, folds: int, pretrained: bool = True) -> None:
        super().__init__()
        first = DSKD(config, pretrained)
        self.teacher = first.teacher
        self.members = nn.ModuleList([first, *(DSKD(config, teacher=self.teacher) for _ in range(folds - 1))])
        self.config = first.config
        identity = torch.zeros(len(self.config.students), 2, N_SCALES)
        identity[:, 1] = 1.0
        self.register_buffer("map_norm_stats", identity)  # the averaged maps are normalized already
        self.inference_only = False

    @property
    def students(self) -> tuple[str, ...]:
        return self.config.students

    def map_norm(self) -> None:
        return None

    def for_inference(self) -> FoldEnsemble:
        """As `DSKD.for_inference`, for the teacher and every student set."""
        self.eval()
        fold_batchnorm(self)
        self.to(memory_format=torch.channels_last)
        for m in (self, *self.members):
            m.inference_only = True
        return self

    def native_maps(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Student -> per scale, the sets' normalized maps averaged; `member_key(student, k)` -> set k's raw maps."""
        check_images(images)
        if self.inference_only:
            images = images.contiguous(memory_format=torch.channels_last)
        teacher = self.teacher(self.teacher.normalize(images))
        natives = [m.native_maps(images, teacher) for m in self.members]
        out: dict[str, list[torch.Tensor]] = {}
        norms = [m.map_norm() for m in self.members]
        for name in self.students:
            normalized = [n[name] if norm is None else normalize_scales(n[name], norm[name], self.config.scale_fusion)
                          for norm, n in zip(norms, natives, strict=True)]
            out[name] = [torch.stack(level).mean(0) for level in zip(*normalized, strict=True)]
        for k, native in enumerate(natives):
            out.update({member_key(name, k): maps for name, maps in native.items()})
        return out

    def fuse(self, native: dict[str, list[torch.Tensor]], size: tuple[int, int], scales: list[int] | None = None,
             valid: torch.Tensor | None = None, keep_students: bool = True) -> AnomalyOutput:
        cfg = self.config
        out = fuse_native({n: native[n] for n in self.students}, size, keep_students=keep_students,
                          scale_fusion=cfg.scale_fusion, student_fusion=cfg.student_fusion, sigma=cfg.sigma,
                          scales=scales, score_share=cfg.score_share, valid=valid)
        if not all(member_key(n, 0) in native for n in self.students):  # maps read back from an archive
            return out
        scores = [m.fuse({n: native[member_key(n, k)] for n in self.students}, size, scales, valid,
                         keep_students=False).score for k, m in enumerate(self.members)]
        return replace(out, member_scores=torch.stack(scores, 1))

    def anomaly_map(self, images: torch.Tensor, scales: list[int] | None = None,
                    valid: torch.Tensor | None = None, keep_students: bool = True) -> AnomalyOutput:
        return self.fuse(self.native_maps(images), images.shape[-2:], scales, valid, keep_students)
