"""The two students and the deep-feature (DF) embedding between them.

Our reconstruction of DSKD from its abstract and its two parents (docs/architecture.md):
- Se, the forward student, is STFPM's student: a ResNet18-shaped encoder trained from scratch.
- The DF embedding is Reverse Distillation's one-class bottleneck: it fuses a three-level pyramid into one
  compact code. Fed by Se's pyramid (`df_source="se"`), it is where the two students interact.
- Sd, the inverted student, is Reverse Distillation's decoder: it mirrors ResNet18 from layer3 back to layer1.
All students are ResNet18-sized (64/128/256 channels); 1x1 heads map to the teacher's channels when they differ.
"""

from __future__ import annotations

import torch
from torch import nn

STUDENT_CHANNELS = (64, 128, 256)


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet's two-conv residual block; `up=True` makes the stride a 2x upsampling (transposed conv)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, up: bool = False) -> None:
        super().__init__()
        if up and stride == 2:
            first: nn.Module = nn.ConvTranspose2d(c_in, c_out, 2, 2, bias=False)
            shortcut: nn.Module = nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 2, 2, bias=False),
                                                nn.BatchNorm2d(c_out))
        else:
            first = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            shortcut = (_conv_bn(c_in, c_out, 1, stride, relu=False) if stride != 1 or c_in != c_out
                        else nn.Identity())
        self.conv1, self.bn1 = first, nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.shortcut = shortcut
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _stage(c_in: int, c_out: int, stride: int, up: bool = False) -> nn.Sequential:
    return nn.Sequential(BasicBlock(c_in, c_out, stride, up), BasicBlock(c_out, c_out))


class Heads(nn.Module):
    """1x1 convs from the student's channels to the teacher's, one per scale; identity where they match."""

    def __init__(self, c_student: tuple[int, ...], c_teacher: tuple[int, ...]) -> None:
        super().__init__()
        self.maps = nn.ModuleList(
            nn.Identity() if cs == ct else nn.Conv2d(cs, ct, 1) for cs, ct in zip(c_student, c_teacher, strict=True)
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [head(f) for head, f in zip(self.maps, feats, strict=True)]


class ForwardStudent(nn.Module):
    """Se: stem, layer1..layer3 of a ResNet18 from random init; returns (raw pyramid, pyramid in teacher space)."""

    def __init__(self, teacher_channels: tuple[int, int, int]) -> None:
        super().__init__()
        c1, c2, c3 = STUDENT_CHANNELS
        self.stem = nn.Sequential(_conv_bn(3, c1, 7, 2), nn.MaxPool2d(3, 2, 1))
        self.layer1, self.layer2, self.layer3 = _stage(c1, c1, 1), _stage(c1, c2, 2), _stage(c2, c3, 2)
        self.heads = Heads(STUDENT_CHANNELS, teacher_channels)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        raw = [f1, f2, self.layer3(f2)]
        return raw, self.heads(raw)


class DFEmbedding(nn.Module):
    """Fuses a pyramid (strides 4/8/16) into one code at stride 32 (Reverse Distillation's OCBE, resized).

    Each finer level is brought to stride 16 by strided 3x3 conv+BN+ReLU, the three are concatenated, and a
    residual stage of two BasicBlocks (the first with stride 2) compresses them to `out_channels`.
    """

    def __init__(self, in_channels: tuple[int, int, int], width: int = 256, out_channels: int = 512) -> None:
        super().__init__()
        c1, c2, c3 = in_channels
        self.down1 = nn.Sequential(_conv_bn(c1, width // 2, 3, 2), _conv_bn(width // 2, width, 3, 2))
        self.down2 = _conv_bn(c2, width, 3, 2)
        self.proj3 = _conv_bn(c3, width, 1) if c3 != width else nn.Identity()
        self.fuse = _stage(3 * width, out_channels, 2)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = feats
        return self.fuse(torch.cat([self.down1(f1), self.down2(f2), self.proj3(f3)], dim=1))


class PlainBridge(nn.Module):
    """The `dskd_no_df` ablation: one strided conv from the deepest map, no multi-scale fusion, no residual stage."""

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int = 512) -> None:
        super().__init__()
        self.conv = _conv_bn(in_channels[-1], out_channels, 3, 2)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(feats[-1])


class InvertedStudent(nn.Module):
    """Sd: a ResNet18 decoder, layer3 -> layer1, each stage doubling the resolution with a transposed conv."""

    def __init__(self, teacher_channels: tuple[int, int, int], in_channels: int = 512) -> None:
        super().__init__()
        c1, c2, c3 = STUDENT_CHANNELS
        self.layer3 = _stage(in_channels, c3, 2, up=True)
        self.layer2 = _stage(c3, c2, 2, up=True)
        self.layer1 = _stage(c2, c1, 2, up=True)
        self.heads = Heads(STUDENT_CHANNELS, teacher_channels)

    def forward(self, code: torch.Tensor) -> list[torch.Tensor]:
        f3 = self.layer3(code)
        f2 = self.layer2(f3)
        return self.heads([self.layer1(f2), f2, f3])
