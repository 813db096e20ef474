"""Evaluation: score a trained run on its test split and, on request, keep every map (`dskd.archive`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import archive
from .batches import maps_in_batches, preload, valid_tensor
from .data import load_dataset
from .files import write_json
from .metrics import all_metrics, f1_max_threshold
from .runs import LoadedRun, RunDir, load_run

log = logging.getLogger(__name__)
PIXEL_METRICS = ("pixel_auroc", "aupro", "pixel_f1_max")


def evaluate(run_dir: str | Path | RunDir, data_root: str | Path | None = None, *, save_maps: bool = False,
             device: str = "auto", quiet: bool = True) -> dict[str, Any]:
    """Score the test split: image AUROC, pixel AUROC, AUPRO, F1-max, per-defect-type image AUROC."""
    t0 = time.perf_counter()
    loaded = load_run(run_dir, device)
    cfg, model = loaded.run.config, loaded.model
    test_set = load_dataset(cfg.dataset, data_root or cfg.data_root, cfg.category, "test", cfg.image_size,
                            split_file=cfg.split_file, fit_mode=cfg.fit_mode)
    images, masks = preload(test_set, desc="loading test images", quiet=quiet)
    valid = valid_tensor(test_set)
    maps, scores, per_student, per_scale = _all_maps(loaded, images, valid, save_maps, quiet)
    labels, valid_np = test_set.labels, None if valid is None else valid.numpy()
    masks_np = masks.numpy() if test_set.has_masks else None
    if masks_np is None:
        log.warning("%s has no pixel masks: image-level metrics only (pixel AUROC, AUPRO and pixel F1 are null)",
                    test_set.where)
    metrics = {**dict.fromkeys(PIXEL_METRICS),
               **all_metrics(labels, scores, masks_np, maps, test_set.defect_types, valid=valid_np)}
    result: dict[str, Any] = {
        **metrics, "n_test": len(labels), "n_defective": int(labels.sum()),
        "seconds": round(time.perf_counter() - t0, 3),
        "dataset": cfg.dataset, "category": cfg.category, "backbone": cfg.model.backbone,
        "variant": cfg.model.variant, "df_source": cfg.model.df_source, "image_size": cfg.image_size,
        "epochs": cfg.epochs, "seed": cfg.seed, "precision": loaded.precision, "run": str(loaded.run.path),
        # predict's image-level decision: the F1-max threshold on this test split (a score at or above it is
        # "defective"); before a run is evaluated, predict uses the training images' mean + 3 std instead.
        "decision_threshold": f1_max_threshold(labels, scores), "decision_rule": "f1_max_on_test",
    }
    write_json(loaded.run.metrics_file, result)
    if save_maps:
        archive.save(loaded.run.maps_file, archive.SavedMaps(
            images=images.permute(0, 2, 3, 1).numpy(), masks=masks_np, labels=labels, scores=scores,
            maps=maps.astype(np.float16), paths=[str(p.path) for p in test_set.samples],
            defect_types=list(test_set.defect_types), threshold=loaded.image_threshold, per_student=per_student,
            per_scale=per_scale,
            norm=model.map_norm_stats.cpu().numpy(), fusion=archive.SavedMaps.fusion_of(cfg.model), valid=valid_np))
    return result


def _all_maps(loaded: LoadedRun, images: torch.Tensor, valid: torch.Tensor | None, keep: bool, quiet: bool):
    """Fused maps and scores of every image; with `keep`, also each student's map and native per-scale maps."""
    model, (n, _, s, _) = loaded.model, images.shape
    maps, scores = np.empty((n, s, s), np.float32), np.empty(n, np.float32)
    per_student = {name: np.empty((n, s, s), np.float16) for name in model.students} if keep else {}
    native: dict[str, list[list[np.ndarray]]] = {name: [] for name in per_student}
    for sl, nat, out in maps_in_batches(model, images, loaded.device, loaded.run.config.batch_size * 2,
                                        loaded.precision, desc="evaluate", quiet=quiet, valid=valid,
                                        keep_students=keep):
        maps[sl], scores[sl] = out.map[:, 0].cpu().numpy(), out.score.cpu().numpy()
        for name in per_student:
            per_student[name][sl] = out.per_student[name][:, 0].cpu().numpy()
            native[name].append([m[:, 0].cpu().numpy() for m in nat[name]])
    per_scale = {k: [np.concatenate(parts) for parts in zip(*v, strict=True)] for k, v in native.items()}
    return maps, scores, per_student, per_scale
