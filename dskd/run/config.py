"""A run's settings: dataclasses whose fields carry their default, choices and one-line help.

`ModelConfig` (`dskd.model.config`) describes the network and its maps, `OptimConfig` one student's optimizer, and
`RunConfig` adds the data and the training recipe. The command line's flags are generated from these fields
(`dskd.cli`), profiles (`dskd.run.profiles`) are small overrides of them, and a run's identity is the hash of its
`RunConfig` (precision included), so re-running a notebook finds the run it already trained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DskdError
from ..model.config import ModelConfig
from ..settings import check_values, setting

if TYPE_CHECKING:
    import torch

OPTIMIZERS = ("sgd", "adam")
FIT_MODES = ("stretch", "pad")
LR_SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def _datasets() -> list[str]:
    from ..data import DATASETS

    return list(DATASETS)


@dataclass(frozen=True)
class OptimConfig:
    name: str = setting("adam", "optimizer", OPTIMIZERS)
    lr: float = setting(0.005, "learning rate", above=0)
    betas: tuple[float, ...] = setting((0.5, 0.999), "Adam's betas", at_least=0, below=1)
    momentum: float = setting(0.9, "SGD's momentum", at_least=0, at_most=1)
    weight_decay: float = setting(0.0, "weight decay", at_least=0)

    def build(self, params) -> torch.optim.Optimizer:
        """The optimizer of this recipe over `params` (PyTorch is imported here: the settings themselves need none)."""
        import torch

        # One fused kernel per step instead of a loop over tensors: it saved about 8% of a 64 px CPU step in one A/B
        # here; at 256 px the optimizer is under 1% of a step (results/benchmarks/speed.md).
        params = list(params)
        fused = {"fused": True} if params and params[0].device.type in ("cpu", "cuda") else {}
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, **fused)
        return torch.optim.Adam(params, lr=self.lr, betas=tuple(self.betas), weight_decay=self.weight_decay, **fused)

    def cosine_rate(self, progress: float) -> float:
        """The rate after `progress` (0 to 1) of a run under `lr_schedule="cosine"`: half a cosine from the recipe's
        rate to 0, a function of the step alone, so resuming needs no state."""
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr * factor


# The parents' published recipes: STFPM trains its student with SGD, Reverse Distillation its decoder with Adam.
STFPM_SGD = OptimConfig(name="sgd", lr=0.4, momentum=0.9, weight_decay=1e-4)
RD_ADAM = OptimConfig(name="adam", lr=0.005, betas=(0.5, 0.999))

# Fields added after runs had been published, with the value those runs implicitly had: left out of a run's
# fingerprint at that value, so earlier runs keep their names (earlier CUDA runs, in bfloat16, get new ones).
FIELDS_ADDED_LATER: dict[tuple[str, ...], Any] = {("model", "df_input"): "raw", ("lr_schedule",): "constant",
                                                  ("recalibrate_bn",): False, ("precision",): "float32",
                                                  ("val_fraction",): 0.0, ("max_false_alarm",): 0.01,
                                                  ("folds",): 1, ("fold",): None, ("model", "score_share"): 0.0,
                                                  ("max_epochs",): 0}
# The stopping rule's settings matter only when it is on (max_epochs > 0), and the fixed epoch count only when it is
# off: each is left out of the fingerprint where it changes nothing.
STOPPING_FIELDS = ("stop_patience", "stop_min_improvement")
# A field replaced by another, with the value every run before the change hashed: the image score's pixel count
# became a share of the map (the same at every image size); a count k reads back as k / image_size².
FIELDS_RETIRED: dict[tuple[str, ...], Any] = {("model", "score_topk"): 0}


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = setting(help="the network and its maps", factory=ModelConfig)
    dataset: str = setting("synthetic", "dataset layout", _datasets)
    category: str = setting("stripes", "category of the dataset (required for multi-category datasets)")
    data_root: str = setting("results/data", "the dataset's folder, or a folder holding several")
    image_size: int = setting(256, "side of the square network input, a multiple of 32", at_least=32, at_most=1024,
                              multiple_of=32, why="the teachers' coarsest stride is 32; memory grows with the side's "
                              "square, and 1024 px, 16 times the activations of 256 px, is the largest this suite "
                              "allows")
    fit_mode: str = setting("stretch", "non-square images: stretch, or pad (no distortion)", FIT_MODES)
    split_file: str | None = setting(None, "MT Defects: list of MT_Free images to train on (DifferNet's)")
    epochs: int = setting(10, "training epochs, exactly (turns the stopping rule off)", at_least=1)
    max_epochs: int = setting(0, "the stopping rule: train until the loss on the held-out good images stops "
                                 "improving, at most this many epochs; 0: train exactly --epochs", at_least=0,
                              at_most=10_000)
    stop_patience: int = setting(3, "the stopping rule: stop after this many epochs without an improvement of the "
                                    "held-out loss", at_least=1)
    stop_min_improvement: float = setting(0.01, "the stopping rule: the share by which the held-out loss must fall "
                                                "below its best to count as an improvement", at_least=0, below=1)
    batch_size: int = setting(8, "training batch size", at_least=2,
                              why="the students' BatchNorm needs at least 2 images in a training step")
    se_optim: OptimConfig = setting(help="Se's optimizer (STFPM's SGD recipe)", factory=lambda: STFPM_SGD)
    sd_optim: OptimConfig = setting(help="Sd's and the DF embedding's optimizer (Reverse Distillation's)",
                                  factory=lambda: RD_ADAM)
    lr_schedule: str = setting("constant", "constant: the parents' recipes; cosine: every rate decays to 0 per step",
                               LR_SCHEDULES)
    recalibrate_bn: bool = setting(True, "after training, re-estimate the students' BatchNorm statistics under the "
                                         "final weights (they trail weights that moved until the last step)")
    val_fraction: float = setting(0.1, "share of the good training images held out, seeded, to set the decision "
                                       "threshold (at least 8 images; never trained on); 0: none, the threshold then "
                                       "comes from the training images", at_least=0, below=0.5)
    target_false_alarm: float = setting(0.01, "the false-alarm target: the rate of good images the decision may "
                                              "flag, set on the held-out images (image scores and, for outlines, "
                                              "pixels)", above=0, below=1, former="max_false_alarm")
    folds: int = setting(1, "cross-fitting: K student sets on one teacher, each trained on every good image but one "
                            "fold, so that every good image sets the threshold, scored by a set that never saw it "
                            "(docs/deploy.md); 1: one model and the validation split", at_least=1, at_most=10,
                         why="each fold costs one more training; 10 folds already train each set on 90 % of the "
                             "images")
    fold: int | None = setting(None, "which fold a cross-fitted run's student set leaves out (set by training)",
                               cli=False, at_least=0)
    seed: int = setting(0, "random seed (weights, batch order, the validation hold-out and the folds)", at_least=0,
                        at_most=2**32 - 1)
    device: str = setting("auto", "where to train; not part of the run's identity", DEVICES)
    precision: str = setting("auto", "arithmetic of training and maps; auto: float32 on every device (README)",
                             PRECISIONS)
    profile: str = setting("custom", "the profile these settings started from", cli=False)
    size_from: str = setting("given", "where image_size and epochs came from: given (a profile or a flag), or the "
                                      "dataset's own for its kind of image (DatasetSpec.quick)", cli=False)

    def validate(self) -> RunConfig:
        """The settings checked against their fields' metadata (`dskd.settings.check_values`), model resolved."""
        for part in (self, self.se_optim, self.sd_optim):
            if not is_dataclass(part):
                raise DskdError(f"optimizer settings must be a mapping of their fields, not {part!r}")
            check_values(part)
        if self.fold is not None and self.fold >= self.folds:
            raise DskdError(f"fold {self.fold} does not exist among {self.folds} folds")
        if not isinstance(self.model, ModelConfig):
            raise DskdError(f"model settings must be a mapping of their fields, not {self.model!r}")
        return dataclasses.replace(self, model=self.model.resolved())

    @property
    def cross_fitted(self) -> bool:
        """A cross-fitted run: K student sets (not one of them, which has its `fold`)."""
        return self.folds > 1 and self.fold is None

    def with_device(self, device_type: str) -> RunConfig:
        """The concrete precision for a device: `auto` is float32 on every device (README: why), so a run's
        identity never depends on where it trained."""
        if self.precision == "auto":
            return dataclasses.replace(self, precision="float32")
        if self.precision == "float16" and device_type == "cpu":
            raise DskdError("precision float16 needs a CUDA device; use float32 or bfloat16 on the CPU")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        def build(kind: type, values: dict[str, Any]) -> Any:
            return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

        nested = {"model": ModelConfig, "se_optim": OptimConfig, "sd_optim": OptimConfig}
        d = {**{k[0]: v for k, v in FIELDS_ADDED_LATER.items() if len(k) == 1}, **d}  # what older runs implied
        d = {FORMER_NAMES.get(k, k): v for k, v in d.items()}
        if "score_topk" in d.get("model", {}):
            model = dict(d["model"])
            count = model.pop("score_topk")
            d = {**d, "model": {"score_share": count / int(d.get("image_size", 256)) ** 2 if count else 0.0, **model}}
        return cls(**{k: build(nested[k], v) if k in nested else v for k, v in d.items()})

    def fingerprint(self) -> str:
        """Hash of what determines a run's weights, maps and metrics (map settings too), not of its device."""
        d = {RENAMED_TO.get(k, k): v for k, v in self.with_device("any").to_dict().items()
             if k not in ("device", "profile", "size_from")}  # a renamed field hashes under its former name
        for (*parents, key), default in FIELDS_ADDED_LATER.items():
            holder = d[parents[0]] if parents else d
            if holder[key] == default:
                del holder[key]
        for (*parents, key), value in FIELDS_RETIRED.items():
            (d[parents[0]] if parents else d)[key] = value
        for key in ("epochs",) if self.max_epochs else STOPPING_FIELDS:
            del d[key]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def run_name(self) -> str:
        m = self.model
        src = "" if m.variant != "dskd" or m.df_source in ("se", "auto") else f"-df{m.df_source}"
        src += "-dfpred" if m.df_input == "predicted" and m.df_source in ("se", "both") else ""
        src += "-detach" if m.df_detach and m.variant != "sd_only" else ""
        return (f"{self.dataset}-{self.category}-{m.backbone}-{m.variant}{src}-{self.image_size}px-"
                f"{self.epoch_words()}-s{self.seed}{f'-k{self.folds}' if self.folds > 1 else ''}-{self.fingerprint()}")

    def epoch_words(self) -> str:
        """How long the run trains, as its name says it: `e21` (exactly 21), `emax40` (the stopping rule, at most
        40)."""
        return f"e{self.epochs}" if not self.max_epochs else f"emax{self.max_epochs}"

    @property
    def epoch_budget(self) -> int:
        """The most epochs this run can train."""
        return self.max_epochs or self.epochs

    def with_overrides(self, **overrides: Any) -> RunConfig:
        """Override run or model fields by name (None values are ignored); `lr` sets both students' rates, and
        `se_optim_lr`-style names set one field of one optimizer. An epoch count without `max_epochs` turns the
        stopping rule off: `--epochs N` always trains exactly N."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "epochs" in overrides and "max_epochs" not in overrides:
            overrides["max_epochs"] = 0
        model_keys = {f.name for f in fields(ModelConfig)}
        run_keys = {f.name for f in fields(RunConfig)} - {"model"}
        optims = {name: getattr(self, name) for name in ("se_optim", "sd_optim")}
        if "lr" in overrides:
            lr = float(overrides.pop("lr"))
            optims = {k: dataclasses.replace(v, lr=lr) for k, v in optims.items()}
        for key in [k for k in overrides if k.startswith(("se_optim_", "sd_optim_"))]:
            name, sub = key[:8], key[9:]
            if sub not in {f.name for f in fields(OptimConfig)}:
                raise DskdError(f"unknown optimizer setting '{key}'")
            optims[name] = dataclasses.replace(optims[name], **{sub: overrides.pop(key)})
        optims.update({k: overrides.pop(k) for k in list(overrides) if k in optims})
        unknown = set(overrides) - model_keys - run_keys
        if unknown:
            raise DskdError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(model_keys | run_keys | {'lr'})}")
        model = dataclasses.replace(self.model, **{k: v for k, v in overrides.items() if k in model_keys})
        return dataclasses.replace(self, model=model, **optims,
                                   **{k: v for k, v in overrides.items() if k in run_keys})


RENAMED_TO = {f.name: f.metadata["former"] for f in fields(RunConfig) if f.metadata.get("former")}  # today -> former
FORMER_NAMES = {former: name for name, former in RENAMED_TO.items()}
