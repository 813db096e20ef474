"""The DSKD network: a frozen teacher, the forward student Se, the DF embedding and the inverted student Sd.

One configurable module; its variants are the ablation rows (`se_only` ~ STFPM, `sd_only` ~ Reverse
Distillation, `dskd_no_df`, `dskd`). The teacher's pyramid is computed once per batch and shared by both
students, the loss and the maps.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
from torch import nn

from ..errors import DskdError
from .backbones import build_teacher
from .config import N_SCALES, ModelConfig
from .losses import pyramid_loss
from .maps import AnomalyOutput, discrepancy_maps, fuse_native
from .students import STUDENT_CHANNELS, DFEmbedding, ForwardStudent, InvertedStudent, PlainBridge

Pyramid = list[torch.Tensor]


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise DskdError(f"images must be a B x 3 x H x W tensor in [0, 1], got {getattr(images, 'shape', images)}")
    _, c, h, w = images.shape
    if c != 3:
        raise DskdError(f"images need 3 channels (RGB; repeat a grayscale channel), got {c}")
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise DskdError(f"image sides must be multiples of 32 and at least 32 px, got {h} x {w}")


class DSKD(nn.Module):
    def __init__(self, config: ModelConfig, pretrained: bool = True, teacher: nn.Module | None = None) -> None:
        """`teacher`: a frozen teacher shared with other student sets (`dskd.model.cross_fitted`), else built here."""
        super().__init__()
        self.config = config.resolved()
        cfg = self.config
        self.teacher = teacher if teacher is not None else build_teacher(cfg.backbone, pretrained)
        tc = self.teacher.channels
        self.se = ForwardStudent(tc) if "se" in cfg.students else None
        self.se2 = ForwardStudent(tc) if "se2" in cfg.students else None  # dual_se's second forward student
        self.embed: nn.Module | None = None
        self.sd = None
        if "sd" in cfg.students:
            se_channels = STUDENT_CHANNELS if cfg.df_input == "raw" else tc
            source_channels = {"se": se_channels, "teacher": tc,
                               "both": tuple(t + s for t, s in zip(tc, se_channels, strict=True))}[cfg.df_source]
            self.embed = PlainBridge(source_channels) if cfg.variant == "dskd_no_df" else DFEmbedding(source_channels)
            self.sd = InvertedStudent(tc)
        # dual_sd's second inverted student, wired as the first: its own DF embedding of the teacher's pyramid
        self.embed2 = DFEmbedding(tc) if "sd2" in cfg.students else None
        self.sd2 = InvertedStudent(tc) if "sd2" in cfg.students else None
        # Per student and scale: (location, spread) applied to the maps before fusion; identity until fitted.
        norm = torch.zeros(len(cfg.students), 2, N_SCALES)
        norm[:, 1] = 1.0
        self.register_buffer("map_norm_stats", norm)
        self.inference_only = False

    def train(self, mode: bool = True) -> DSKD:
        if mode and self.inference_only:
            raise DskdError("this model was converted with for_inference() (BatchNorm folded) and cannot be trained; "
                            "build or load it again to train")
        return super().train(mode)

    def for_inference(self) -> DSKD:
        """Make maps faster on the same weights: BatchNorm folded into the convolution before it, and
        channels-last memory (oneDNN's fast layout on CPUs). Maps stay equal to float tolerance (tests); the
        model cannot be trained afterwards. Measured gains are in results/benchmarks/speed.md."""
        self.eval()
        fold_batchnorm(self)
        self.to(memory_format=torch.channels_last)
        self.inference_only = True
        return self

    @property
    def students(self) -> tuple[str, ...]:
        return self.config.students

    def student_parameters(self, name: str) -> list[nn.Parameter]:
        """Se's own weights, or Sd's together with the embedding that feeds it (they train as one)."""
        modules = {"se": [self.se], "se2": [self.se2], "sd": [self.embed, self.sd],
                   "sd2": [self.embed2, self.sd2]}[name]
        return [p for m in modules if m is not None for p in m.parameters()]

    def forward(self, images: torch.Tensor, teacher: Pyramid | None = None) -> tuple[Pyramid, dict[str, Pyramid]]:
        """Teacher pyramid and each student's pyramid, all in the teacher's channel space. `teacher`: the pyramid
        of these images computed before (it is frozen: cross-fitting computes it once for all its student sets)."""
        check_images(images)
        if self.inference_only:
            images = images.contiguous(memory_format=torch.channels_last)
        x = self.teacher.normalize(images)
        if teacher is None:
            teacher = self.teacher(x)
        out: dict[str, Pyramid] = {}
        se_raw: Pyramid | None = None
        if self.se is not None:
            se_raw, out["se"] = self.se(x)
        if self.se2 is not None:
            out["se2"] = self.se2(x)[1]
        if self.sd is not None:
            out["sd"] = self.sd(self.embed(self.df_embedding_input(teacher, se_raw, out.get("se"))))
        if self.sd2 is not None:
            out["sd2"] = self.sd2(self.embed2(teacher))
        return teacher, out

    def df_embedding_input(self, teacher: Pyramid, se_raw: Pyramid | None, se_pred: Pyramid | None) -> Pyramid:
        """What the DF embedding reads: where the two students interact.

        `df_source="teacher"`: the teacher's pyramid (Reverse Distillation; no interaction). `"se"`: Se's pyramid,
        its own features (`df_input="raw"`) or its predictions of the teacher's (`"predicted"`), so that Sd rebuilds
        the teacher from what Se saw and Sd's loss also trains Se, unless `df_detach` stops that gradient.
        `"both"`: the teacher's and Se's pyramids concatenated per scale."""
        cfg = self.config
        if cfg.df_source == "teacher":
            return teacher
        seen = se_raw if cfg.df_input == "raw" else se_pred
        if cfg.df_detach:
            seen = [f.detach() for f in seen]
        return seen if cfg.df_source == "se" else [torch.cat(p, 1) for p in zip(teacher, seen, strict=True)]

    def loss(self, images: torch.Tensor, teacher: Pyramid | None = None) -> dict[str, torch.Tensor]:
        teacher, students = self(images, teacher)
        cfg = self.config
        weights = {name: cfg.se_weight if name.startswith("se") else cfg.sd_weight for name in students}
        losses = {name: pyramid_loss(teacher, feats, cfg.scale_weights, cfg.loss) for name, feats in students.items()}
        losses["total"] = sum(weights[n] * v for n, v in losses.items())
        return losses

    def native_maps(self, images: torch.Tensor, teacher: Pyramid | None = None) -> dict[str, list[torch.Tensor]]:
        """Student name -> per scale, B x 1 x h x w raw discrepancy at the scale's own resolution."""
        return discrepancy_maps(*self(images, teacher))

    def map_norm(self) -> dict[str, torch.Tensor] | None:
        if self.config.map_norm == "none":
            return None
        return {name: self.map_norm_stats[i] for i, name in enumerate(self.students)}

    def fuse(self, native: dict[str, list[torch.Tensor]], size: tuple[int, int],
             scales: list[int] | None = None, valid: torch.Tensor | None = None,
             keep_students: bool = True) -> AnomalyOutput:
        """Native per-scale maps -> the model's fused, smoothed map and score (its own fusion settings);
        `valid` (B x H x W bool) keeps padding out of the score; `keep_students=False` skips the per-student maps
        (the faster path of exports and prediction, same map)."""
        cfg = self.config
        return fuse_native(native, size, keep_students=keep_students, scale_fusion=cfg.scale_fusion,
                           student_fusion=cfg.student_fusion, sigma=cfg.sigma, scales=scales,
                           score_share=cfg.score_share, norm=self.map_norm(), valid=valid)

    def anomaly_map(self, images: torch.Tensor, scales: list[int] | None = None,
                    valid: torch.Tensor | None = None, keep_students: bool = True) -> AnomalyOutput:
        return self.fuse(self.native_maps(images), images.shape[-2:], scales, valid, keep_students)


def _fold_into(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> None:
    """conv followed by bn (eval mode) as one conv: scale each output channel's weights, absorb the shift."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    out_dim = 1 if isinstance(conv, nn.ConvTranspose2d) else 0  # ConvTranspose2d weights are in x out x kh x kw
    shape = [1] * conv.weight.ndim
    shape[out_dim] = -1
    bias = shift if conv.bias is None else conv.bias.detach() * scale + shift
    with torch.no_grad():
        conv.weight.mul_(scale.view(shape))
    conv.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every plain BatchNorm2d that directly follows a convolution into it; returns how many were folded.

    Two patterns are recognized, both of which feed the convolution's output to nothing but the norm:
    consecutive children of an nn.Sequential, and the ResNet block convention `convK` -> `bnK` (ours and
    torchvision's). Anything else (timm's BatchNormAct2d, a norm after a sum) is left as it is.
    """
    convs = (nn.Conv2d, nn.ConvTranspose2d)
    folded = 0
    for parent in list(module.modules()):
        names = [n for n, _ in parent.named_children()]
        pairs: list[tuple[str, str]] = []
        if isinstance(parent, nn.Sequential):
            pairs += list(zip(names, names[1:], strict=False))
        pairs += [(n, f"bn{n[4:]}") for n in names if n[:4] == "conv" and n[4:].isdigit() and f"bn{n[4:]}" in names]
        for conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            if isinstance(conv, convs) and type(bn) is nn.BatchNorm2d and conv.groups == 1:
                if bn.training:
                    raise DskdError("fold_batchnorm needs the model in eval mode (running statistics); call .eval()")
                _fold_into(conv, bn)
                setattr(parent, bn_name, nn.Identity())
                folded += 1
    return folded


def build_model(backbone: str = "efficientnet_lite0", variant: str = "dskd", pretrained: bool = True,
                **options: Any) -> DSKD:
    """Build a DSKD model; `options` are any `ModelConfig` fields (df_source, loss, scale_fusion, ...)."""
    known = {f.name for f in fields(ModelConfig)} - {"backbone", "variant"}
    unknown = set(options) - known
    if unknown:
        raise DskdError(f"unknown model option(s) {sorted(unknown)}; allowed: {', '.join(sorted(known))}")
    return DSKD(ModelConfig(backbone=backbone, variant=variant, **options), pretrained=pretrained)


def count_parameters(model: nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen}
