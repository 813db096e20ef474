"""Every setting in one place: dataclasses with the defaults, and profiles as small overrides of them.

`ModelConfig` describes the network and its maps; `RunConfig` adds the data and the training recipe.
A run's identity is the hash of its `RunConfig`, so re-running a notebook finds the run it already trained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import DskdError

VARIANTS = ("dskd", "se_only", "sd_only", "dskd_no_df")
DF_SOURCES = ("se", "teacher", "both")
DF_INPUTS = ("raw", "predicted")
MAP_NORMS = ("none", "zscore", "mean")
OPTIMIZERS = ("sgd", "adam")
FIT_MODES = ("stretch", "pad")
LR_SCHEDULES = ("constant", "cosine")


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise DskdError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    variant: str = "dskd"
    # Which pyramid feeds the DF embedding: "se" lets the students interact (DSKD), "teacher" is Reverse
    # Distillation's arrangement, "both" concatenates the two per scale (Sd reads the teacher's knowledge and what
    # Se made of the image; Sd's loss still trains Se). "auto" resolves to "teacher" for sd_only and "se" otherwise.
    df_source: str = "auto"
    # With df_source="se" or "both": stop Sd's gradient at the DF input, so that Se trains on its own loss only
    # while Sd still decodes from Se's features (False: Sd's loss also trains Se).
    df_detach: bool = False
    # With df_source="se" or "both": what of Se's the DF embedding reads. "raw": its own features (64/128/256
    # channels); "predicted": its predictions of the teacher's features (after the 1x1 heads), the features that
    # are matched to the teacher. With a ResNet18 teacher the heads are identities and the two are the same.
    df_input: str = "raw"
    loss: str = "pixel_cosine"  # or "flat_cosine" (Reverse Distillation's)
    scale_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    se_weight: float = 1.0
    sd_weight: float = 1.0
    scale_fusion: str = "sum"  # sum | mean | product
    student_fusion: str = "sum"  # sum | mean | max
    sigma: float = 4.0  # Gaussian smoothing of the map, in pixels of the input
    score_topk: int = 0  # 0: image score = max of the map; k: mean of its k largest pixels
    # Per student and scale, (m - mean) / std with statistics of the training images, so that students and scales
    # with different ranges weigh alike when fused (none | zscore | mean). zscore measured best (docs/findings.md).
    map_norm: str = "zscore"

    def resolved(self) -> ModelConfig:
        from .backbones import get_spec
        from .losses import LOSS_KINDS
        from .maps import SCALE_FUSIONS, STUDENT_FUSIONS

        get_spec(self.backbone)
        _choice("variant", self.variant, VARIANTS)
        _choice("df_source", self.df_source, ("auto", *DF_SOURCES, "none"))  # "none": se_only, once resolved
        _choice("loss", self.loss, LOSS_KINDS)
        _choice("scale_fusion", self.scale_fusion, SCALE_FUSIONS)
        _choice("student_fusion", self.student_fusion, STUDENT_FUSIONS)
        _choice("map_norm", self.map_norm, MAP_NORMS)
        _choice("df_input", self.df_input, DF_INPUTS)
        if len(self.scale_weights) != 3:
            raise DskdError(f"scale_weights needs 3 values, got {self.scale_weights!r}")
        source = self.df_source
        if source == "none" and self.variant != "se_only":
            raise DskdError(f"variant '{self.variant}' needs df_source 'auto' or one of {', '.join(DF_SOURCES)}, "
                            "not 'none'")
        if source == "auto":
            source = "teacher" if self.variant == "sd_only" else "se"
        if self.variant == "sd_only" and source != "teacher":
            raise DskdError("variant 'sd_only' has no forward student, so its DF embedding needs df_source='teacher'")
        if self.variant in ("se_only", "dskd_no_df") and self.df_source in ("teacher", "both"):
            raise DskdError(f"variant '{self.variant}' has no DF embedding to feed; leave df_source at 'auto'")
        if self.variant == "se_only":
            source = "none"
        return dataclasses.replace(self, df_source=source, scale_weights=tuple(map(float, self.scale_weights)))

    @property
    def students(self) -> tuple[str, ...]:
        return {"dskd": ("se", "sd"), "se_only": ("se",), "sd_only": ("sd",), "dskd_no_df": ("se", "sd")}[
            self.variant]


# Fields added after runs had been published, with the value those runs implicitly had: left out of a run's
# fingerprint while at that value, so that earlier runs keep their names.
FIELDS_ADDED_LATER: dict[tuple[str, ...], Any] = {("model", "df_input"): "raw", ("lr_schedule",): "constant",
                                                  ("recalibrate_bn",): False}


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"
    lr: float = 0.005
    betas: tuple[float, float] = (0.5, 0.999)
    momentum: float = 0.9
    weight_decay: float = 0.0


# The parents' published recipes: STFPM trains its student with SGD, Reverse Distillation its decoder with Adam.
STFPM_SGD = OptimConfig(name="sgd", lr=0.4, momentum=0.9, weight_decay=1e-4)
RD_ADAM = OptimConfig(name="adam", lr=0.005, betas=(0.5, 0.999))


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: str = "synthetic"
    category: str = "stripes"
    data_root: str = "results/data"
    image_size: int = 256
    fit_mode: str = "stretch"  # how non-square images reach the square input: stretch, or pad (no distortion)
    split_file: str | None = None
    epochs: int = 10
    batch_size: int = 8
    se_optim: OptimConfig = STFPM_SGD
    sd_optim: OptimConfig = RD_ADAM
    # "cosine": every learning rate decays to 0 over the run (per step); "constant": the parents' recipes.
    lr_schedule: str = "constant"
    # After the last epoch, re-estimate the students' BatchNorm statistics over the training images with the final
    # weights: the running averages trail weights that moved until the last step, which matters at short budgets.
    recalibrate_bn: bool = True
    seed: int = 0
    device: str = "auto"
    profile: str = "custom"

    def validate(self) -> RunConfig:
        model = self.model.resolved()
        _choice("fit_mode", self.fit_mode, FIT_MODES)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        for opt in (self.se_optim, self.sd_optim):
            _choice("optimizer", opt.name, OPTIMIZERS)
            if not opt.lr > 0:
                raise DskdError(f"learning rate must be positive, got {opt.lr}")
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        if self.image_size < 32 or self.image_size % 32:
            raise DskdError(f"image_size={self.image_size} must be a multiple of 32 and at least 32")
        if self.epochs < 1 or self.batch_size < 1:
            raise DskdError(f"epochs ({self.epochs}) and batch_size ({self.batch_size}) must be at least 1")
        return dataclasses.replace(self, model=model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        model = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("model").items()})
        opts = {k: OptimConfig(**{kk: tuple(vv) if isinstance(vv, list) else vv for kk, vv in d.pop(k).items()})
                for k in ("se_optim", "sd_optim")}
        return cls(model=model, **opts, **d)

    def fingerprint(self) -> str:
        """Hash of what determines the trained weights (not the device, which only changes speed)."""
        d = self.to_dict()
        d.pop("device")
        d.pop("profile")
        for path, default in FIELDS_ADDED_LATER.items():
            *parents, key = path
            holder = d
            for p in parents:
                holder = holder[p]
            if holder[key] == default:
                del holder[key]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def run_name(self) -> str:
        m = self.model
        src = "" if m.variant != "dskd" or m.df_source in ("se", "auto") else f"-df{m.df_source}"
        src += "-dfpred" if m.df_input == "predicted" and m.df_source in ("se", "both") else ""
        src += "-detach" if m.df_detach and m.variant != "sd_only" else ""
        return (f"{self.dataset}-{self.category}-{m.backbone}-{m.variant}{src}-{self.image_size}px-"
                f"e{self.epochs}-s{self.seed}-{self.fingerprint()}")

    def with_overrides(self, **overrides: Any) -> RunConfig:
        """Override run or model fields by name (None values are ignored); `lr` sets both students' rates."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        model_keys = {f.name for f in fields(ModelConfig)}
        run_keys = {f.name for f in fields(RunConfig)} - {"model"}
        cfg = self
        if "lr" in overrides:
            lr = float(overrides.pop("lr"))
            cfg = dataclasses.replace(cfg, se_optim=dataclasses.replace(cfg.se_optim, lr=lr),
                                      sd_optim=dataclasses.replace(cfg.sd_optim, lr=lr))
        unknown = set(overrides) - model_keys - run_keys
        if unknown:
            raise DskdError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(model_keys | run_keys | {'lr'})}")
        model = dataclasses.replace(cfg.model, **{k: v for k, v in overrides.items() if k in model_keys})
        return dataclasses.replace(cfg, model=model, **{k: v for k, v in overrides.items() if k in run_keys})


# Profiles are small overrides of the defaults above.
PROFILES: dict[str, dict[str, Any]] = {
    # The offline demo: synthetic textures, small images, a few epochs; every table within minutes on a CPU.
    "demo": dict(dataset="synthetic", backbone="efficientnet_lite0", image_size=128, epochs=3, batch_size=8),
    # Real data on a CPU with the offline teacher, sized so that the 3-seed, 5-configuration MT Defects benchmark
    # trains within an hour on 2 cores. At that budget the students' convergence matters more than resolution:
    # 64 px x 6 epochs beat 96 px x 4 and 128 px x 3 on image and pixel AUROC, at a cost in AUPRO (maps 4x coarser;
    # docs/findings.md section 7); 8 epochs is what the hour holds at 64 px (section 11). Pass --image-size 128 or
    # larger where small defects matter.
    "quick": dict(backbone="efficientnet_lite0", image_size=64, epochs=8, batch_size=8),
    # The paper's teacher; the training recipe is Reverse Distillation's (the DSKD paper's own is not available).
    "paper": dict(backbone="resnet18", image_size=256, epochs=200, batch_size=16, se_optim=RD_ADAM, sd_optim=RD_ADAM),
    # For the test suite only: the smallest run that exercises every code path.
    "test": dict(dataset="synthetic", backbone="efficientnet_lite0", image_size=64, epochs=1, batch_size=8),
}


def profile_config(name: str, **overrides: Any) -> RunConfig:
    if name not in PROFILES:
        raise DskdError(f"unknown profile '{name}'; choose one of {', '.join(PROFILES)}")
    return RunConfig(profile=name).with_overrides(**PROFILES[name]).with_overrides(**overrides)
