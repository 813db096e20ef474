"""One model's training, resumable after any epoch: its optimizers, epochs and the statistics fitted after it."""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic import write_json, write_text
from ..data import AnomalyDataset, get_dataset, held_out_images, run_images
from ..errors import DskdError
from ..model.network import DSKD
from .batch_maps import preload, to_input, valid_tensor
from .checkpoint import (
    CHECKPOINT_SCHEMA,
    load_students,
    read_checkpoint,
    save_checkpoint,
    student_state,
)
from .config import OptimConfig, RunConfig
from .folder import RunDir, autocast, load_run, provenance
from .map_stats import fit_map_statistics, recalibrate_batchnorm
from .set_decision import decide_on_held_out
from .stopping import held_out_loss, stop_reason

log = logging.getLogger(__name__)


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))  # a run resumed across versions may gain some
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


@dataclass
class _Training:
    """What changes while a run trains."""

    model: DSKD
    recipes: dict[str, OptimConfig]
    optims: dict[str, torch.optim.Optimizer]
    scaler: torch.amp.GradScaler
    rows: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 1

    def set_cosine_rates(self, progress: float) -> None:
        for name, opt in self.optims.items():
            for group in opt.param_groups:
                group["lr"] = self.recipes[name].cosine_rate(progress)

    def checkpoint(self, cfg: RunConfig, epoch: int, **extra: Any) -> dict[str, Any]:
        """What `--resume` needs while training; a finished run (`extra`: its map statistics) keeps its weights and
        what evaluation needs, not the optimizers' state."""
        return {"schema": CHECKPOINT_SCHEMA, "epoch": epoch, "model": student_state(self.model), "log": self.rows,
                "config": cfg.to_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optims.items()} if not extra else {}, **extra}


def _start(cfg: RunConfig, run: RunDir, device: torch.device, resume: bool) -> _Training:
    torch.manual_seed(cfg.seed)
    model = DSKD(cfg.model, pretrained=True).to(device)
    recipes = {name: cfg.se_optim if name.startswith("se") else cfg.sd_optim for name in model.students}
    optims = {name: recipe.build(model.student_parameters(name)) for name, recipe in recipes.items()}
    state = _Training(model, recipes, optims, torch.amp.GradScaler(device.type, enabled=cfg.precision == "float16"))
    if resume and run.checkpoint.is_file():
        ckpt = read_checkpoint(run.checkpoint, device)
        load_students(model, ckpt["model"])
        saved = ckpt.get("optimizers")
        if not isinstance(saved, dict) or set(saved) != set(optims):
            raise DskdError(f"{run.checkpoint} holds no optimizer state for {', '.join(optims)}; it cannot be resumed: "
                            "train the run again (without --resume)")
        for name, opt_state in saved.items():
            optims[name].load_state_dict(opt_state)
        state.start_epoch, state.rows = ckpt["epoch"] + 1, ckpt["log"]
        log.info("resuming %s after epoch %d", run.path, ckpt["epoch"])
    return state


@dataclass
class TrainingData:
    """A run's training images and its held-out good images, decoded (N x 3 x S x S uint8), and, where they were
    computed once for several runs (cross-fitting), the frozen teacher's pyramid of each (per scale, N x C x h x w).
    """

    dataset: AnomalyDataset
    images: torch.Tensor
    teacher: list[torch.Tensor] | None = None
    held_out: torch.Tensor | None = None
    held_out_teacher: list[torch.Tensor] | None = None

    @classmethod
    def read(cls, cfg: RunConfig, quiet: bool) -> TrainingData:
        train_set, held_out = run_images(cfg, "train"), held_out_images(cfg)
        images = preload(train_set, desc="loading training images", quiet=quiet)[0]
        return cls(train_set, images, held_out=None if held_out is None else preload(held_out, quiet=True)[0])


def train_model(cfg: RunConfig, run: RunDir, device: torch.device, resume: bool, quiet: bool,
                data: TrainingData | None = None, on_epoch: Callable[[int, DSKD], None] | None = None) -> RunDir:
    """Train one model into `run` (its training split read here unless `data` is given), fit its maps'
    statistics, and set its decision on its held-out images. `on_epoch(epoch, model)` after each epoch's checkpoint
    lets a benchmark look at the model as it learns (it must leave the model as it found it)."""
    data = data or TrainingData.read(cfg, quiet)
    train_set, images = data.dataset, data.images
    if len(images) < 2:
        raise DskdError(f"{train_set.where}: {len(images)} training image(s); a training step needs at least 2 "
                        "(the students' BatchNorm), and a useful model many more")
    if cfg.max_epochs and data.held_out is None:
        raise DskdError(f"{train_set.where}: the stopping rule (--max-epochs {cfg.max_epochs}) needs good images held "
                        "out of training, and this run holds none out; pass --val-fraction (at least 8 images held "
                        "out) or train a fixed number of epochs (--epochs N)")
    if cfg.size_from == "dataset":
        log.info("image size %d px, %s: %s's own under the %s profile (%s); --image-size and --epochs change them",
                 cfg.image_size, f"{cfg.epochs} epochs" if not cfg.max_epochs else f"at most {cfg.max_epochs} epochs",
                 cfg.dataset, cfg.profile, get_dataset(cfg.dataset).quick[2])
    info = provenance(cfg, device, train_set)
    state = _start(cfg, run, device, resume)
    run.path.mkdir(parents=True, exist_ok=True)
    write_json(run.info_file, info)
    stopped = _train_epochs(cfg, run, state, data, device, quiet, on_epoch)
    if cfg.recalibrate_bn:
        recalibrate_batchnorm(state.model, images, device, cfg.batch_size, cfg.precision)
    stats = fit_map_statistics(state.model, images, device, cfg.batch_size * 2, valid_tensor(train_set),
                               precision=cfg.precision)
    save_checkpoint(run.checkpoint, state.checkpoint(cfg, len(state.rows), **stats))
    seconds = sum(r["seconds"] + r.get("held_out_seconds", 0) for r in state.rows)
    info.update(completed=True, train_minutes=round(seconds / 60, 3), image_threshold=stats["image_threshold"],
                epochs_trained=len(state.rows), stopped=stopped)
    write_json(run.info_file, info)
    decide_on_held_out(load_run(run, device.type), quiet=quiet)
    return run


def _train_epochs(cfg: RunConfig, run: RunDir, state: _Training, data: TrainingData, device: torch.device,
                  quiet: bool, on_epoch: Callable[[int, DSKD], None] | None) -> str:
    """Epochs until the run's budget or its stopping rule ends them, each checkpointed; says why they ended."""
    epochs = tqdm(range(state.start_epoch, cfg.epoch_budget + 1), desc=f"train {cfg.model.variant}{_fold_words(cfg)}",
                  disable=quiet, initial=state.start_epoch - 1, total=cfg.epoch_budget, unit="epoch")
    for epoch in epochs:
        if cfg.max_epochs and _stop_reason(cfg, state.rows):
            break  # a resumed run that had already stopped
        row = _epoch(cfg, state, data, device, epoch, quiet)
        if data.held_out is not None:
            t0 = time.perf_counter()
            losses = held_out_loss(state.model, data.held_out, data.held_out_teacher, device, cfg.batch_size * 2,
                                   cfg.precision)
            row.update({f"held_out_{k}": round(v, 6) for k, v in losses.items()},
                       held_out_seconds=round(time.perf_counter() - t0, 3))
        state.rows.append(row)
        epochs.set_postfix(loss=f"{row['loss_total']:.4f}", img_s=f"{row['images_per_s']:.1f}",
                           **({"held_out": f"{row['held_out_total']:.4f}"} if "held_out_total" in row else {}))
        save_checkpoint(run.checkpoint, state.checkpoint(cfg, epoch))
        write_log(run.path / "train_log.csv", state.rows)
        if on_epoch is not None:
            on_epoch(epoch, state.model)
    epochs.close()
    why = _stop_reason(cfg, state.rows) if cfg.max_epochs else f"trained the {cfg.epochs} epochs asked for"
    log.info("%s%s: training stopped after epoch %d: %s", run.path, _fold_words(cfg), len(state.rows), why)
    return why


def _stop_reason(cfg: RunConfig, rows: list[dict[str, Any]]) -> str | None:
    return stop_reason([r["held_out_total"] for r in rows], cfg.stop_patience, cfg.stop_min_improvement,
                       cfg.max_epochs)


def _epoch(cfg: RunConfig, state: _Training, data: TrainingData, device: torch.device, epoch: int,
           quiet: bool) -> dict[str, Any]:
    """One pass over the training images in a seeded order; the log row of the epoch."""
    model, bs, images, n = state.model, cfg.batch_size, data.images, len(data.images)
    model.train()
    t0 = time.perf_counter()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
    batches = [order[i: i + bs] for i in range(0, n, bs) if len(order[i: i + bs]) > 1]  # BN needs 2+
    sums = {name: torch.zeros((), device=device) for name in (*model.students, "total")}
    steps = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=quiet, unit="step")
    for i, idx in enumerate(steps):
        if cfg.lr_schedule == "cosine":
            state.set_cosine_rates(((epoch - 1) * len(batches) + i) / (cfg.epoch_budget * len(batches)))
        with autocast(device, cfg.precision):
            teacher = None if data.teacher is None else [t[idx].to(device) for t in data.teacher]
            losses = model.loss(to_input(images[idx], device), teacher)
        _step(state, losses["total"])
        for k, v in losses.items():
            sums[k] += v.detach().float()
        if not quiet and i % 10 == 9:
            steps.set_postfix(loss=f"{sums['total'].item() / (i + 1):.4f}",
                              img_s=f"{(i + 1) * bs / (time.perf_counter() - t0):.1f}")
    mean = {k: v.item() / max(1, len(batches)) for k, v in sums.items()}
    if not all(np.isfinite(list(mean.values()))):
        last = f"epoch {epoch - 1}" if epoch > 1 else "no epoch"
        raise DskdError(f"loss became non-finite in epoch {epoch} ({mean}); the checkpoint keeps {last}; "
                        "lower the learning rate (--lr) and resume or restart")
    seconds = time.perf_counter() - t0
    return {"epoch": epoch, **{f"loss_{k}": round(v, 6) for k, v in mean.items()}, "seconds": round(seconds, 3),
            "images_per_s": round(sum(map(len, batches)) / seconds, 2)}


def _step(state: _Training, loss: torch.Tensor) -> None:
    for opt in state.optims.values():
        opt.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    for opt in state.optims.values():
        state.scaler.step(opt)
    state.scaler.update()


def _fold_words(cfg: RunConfig) -> str:
    return "" if cfg.fold is None else f", fold {cfg.fold + 1} of {cfg.folds}"
