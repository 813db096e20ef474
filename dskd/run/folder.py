"""Run folders: where a run keeps what it produced, how it records where it came from, and how it is loaded.

A run folder holds `config.json` (settings and provenance), `checkpoint.pt` (atomic, written after every
epoch), `train_log.csv`, `decision.json` (the deployed decision, `dskd.decision`), `metrics.json` and, on
request, `maps.npz` (`dskd.run.archive`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import read_json
from ..data import AnomalyDataset
from ..decision import Decision
from ..decision.stored import DECISION_FILE, RUN_REMEDY, read_decision
from ..errors import DskdError
from ..model.cross_fitted import CrossFitModel
from ..model.network import DSKD
from ..version import __version__
from .checkpoint import load_students, read_checkpoint
from .config import RunConfig

RUNS_ROOT = Path("results/runs")
_AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class RunDir:
    path: Path
    config: RunConfig

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def info_file(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def decision_file(self) -> Path:
        return self.path / DECISION_FILE

    @property
    def maps_file(self) -> Path:
        return self.path / "maps.npz"

    def info(self) -> dict[str, Any]:
        return read_json(self.info_file, "training it again in a new folder")

    @property
    def completed(self) -> bool:
        return self.info_file.is_file() and bool(self.info().get("completed")) and self.checkpoint.is_file()

    def metrics(self) -> dict[str, Any]:
        return read_json(self.metrics_file, "evaluating the run again")

    def recorded_decision(self, remedy: str = RUN_REMEDY) -> Decision:
        """The decision in `decision.json`; `remedy` says what to do when it cannot be read."""
        return read_decision(self.decision_file, remedy)

    def student_set(self, k: int) -> RunDir:
        """A cross-fitted run's student set k, trained in its own folder (`folds/<k>`) without fold k."""
        return RunDir(self.path / "folds" / str(k), dataclasses.replace(self.config, fold=k))


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise DskdError("--device cuda was asked for but no CUDA device is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":  # every core, unless a scheduler gave this process fewer (DSKD_NUM_THREADS, set by executors)
        torch.set_num_threads(int(os.environ.get("DSKD_NUM_THREADS") or os.cpu_count() or 1))
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """The run's arithmetic: float32 as it is, or autocast to bfloat16 / float16 on the run's device."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def files_fingerprint(paths: list[Path], root: Path) -> str:
    """Hash of the training files' names relative to the data root: which images a run saw."""
    names = []
    for p in paths:
        try:
            names.append(str(p.resolve().relative_to(root.resolve())))
        except ValueError:
            names.append(p.name)
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def provenance(cfg: RunConfig, device: torch.device, train_set: AnomalyDataset) -> dict[str, Any]:
    """What a run records of where it came from: its settings, versions, device and which images it trained on."""
    import torchvision

    train_files = files_fingerprint([s.path for s in train_set.samples], Path(cfg.data_root))
    return {
        "config": cfg.to_dict(),
        "fingerprint": cfg.fingerprint(),
        "precision": cfg.precision,
        "dskd_version": __version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f" ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"),
        "train_files_fingerprint": train_files,
        "n_train": len(train_set),
        "completed": False,
    }


@dataclass
class LoadedRun:
    run: RunDir
    model: DSKD | CrossFitModel
    image_threshold: float  # from the training images: mean + 3 std of their scores
    device: torch.device

    @property
    def precision(self) -> str:
        return self.run.config.precision

    def decision(self) -> Decision:
        """The deployed decision set after training (`dskd.run.set_decision`) or by `calibrate`; a run from before
        decisions were recorded gets its training images' mean + 3 std for both thresholds."""
        if self.run.decision_file.is_file():
            return self.run.recorded_decision()
        return Decision.unrecorded(threshold=self.image_threshold)


def open_run(run_dir: str | Path | RunDir) -> RunDir:
    path = run_dir.path if isinstance(run_dir, RunDir) else Path(run_dir)
    if not (path / "config.json").is_file() or not (path / "checkpoint.pt").is_file():
        raise DskdError(f"{path} is not a trained run (no config.json or checkpoint.pt); train one with "
                        "'python -m dskd train ... --out RUN_DIR'")
    info = read_json(path / "config.json", "training it again in a new folder")
    where = path / "config.json"
    try:
        cfg = RunConfig.from_dict(info["config"])
        cfg.validate()
    except (KeyError, TypeError, AttributeError) as exc:
        raise DskdError(f"{where} does not describe a dskd run ({type(exc).__name__}: {exc}); train it again") \
            from exc
    except DskdError as exc:
        raise DskdError(f"{where}: {exc}; this file was edited or written by another version: train the run "
                        "again (or restore the file)") from exc
    return RunDir(path, cfg)


def load_run(run_dir: str | Path | RunDir, device: str = "auto") -> LoadedRun:
    """A finished run's model, ready for maps (BatchNorm folded), with its image-score threshold."""
    run = open_run(run_dir)
    if not run.completed:
        raise DskdError(f"{run.path} has not finished training; resume it with 'python -m dskd train ... --resume'")
    dev = resolve_device(device)
    ckpt = read_checkpoint(run.checkpoint, dev, finished=True)
    cfg = run.config
    model = CrossFitModel(cfg.model, cfg.folds) if cfg.cross_fitted else DSKD(cfg.model, pretrained=True)
    model = model.to(dev).eval()
    load_students(model, ckpt["model"])
    return LoadedRun(run, model.for_inference(), float(ckpt["image_threshold"]), dev)
