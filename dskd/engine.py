"""Training, evaluation and prediction: `fit(config) -> RunDir`, `evaluate(run)`, `predict(run, images)`.

A run directory holds everything a run produced: `config.json` (settings and provenance), `checkpoint.pt`
(atomic, written after every epoch), `train_log.csv`, `metrics.json` and, on request, `maps.npz`.
Runs are cached by the hash of their config: fitting a config that already finished returns at once.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import __version__
from .config import OptimConfig, RunConfig
from .data import AnomalyDataset, load_dataset
from .data.datasets import IMAGE_EXTS, content_mask, fit_to_square, read_image
from .errors import DskdError
from .files import atomic_write, write_json, write_text
from .metrics import all_metrics
from .model import DSKD

log = logging.getLogger(__name__)

RUNS_ROOT = Path("results/runs")
THRESHOLD_SIGMAS = 3.0  # predict's threshold: mean + 3 std of the training images' scores


@dataclass(frozen=True)
class RunDir:
    path: Path
    config: RunConfig

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def maps_file(self) -> Path:
        return self.path / "maps.npz"

    def info(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text())

    @property
    def completed(self) -> bool:
        f = self.path / "config.json"
        return f.is_file() and bool(self.info().get("completed")) and self.checkpoint.is_file()

    def metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics_file.read_text())


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise DskdError("--device cuda was asked for but no CUDA device is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    return torch.device(name)


def _autocast(device: torch.device):
    """Mixed precision (bfloat16) on CUDA; full precision on the CPU, where it is exact and reproducible."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _fingerprint_files(dataset: AnomalyDataset, root: Path) -> str:
    names = []
    for s in dataset.samples:
        try:
            names.append(str(s.path.resolve().relative_to(root.resolve())))
        except ValueError:
            names.append(s.path.name)
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def _datasets(cfg: RunConfig, split: str, data_root: str | Path | None = None) -> AnomalyDataset:
    return load_dataset(cfg.dataset, data_root or cfg.data_root, cfg.category, split, cfg.image_size,
                        split_file=cfg.split_file, fit_mode=cfg.fit_mode)


def preload(dataset: AnomalyDataset, workers: int = 2, desc: str = "loading",
            quiet: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All images (N x 3 x S x S uint8) and masks (N x S x S bool) decoded once, in parallel."""
    n, s = len(dataset), dataset.image_size
    images = torch.empty(n, 3, s, s, dtype=torch.uint8)
    masks = torch.empty(n, s, s, dtype=torch.bool)
    loader = DataLoader(range(n), batch_size=16, num_workers=min(workers, n), collate_fn=_DecodeBatch(dataset))
    for idx, img, mask in tqdm(loader, desc=desc, leave=False, disable=quiet or n < 64):
        images[idx], masks[idx] = img, mask
    return images, masks


class _DecodeBatch:
    def __init__(self, dataset: AnomalyDataset) -> None:
        self.dataset = dataset

    def __call__(self, idx: list[int]):
        pairs = [self.dataset.load_uint8(i) for i in idx]
        img = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2)
        return torch.tensor(idx), img, torch.from_numpy(np.stack([p[1] for p in pairs]))


def _optimizer(params, opt: OptimConfig) -> torch.optim.Optimizer:
    # One fused kernel per step instead of a loop over tensors: it saved about 8% of a 64 px CPU step in one A/B
    # here; at 256 px the optimizer is under 1% of a step (results/benchmarks/speed.md).
    params = list(params)
    fused = {"fused": True} if params and params[0].device.type in ("cpu", "cuda") else {}
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay, **fused)
    return torch.optim.Adam(params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay, **fused)


def _set_cosine_lr(optims: dict[str, torch.optim.Optimizer], recipes: dict[str, OptimConfig], progress: float) -> None:
    """Half a cosine from each recipe's rate to 0 over the run; a function of the step alone, so resuming needs no
    state."""
    factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    for name, opt in optims.items():
        for group in opt.param_groups:
            group["lr"] = recipes[name].lr * factor


def _student_state(model: DSKD) -> dict[str, torch.Tensor]:
    """The trainable part of the model; the frozen teacher is rebuilt from its own weights on load."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("teacher.")}


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def _provenance(cfg: RunConfig, device: torch.device, files_fingerprint: str, n_train: int) -> dict[str, Any]:
    import torchvision

    return {
        "config": cfg.to_dict(),
        "fingerprint": cfg.fingerprint(),
        "dskd_version": __version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f" ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"),
        "train_files_fingerprint": files_fingerprint,
        "n_train": n_train,
        "completed": False,
    }


def fit(config: RunConfig, out: str | Path | None = None, *, resume: bool = True, quiet: bool = False,
        runs_root: str | Path = RUNS_ROOT) -> RunDir:
    """Train a run. With `out=None` the run lives in `runs_root/<run name>`; a finished run returns at once."""
    cfg = config.validate()
    run = RunDir(Path(out) if out is not None else Path(runs_root) / cfg.run_name(), cfg)
    run.path.parent.mkdir(parents=True, exist_ok=True)
    # One trainer per run directory: a second process (a parallel notebook) waits, then finds the run done.
    with open(run.path.parent / f".{run.path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _fit_locked(cfg, run, resume, quiet)


def _fit_locked(cfg: RunConfig, run: RunDir, resume: bool, quiet: bool) -> RunDir:
    info_file = run.path / "config.json"
    if info_file.is_file():
        info = run.info()
        if info.get("fingerprint") != cfg.fingerprint():
            raise DskdError(f"{run.path} holds a run with other settings; choose another --out or delete it")
        if run.completed:
            log.info("run %s already trained; using it", run.path)
            return run
        if run.checkpoint.is_file() and not resume:
            raise DskdError(f"{run.path} holds an interrupted run; pass --resume to continue it or delete the folder")

    device = resolve_device(cfg.device)
    train_set = _datasets(cfg, "train")
    images, _ = preload(train_set, desc="loading training images", quiet=quiet)
    n = len(train_set)
    info = _provenance(cfg, device, _fingerprint_files(train_set, Path(cfg.data_root)), n)

    torch.manual_seed(cfg.seed)
    model = DSKD(cfg.model, pretrained=True).to(device)
    recipes = {name: cfg.se_optim if name == "se" else cfg.sd_optim for name in model.students}
    optims = {name: _optimizer(model.student_parameters(name), recipe) for name, recipe in recipes.items()}
    start_epoch, rows = 1, []
    if resume and run.checkpoint.is_file():
        ckpt = torch.load(run.checkpoint, map_location=device, weights_only=False)
        _load_students(model, ckpt["model"])
        for name, state in ckpt["optimizers"].items():
            optims[name].load_state_dict(state)
        start_epoch, rows = ckpt["epoch"] + 1, ckpt["log"]
        log.info("resuming %s after epoch %d", run.path, ckpt["epoch"])
    run.path.mkdir(parents=True, exist_ok=True)
    write_json(info_file, info)

    bs = cfg.batch_size
    epochs = tqdm(range(start_epoch, cfg.epochs + 1), desc=f"train {cfg.model.variant}", disable=quiet,
                  initial=start_epoch - 1, total=cfg.epochs, unit="epoch")
    for epoch in epochs:
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        batches = [order[i: i + bs] for i in range(0, n, bs) if len(order[i: i + bs]) > 1]  # BN needs 2+
        sums = {name: torch.zeros((), device=device) for name in (*model.students, "total")}
        steps = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=quiet, unit="step")
        for i, idx in enumerate(steps):
            if cfg.lr_schedule == "cosine":
                _set_cosine_lr(optims, recipes, ((epoch - 1) * len(batches) + i) / (cfg.epochs * len(batches)))
            x = images[idx].to(device, non_blocking=True).float().div_(255.0)
            with _autocast(device):
                losses = model.loss(x)
            for opt in optims.values():
                opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            for opt in optims.values():
                opt.step()
            for k, v in losses.items():
                sums[k] += v.detach().float()
            if not quiet and i % 10 == 9:
                seen = (i + 1) * bs
                steps.set_postfix(loss=f"{sums['total'].item() / (i + 1):.4f}",
                                  img_s=f"{seen / (time.perf_counter() - t0):.1f}")
        mean = {k: v.item() / max(1, len(batches)) for k, v in sums.items()}
        if not all(np.isfinite(list(mean.values()))):
            last = f"epoch {epoch - 1}" if epoch > 1 else "no epoch"
            raise DskdError(f"loss became non-finite in epoch {epoch} ({mean}); the checkpoint keeps {last}; "
                            "lower the learning rate (--lr) and resume or restart")
        seconds = time.perf_counter() - t0
        rows.append({"epoch": epoch, **{f"loss_{k}": round(v, 6) for k, v in mean.items()},
                     "seconds": round(seconds, 3), "images_per_s": round(sum(map(len, batches)) / seconds, 2)})
        epochs.set_postfix(loss=f"{mean['total']:.4f}", img_s=f"{rows[-1]['images_per_s']:.1f}")
        _save_checkpoint(run.checkpoint, {"epoch": epoch, "model": _student_state(model), "log": rows,
                                          "optimizers": {k: o.state_dict() for k, o in optims.items()},
                                          "config": cfg.to_dict()})
        _write_log(run.path / "train_log.csv", rows)

    if cfg.recalibrate_bn:
        recalibrate_batchnorm(model, images, device, bs)
    stats = _fit_map_statistics(model, images, device, bs * 2, _valid(train_set))
    _save_checkpoint(run.checkpoint, {"epoch": cfg.epochs, "model": _student_state(model), "log": rows,
                                      "optimizers": {}, "config": cfg.to_dict(), **stats})
    info.update(completed=True, train_minutes=round(sum(r["seconds"] for r in rows) / 60, 3),
                image_threshold=stats["image_threshold"])
    write_json(info_file, info)
    return run


@torch.no_grad()
def recalibrate_batchnorm(model: DSKD, images: torch.Tensor, device: torch.device, batch_size: int) -> None:
    """Replace the students' BatchNorm running statistics by averages over `images` under the final weights.

    One pass without gradients, every student norm in training mode (as SWA's update_bn), in batches of
    `batch_size` as in training. Re-estimating Se's norms first and then Sd's gave the same maps, for twice the time.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.weight.requires_grad]
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
        m.train()
    for i in range(0, len(images), batch_size):
        x = images[i: i + batch_size].to(device).float().div_(255.0)
        if len(x) > 1:
            with _autocast(device):
                model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


def _load_students(model: DSKD, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("teacher.") for k in missing):
        raise DskdError(f"checkpoint does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")


@torch.inference_mode()
def _maps_in_batches(model: DSKD, images: torch.Tensor, device: torch.device, batch_size: int,
                     desc: str = "maps", quiet: bool = True, valid: torch.Tensor | None = None):
    """Yield (slice, native per-scale maps, AnomalyOutput) over a uint8 image tensor; `valid` (N x H x W
    bool, None: no padding) keeps padding out of the scores."""
    model.eval()
    for i in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, disable=quiet):
        sl = slice(i, min(i + batch_size, len(images)))
        x = images[sl].to(device).float().div_(255.0)
        with _autocast(device):
            native = model.native_maps(x)
        native = {k: [m.float() for m in v] for k, v in native.items()}
        yield sl, native, model.fuse(native, x.shape[-2:], valid=None if valid is None else valid[sl])


def _valid(dataset: AnomalyDataset) -> torch.Tensor | None:
    valid = dataset.valid_masks()
    return None if valid is None else torch.from_numpy(valid)


def _fit_map_statistics(model: DSKD, images: torch.Tensor, device: torch.device, batch_size: int,
                        valid: torch.Tensor | None = None) -> dict:
    """Per-student per-scale map statistics and the image-score threshold, from the training images only.

    One pass through the network: the native per-scale maps are kept (small) and re-fused after the
    normalization has been set, so the threshold sees the same maps that evaluation will. Each map cell
    weighs by the fraction of it that shows the image (`valid`), so padding does not enter the statistics.
    """
    k = len(model.students)
    sums, sqs, weights = (torch.zeros(k, 3, dtype=torch.float64) for _ in range(3))
    kept = []
    for sl, native, _ in _maps_in_batches(model, images, device, batch_size):
        part = None if valid is None else valid[sl]
        kept.append((native, part))
        shown = None if part is None else part[:, None].to(device, torch.float64)
        for i, name in enumerate(model.students):
            for j, m in enumerate(native[name]):
                m = m.double()
                w = torch.ones_like(m) if shown is None else F.interpolate(shown, size=m.shape[-2:], mode="area")
                sums[i, j] += (w * m).sum().cpu()
                sqs[i, j] += (w * m**2).sum().cpu()
                weights[i, j] += w.sum().cpu()
    mean = sums / weights
    std = (sqs / weights - mean**2).clamp_min(1e-12).sqrt()
    norm = torch.zeros(k, 2, 3)
    norm[:, 1] = 1.0
    if model.config.map_norm == "zscore":
        norm[:, 0], norm[:, 1] = mean.float(), std.float()
    elif model.config.map_norm == "mean":
        norm[:, 1] = mean.float()
    model.map_norm_stats.copy_(norm.to(model.map_norm_stats.device))
    with torch.inference_mode():
        scores = torch.cat([model.fuse(native, images.shape[-2:], valid=part).score.float().cpu()
                            for native, part in kept])
    threshold = float(scores.mean() + THRESHOLD_SIGMAS * scores.std()) if len(scores) > 1 else float(scores.max())
    return {"map_stats": {"mean": mean.tolist(), "std": std.tolist()}, "train_scores": scores.tolist(),
            "image_threshold": threshold}


@dataclass
class LoadedRun:
    run: RunDir
    model: DSKD
    image_threshold: float
    device: torch.device


def load_run(run_dir: str | Path | RunDir, device: str = "auto") -> LoadedRun:
    path = run_dir.path if isinstance(run_dir, RunDir) else Path(run_dir)
    if not (path / "config.json").is_file() or not (path / "checkpoint.pt").is_file():
        raise DskdError(f"{path} is not a trained run (no config.json or checkpoint.pt); train one with "
                        "'python -m dskd train ... --out RUN_DIR'")
    cfg = RunConfig.from_dict(json.loads((path / "config.json").read_text())["config"])
    run = RunDir(path, cfg)
    if not run.completed:
        raise DskdError(f"{path} has not finished training; resume it with 'python -m dskd train ... --resume'")
    dev = resolve_device(device)
    ckpt = torch.load(run.checkpoint, map_location=dev, weights_only=False)
    model = DSKD(cfg.model, pretrained=True).to(dev).eval()
    _load_students(model, ckpt["model"])
    return LoadedRun(run, model.for_inference(), float(ckpt["image_threshold"]), dev)


def evaluate(run_dir: str | Path | RunDir, data_root: str | Path | None = None, *, save_maps: bool = False,
             device: str = "auto", quiet: bool = True) -> dict[str, Any]:
    """Score the test split: image AUROC, pixel AUROC, AUPRO, F1-max, per-defect-type image AUROC."""
    t0 = time.perf_counter()
    loaded = load_run(run_dir, device)
    cfg, model = loaded.run.config, loaded.model
    test_set = _datasets(cfg, "test", data_root)
    images, masks = preload(test_set, desc="loading test images", quiet=quiet)
    valid = _valid(test_set)
    n, s = len(test_set), cfg.image_size
    maps = np.empty((n, s, s), np.float32)
    scores = np.empty(n, np.float32)
    per_student = {name: np.empty((n, s, s), np.float16) for name in model.students} if save_maps else {}
    native: dict[str, list[np.ndarray]] = {name: [] for name in model.students}
    for sl, nat, out in _maps_in_batches(model, images, loaded.device, cfg.batch_size * 2, "evaluate", quiet,
                                         valid):
        maps[sl] = out.map[:, 0].cpu().numpy()
        scores[sl] = out.score.cpu().numpy()
        if save_maps:
            for name in model.students:
                per_student[name][sl] = out.per_student[name][:, 0].cpu().numpy()
                native[name].append([m[:, 0].cpu().numpy() for m in nat[name]])
    labels, masks_np = test_set.labels, masks.numpy()
    valid_np = None if valid is None else valid.numpy()
    metrics = all_metrics(labels, scores, masks_np, maps, test_set.defect_types, valid=valid_np)
    result: dict[str, Any] = {
        **metrics, "n_test": n, "n_defective": int(labels.sum()), "seconds": round(time.perf_counter() - t0, 3),
        "dataset": cfg.dataset, "category": cfg.category, "backbone": cfg.model.backbone,
        "variant": cfg.model.variant, "df_source": cfg.model.df_source, "image_size": cfg.image_size,
        "epochs": cfg.epochs, "seed": cfg.seed, "run": str(loaded.run.path),
    }
    write_json(loaded.run.metrics_file, result)
    if save_maps:
        arrays: dict[str, Any] = {
            "images": images.permute(0, 2, 3, 1).numpy(), "masks": masks_np, "labels": labels,
            "scores": scores, "maps": maps.astype(np.float16), "students": np.array(model.students),
            "paths": np.array([str(p.path) for p in test_set.samples]),
            "defect_types": np.array(test_set.defect_types), "threshold": np.float32(loaded.image_threshold),
            "norm": model.map_norm_stats.cpu().numpy(),
            **({} if valid_np is None else {"valid": valid_np}),
        }
        for name in model.students:
            arrays[f"student_{name}"] = per_student[name]
            for j in range(3):
                arrays[f"scale{j}_{name}"] = np.concatenate([b[j] for b in native[name]])
        atomic_write(loaded.run.maps_file, lambda tmp: _savez(tmp, arrays))
    return result


def _savez(path: Path, arrays: dict[str, Any]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def _collect_images(inputs: list[str | Path]) -> list[Path]:
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_EXTS)
            if not found:
                raise DskdError(f"{item}: no images ({', '.join(IMAGE_EXTS)}) in this folder")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise DskdError(f"{item}: no such image or folder")
    return paths


def predict(run_dir: str | Path | RunDir, inputs: list[str | Path], out: str | Path, *,
            device: str = "auto", quiet: bool = True) -> list[dict[str, Any]]:
    """Heat-map overlays and `scores.csv` for a user's own images.

    `is_anomalous` compares the image score with the run's threshold: the mean plus three standard
    deviations of the training images' scores (defect-free by construction), stored at training time.
    """
    from matplotlib import colormaps
    from PIL import Image

    loaded = load_run(run_dir, device)
    cfg, out = loaded.run.config, Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cmap = colormaps["jet"]
    rows = []
    for path in tqdm(_collect_images(inputs), desc="predict", disable=quiet):
        original = read_image(path)
        img = fit_to_square(original, cfg.image_size, Image.BILINEAR, cfg.fit_mode)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None]
        valid = content_mask(original.shape[1], original.shape[0], cfg.image_size, cfg.fit_mode)
        (_, _, result), = _maps_in_batches(loaded.model, x, loaded.device, 1, valid=torch.from_numpy(valid)[None])
        amap = result.map[0, 0].cpu().numpy()
        score = float(result.score[0])
        heat = cmap(np.clip(amap / (2 * loaded.image_threshold + 1e-12), 0, 1))[..., :3]
        overlay = (0.5 * img / 255.0 + 0.5 * heat).clip(0, 1)
        target = out / f"{path.stem}_overlay.png"
        atomic_write(target, lambda tmp, a=overlay: Image.fromarray((a * 255).astype(np.uint8)).save(tmp, "PNG"))
        rows.append({"path": str(path), "score": score, "is_anomalous": score > loaded.image_threshold,
                     "overlay": str(target)})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["path", "score", "is_anomalous", "overlay"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "scores.csv", buf.getvalue())
    return rows
