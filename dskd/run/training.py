"""Training: `fit(config) -> RunDir`, resumable after any epoch, cached by the hash of its settings; with
`folds` K >= 2, cross-fitting: K student sets on one teacher (`dskd.model.cross_fitted`)."""

from __future__ import annotations

import fcntl
import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..atomic import write_json
from ..data import run_images
from ..errors import DskdError
from ..model.backbones import build_teacher
from ..model.cross_fitted import CrossFitModel
from .batch_maps import preload, to_input
from .checkpoint import CHECKPOINT_SCHEMA, load_students, read_checkpoint, save_checkpoint, student_state
from .config import RunConfig
from .folder import RUNS_ROOT, RunDir, autocast, provenance, resolve_device
from .set_decision import decide_on_folds
from .trainer import TrainingData, train_model

log = logging.getLogger(__name__)
TEACHER_CACHE_BYTES = 4 * 2**30  # cross-fitting keeps the teacher's pyramids in memory up to this size

def fit(config: RunConfig, out: str | Path | None = None, *, resume: bool = True, quiet: bool = False,
        runs_root: str | Path = RUNS_ROOT, wait: bool = True) -> RunDir:
    """Train a run. With `out=None` the run lives in `runs_root/<run name>`; a finished run returns at once.

    One trainer per run folder: with `wait` a second process waits for the first and then finds the run done;
    without it, it stops at once with a one-line error."""
    device = resolve_device(config.device)
    cfg = config.validate().with_device(device.type)
    run = RunDir(Path(out) if out is not None else Path(runs_root) / cfg.run_name(), cfg)
    if run.path.exists() and not run.path.is_dir():
        raise DskdError(f"{run.path} is a file, not a run folder; choose another --out")
    run.path.parent.mkdir(parents=True, exist_ok=True)
    with open(run.path.parent / f".{run.path.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise DskdError(f"{run.path} is busy: another process is training it; wait for it (or pass --wait)") \
                from None
        if _reusable(run, cfg, resume):
            return run
        if cfg.cross_fitted:
            return _train_folds(cfg, run, device, resume, quiet)
        return train_model(cfg, run, device, resume, quiet)


def _reusable(run: RunDir, cfg: RunConfig, resume: bool) -> bool:
    """True when the folder already holds this run, finished; an error when it holds something else."""
    if not run.info_file.is_file():
        return False
    if run.info().get("fingerprint") != cfg.fingerprint():
        raise DskdError(f"{run.path} holds a run with other settings; choose another --out or delete it")
    if run.completed:
        log.info("run %s already trained; using it", run.path)
        return True
    if run.checkpoint.is_file() and not resume:
        raise DskdError(f"{run.path} holds an interrupted run; pass --resume to continue it or delete the folder")
    return False




def _train_folds(cfg: RunConfig, run: RunDir, device: torch.device, resume: bool, quiet: bool) -> RunDir:
    """Cross-fitting: set k trains in `run.student_set(k)` on every good image but fold k's, all sets on one teacher
    pyramid computed once per image; then one checkpoint holds the K sets, and the decision is set on their
    out-of-fold scores. Each set resumes on its own."""
    pool = run_images(cfg, "train")
    images, _ = preload(pool, desc="loading training images", quiet=quiet)
    which = torch.from_numpy(pool.folds)
    info = provenance(cfg, device, pool)
    run.path.mkdir(parents=True, exist_ok=True)
    write_json(run.info_file, info)
    t0 = time.perf_counter()
    teacher = teacher_pyramids(cfg, images, device, quiet)
    minutes = (time.perf_counter() - t0) / 60
    sets = [run.student_set(k) for k in range(cfg.folds)]
    for k, student_set in enumerate(sets):
        if not _reusable(student_set, student_set.config, resume):
            keep = which != k
            train_model(student_set.config, student_set, device, resume, quiet, TrainingData(
                run_images(student_set.config, "train"), images[keep], None if teacher is None else
                [t[keep] for t in teacher], images[~keep], None if teacher is None else [t[~keep] for t in teacher]))
        minutes += student_set.info()["train_minutes"]
    threshold = _merge(cfg, run, sets)
    info.update(completed=True, train_minutes=round(minutes, 3), image_threshold=threshold,
                epochs_trained=[s.info().get("epochs_trained", cfg.epochs) for s in sets])
    write_json(run.info_file, info)
    decide_on_folds(run)
    for student_set in sets:  # their weights now live in the run's checkpoint; their logs and scores stay
        student_set.checkpoint.unlink(missing_ok=True)
    return run


def teacher_pyramids(cfg: RunConfig, images: torch.Tensor, device: torch.device,
                     quiet: bool) -> list[torch.Tensor] | None:
    """The frozen teacher's pyramid of every image (per scale, N x C x h x w, in the run's arithmetic), computed
    once for all K sets; None, so that each batch computes its own, where it would exceed TEACHER_CACHE_BYTES."""
    teacher = build_teacher(cfg.model.backbone, True).to(device)
    side = images.shape[-1]
    size = len(images) * 4 * sum(c * (side // s) ** 2 for c, s in zip(teacher.channels, teacher.strides, strict=True))
    if size > TEACHER_CACHE_BYTES:
        log.info("the teacher's features of %d images would take %.1f GiB; each set computes them per batch",
                 len(images), size / 2**30)
        return None
    parts = []
    for i in tqdm(range(0, len(images), cfg.batch_size), desc="teacher features", leave=False, disable=quiet):
        x = to_input(images[i: i + cfg.batch_size], device)
        with autocast(device, cfg.precision):
            parts.append([f.cpu() for f in teacher(teacher.normalize(x))])
    return [torch.cat(level) for level in zip(*parts, strict=True)]


def _merge(cfg: RunConfig, run: RunDir, sets: list[RunDir]) -> float:
    """The K trained sets in the run's one checkpoint; returns the mean of their training-image thresholds."""
    model = CrossFitModel(cfg.model, cfg.folds)
    checkpoints = [read_checkpoint(s.checkpoint, "cpu", finished=True) for s in sets]
    for student_set, ckpt in zip(model.sets, checkpoints, strict=True):
        load_students(student_set, ckpt["model"])
    threshold = sum(float(c["image_threshold"]) for c in checkpoints) / len(checkpoints)
    save_checkpoint(run.checkpoint, {"schema": CHECKPOINT_SCHEMA, "epoch": max(c["epoch"] for c in checkpoints),
                                     "model": student_state(model),
                                     "log": [], "config": cfg.to_dict(), "image_threshold": threshold,
                                     "map_stats": {"sets": [c["map_stats"] for c in checkpoints]},
                                     "train_scores": []})
    return threshold
