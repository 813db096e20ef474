"""The models the speed benchmarks compare, each behind one interface: a training step and an inference call (map
included). dskd's variants as its engine runs them; `dskd_plain`, dskd without the engine's speed conversions; and,
when installed, anomalib's Stfpm and ReverseDistillation as their library ships them."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

DSKD_MODELS = ("dskd", "se_only", "sd_only")
# dskd without the engine's speed conversions: maps from the training-form network (NCHW, BatchNorm separate) and
# optimizers that loop over tensors; what those conversions buy, measured beside them.
PLAIN = "dskd_plain"
ANOMALIB_MODELS = ("anomalib_stfpm", "anomalib_reverse_distillation")


def library_recipe(params, student: str) -> torch.optim.Optimizer:
    """The parents' recipes as their libraries run them (one loop over tensors): SGD for forward students, Adam
    for decoders. dskd's engine runs the same recipes fused."""
    params = list(params)
    if student == "se":
        return torch.optim.SGD(params, lr=0.4, momentum=0.9, weight_decay=1e-4)
    return torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.999))


@dataclass
class Bench:
    name: str
    model: torch.nn.Module
    loss_fn: Callable[[torch.Tensor], torch.Tensor]
    infer_model: torch.nn.Module
    infer_fn: Callable[[torch.Tensor], torch.Tensor]
    optims: list[torch.optim.Optimizer]

    def train_step(self, x: torch.Tensor) -> None:
        self.model.train()
        loss = self.loss_fn(x)
        for opt in self.optims:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optims:
            opt.step()

    @torch.inference_mode()
    def infer(self, x: torch.Tensor) -> torch.Tensor:
        self.infer_model.eval()
        return self.infer_fn(x)

    def params(self) -> tuple[int, int]:
        ps = list(self.model.parameters())
        return sum(p.numel() for p in ps if p.requires_grad), sum(p.numel() for p in ps if not p.requires_grad)

    def gflops(self, x1: torch.Tensor) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.infer(x1)
        return counter.get_total_flops() / 1e9

    def train_gflops(self, x: torch.Tensor) -> float:
        """Forward and backward GFLOPs per training image (what a training step must compute)."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.train_step(x)
        return counter.get_total_flops() / 1e9 / len(x)


def _dskd(name: str, backbone: str, image_size: int) -> Bench:
    import dskd
    from dskd.run.config import RD_ADAM, STFPM_SGD

    plain = name == PLAIN
    model = dskd.build_model(backbone, "dskd" if plain else name, pretrained=False)
    groups = [(model.student_parameters(s), s) for s in model.students]
    if plain:
        optims = [library_recipe(params, student) for params, student in groups]
    else:  # exactly what dskd's engine trains with
        optims = [(STFPM_SGD if s == "se" else RD_ADAM).build(params) for params, s in groups]
    # what exports and prediction run: BatchNorm folded, students and scales summed before the upsampling; the
    # plain form keeps the training-form network and its per-student maps
    infer_model = model if plain else copy.deepcopy(model).for_inference()
    return Bench(name, model, lambda x: model.loss(x)["total"], infer_model,
                 lambda x: infer_model.anomaly_map(x, keep_students=plain).map, optims)


def _anomalib_stfpm(name: str, backbone: str, image_size: int) -> Bench:
    from anomalib.models.image.stfpm import torch_model as stfpm
    from anomalib.models.image.stfpm.loss import STFPMLoss

    real = stfpm.TimmFeatureExtractor
    stfpm.TimmFeatureExtractor = lambda **kw: real(**{**kw, "pre_trained": False})  # offline teacher
    try:
        model = stfpm.STFPMModel(layers=["layer1", "layer2", "layer3"], backbone=backbone)
    finally:
        stfpm.TimmFeatureExtractor = real
    loss = STFPMLoss()
    return Bench(name, model, lambda x: loss(*model(x)), model, lambda x: model(x).anomaly_map,
                 [library_recipe(model.student_model.parameters(), "se")])


def _anomalib_rd(name: str, backbone: str, image_size: int) -> Bench:
    from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
    from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

    model = ReverseDistillationModel(backbone=backbone, input_size=(image_size, image_size),
                                     layers=["layer1", "layer2", "layer3"],
                                     anomaly_map_mode=AnomalyMapGenerationMode.ADD, pre_trained=False)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    loss = ReverseDistillationLoss()
    params = [*model.decoder.parameters(), *model.bottleneck.parameters()]
    return Bench(name, model, lambda x: loss(*model(x)), model, lambda x: model(x).anomaly_map,
                 [library_recipe(params, "sd")])


BUILDERS = {**dict.fromkeys((*DSKD_MODELS, PLAIN), _dskd), "anomalib_stfpm": _anomalib_stfpm,
            "anomalib_reverse_distillation": _anomalib_rd}


def build_bench(name: str, backbone: str, image_size: int) -> Bench:
    if name not in BUILDERS:
        raise ValueError(f"unknown model '{name}'; known: {', '.join(BUILDERS)}")
    return BUILDERS[name](name, backbone, image_size)
