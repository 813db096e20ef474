"""The network's settings: `ModelConfig`, whose fields carry their default, choices and one-line help,
and the names of the pyramid levels, variants and fusions they choose among."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import DskdError
from ..settings import check_values, setting

N_SCALES = 3  # pyramid levels (strides 4, 8, 16) of every teacher, student, map and loss
VARIANTS = ("dskd", "se_only", "sd_only", "dskd_no_df", "dual_se", "dual_sd")
FORWARD_ONLY, INVERTED_ONLY = ("se_only", "dual_se"), ("sd_only", "dual_sd")  # variants without the other kind
DF_SOURCES = ("se", "teacher", "both")
DF_INPUTS = ("raw", "predicted")
LOSS_KINDS = ("pixel_cosine", "flat_cosine")
SCALE_FUSIONS = ("sum", "mean", "product")
STUDENT_FUSIONS = ("sum", "mean", "max")
MAP_NORMS = ("none", "zscore", "mean")


def _backbones() -> list[str]:
    from .backbones import BACKBONES  # registries are read when asked: they import torch

    return list(BACKBONES)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = setting("efficientnet_lite0", "frozen ImageNet teacher", _backbones)
    variant: str = setting("dskd", "dskd, or an ablation: se_only (~STFPM), sd_only (~Reverse Distillation), "
                                   "dskd_no_df (no DF embedding); controls: dual_se, dual_sd (two students of one "
                                   "structure, fused as dskd)", VARIANTS)
    df_source: str = setting("auto", "what feeds the DF embedding: Se's pyramid (students interact), the teacher's "
                                     "(Reverse Distillation), or both concatenated; auto: teacher for sd_only, else se",
                             ("auto", *DF_SOURCES, "none"))
    df_detach: bool = setting(False, "with df_source se/both: Sd's loss does not train Se (Sd still reads Se)")
    df_input: str = setting("raw", "with df_source se/both: Se's own features, or its predictions of the teacher's "
                                   "(the same with a ResNet18 teacher)", DF_INPUTS)
    loss: str = setting("pixel_cosine", "per-pixel cosine (STFPM) or one cosine per flattened map (Reverse "
                                        "Distillation)", LOSS_KINDS)
    scale_weights: tuple[float, ...] = setting((1.0, 1.0, 1.0), "loss weight of each pyramid level, finest first",
                                               at_least=0)
    se_weight: float = setting(1.0, "weight of Se's loss in the total", at_least=0)
    sd_weight: float = setting(1.0, "weight of Sd's loss in the total", at_least=0)
    scale_fusion: str = setting("sum", "how a student's per-scale maps combine", SCALE_FUSIONS)
    student_fusion: str = setting("sum", "how the students' maps combine", STUDENT_FUSIONS)
    sigma: float = setting(4.0, "Gaussian smoothing of the map, in input pixels (0: none)", at_least=0, at_most=64)
    score_share: float = setting(0.0, "image score: 0 = the map's maximum; s = the mean of its largest pixels, a "
                                      "share s of the map (a share means the same at every image size)",
                                 at_least=0, at_most=1)
    map_norm: str = setting("zscore", "per student and scale, normalize maps with training-image statistics before "
                                      "fusing (zscore measured best, docs/findings.md)", MAP_NORMS)

    def resolved(self) -> ModelConfig:
        check_values(self)
        if len(self.scale_weights) != N_SCALES:
            raise DskdError(f"scale_weights needs {N_SCALES} values, got {self.scale_weights!r}")
        if (source := self.df_source) == "none" and self.variant not in FORWARD_ONLY:
            raise DskdError(f"variant '{self.variant}' needs df_source 'auto' or one of {', '.join(DF_SOURCES)}, "
                            "not 'none'")
        if source == "auto":
            source = "teacher" if self.variant in INVERTED_ONLY else "se"
        if self.variant in INVERTED_ONLY and source != "teacher":
            raise DskdError(f"variant '{self.variant}' has no forward student, so its DF embedding needs "
                            "df_source='teacher'")
        if self.variant in (*FORWARD_ONLY, "dskd_no_df") and self.df_source in ("teacher", "both"):
            raise DskdError(f"variant '{self.variant}' has no DF embedding to feed; leave df_source at 'auto'")
        if self.variant in FORWARD_ONLY:
            source = "none"
        return dataclasses.replace(self, df_source=source, scale_weights=tuple(map(float, self.scale_weights)))

    @property  # the students this variant trains; the controls' second students are se2 and sd2
    def students(self) -> tuple[str, ...]:
        return {"se_only": ("se",), "sd_only": ("sd",), "dual_se": ("se", "se2"),
                "dual_sd": ("sd", "sd2")}.get(self.variant, ("se", "sd"))


