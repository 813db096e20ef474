import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dskd
from dskd.model.backbones import (
    OFFLINE_LITES,
    build_imagenet_classifier,
    build_teacher,
    efficientnet_lite_weights,
    get_spec,
)


@pytest.mark.parametrize("name", dskd.list_backbones())
def test_teacher_pyramid_strides_channels_and_frozen(name):
    teacher = build_teacher(name, pretrained=name.startswith("efficientnet_lite"))
    teacher.train()  # must be ignored
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    x = torch.rand(2, 3, 64, 96, requires_grad=True)
    feats = teacher(teacher.normalize(x))
    assert [f.shape[1] for f in feats] == list(get_spec(name).channels)
    assert [(f.shape[2], f.shape[3]) for f in feats] == [(64 // s, 96 // s) for s in (4, 8, 16)]
    assert all(not f.requires_grad for f in feats)


@pytest.mark.parametrize(("k", "side"), [(0, 224), (1, 240), (2, 260)])  # each one's ImageNet input size
def test_offline_teachers_are_imagenet_trained(k, side):
    skimage_data = pytest.importorskip("skimage.data")
    net = build_imagenet_classifier(f"efficientnet_lite{k}")
    img = torch.from_numpy(np.asarray(skimage_data.chelsea())).permute(2, 0, 1).float().div(255)[None]
    x = (F.interpolate(img, size=(side, side), mode="bilinear", antialias=True) - 0.5) / 0.5
    with torch.no_grad():
        top1 = net(x).argmax(1).item()
    assert top1 == 285  # ImageNet's "Egyptian cat"


def test_offline_weights_check_every_shape(monkeypatch):
    assert OFFLINE_LITES == (0, 1, 2)
    weights = efficientnet_lite_weights(0)
    assert len(weights) == 296
    real_load = torch.load

    def corrupted(*args, **kwargs):
        sd = real_load(*args, **kwargs)
        key = list(sd)[5]
        sd[key] = torch.zeros(3, 3)
        return sd

    monkeypatch.setattr(torch, "load", corrupted)
    with pytest.raises(ValueError, match="does not fit"):
        efficientnet_lite_weights(2)


def test_resnet18_offline_error_names_cache_and_alternative(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network disabled by the test")

    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    with pytest.raises(dskd.DskdError) as err:
        build_teacher("resnet18", pretrained=True)
    msg = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints") in msg and "efficientnet_lite0" in msg and "\n" not in msg


def test_unknown_backbone():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        build_teacher("vgg16")
