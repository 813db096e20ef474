"""How long the students need: each epoch's held-out loss beside what a model stopped there would score.

    python -m benchmarks.stopping --data-root ../shared/data                 # train the trajectories still missing
    python -m benchmarks.stopping --rules                                    # replay the candidate rules on them

Each run (the `quick` profile: its teacher and image size; the variants and teachers asked for) trains for a fixed,
generous number of epochs (`--epochs`, per image size) and logs its held-out loss every epoch. After every epoch a
copy of the model is finished as training would finish it there (BatchNorm statistics re-estimated, map statistics
fitted) and scored on the test split: image AUROC, pixel AUROC, AUPRO. The test labels describe the trajectory; the
stopping rule never sees them. Rows go to results/benchmarks/stopping/<run>.csv as they come, so a run cut short keeps
its epochs (and resumes from its checkpoint).

`--rules` replays every candidate rule (patience x tolerance, `dskd.run.stopping.stop_reason`) on the logged held-out
losses and writes results/benchmarks/stopping_rules.md: where each rule stops each run and what the run scores there,
and the rule chosen by the criterion written down before any trajectory was looked at (docs/findings.md section 29).
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.common import REPO, machine
from dskd.atomic import write_text
from dskd.data import run_images
from dskd.model.network import DSKD
from dskd.run.batch_maps import maps_in_batches, preload, valid_tensor
from dskd.run.config import RunConfig
from dskd.run.folder import RunDir, resolve_device
from dskd.run.map_stats import fit_map_statistics, recalibrate_batchnorm
from dskd.run.metrics import aupro, image_auroc, pixel_auroc
from dskd.run.profiles import profile_config
from dskd.run.trainer import TrainingData, train_model

log = logging.getLogger("benchmarks.stopping")
OUT = REPO / "results" / "benchmarks" / "stopping"
RUNS = REPO / "results" / "runs" / "stopping"
# The four real datasets, as (dataset, category): MT Defects, MPDD metal_plate, MVTec AD bottle, BSData as a folder.
SCREEN = (("mpdd", "metal_plate"), ("mvtec_ad", "bottle"), ("mt_defects", "mt_defects"), ("folder", "bsdata"))
EPOCHS = {128: 50, 256: 30}  # about 2.4 and 3 times the fixed budgets the quick profile had (21 and 10)
METRICS = ("image_auroc", "pixel_auroc", "aupro")


@dataclass
class TestSplit:
    """The test split decoded once: images, masks (None without), labels and the padding mask."""

    images: torch.Tensor
    masks: np.ndarray | None
    labels: np.ndarray
    valid: torch.Tensor | None

    @classmethod
    def read(cls, cfg: RunConfig) -> TestSplit:
        test = run_images(cfg, "test")
        images, masks = preload(test, desc="loading test images", quiet=True)
        return cls(images, masks.numpy() if test.has_masks else None, test.labels, valid_tensor(test))


def snapshot_metrics(model: DSKD, cfg: RunConfig, train: TrainingData, test: TestSplit,
                     device: torch.device) -> dict[str, float]:
    """What the model would score if training stopped now: a copy finished as training finishes a run."""
    snap = copy.deepcopy(model)
    if cfg.recalibrate_bn:
        recalibrate_batchnorm(snap, train.images, device, cfg.batch_size, cfg.precision)
    fit_map_statistics(snap, train.images, device, cfg.batch_size * 2, valid_tensor(train.dataset),
                       precision=cfg.precision)
    snap.for_inference()
    n, side = len(test.images), test.images.shape[-1]
    maps, scores = np.empty((n, side, side), np.float32), np.empty(n, np.float32)
    for sl, _, out in maps_in_batches(snap, test.images, device, cfg.batch_size * 2, cfg.precision,
                                      valid=test.valid, keep_students=False):
        maps[sl], scores[sl] = out.map[:, 0].cpu().numpy(), out.score.cpu().numpy()
    found = {"image_auroc": 100 * image_auroc(test.labels, scores)}
    if test.masks is not None and test.masks.any():
        valid = None if test.valid is None else test.valid.numpy()
        found.update(pixel_auroc=100 * pixel_auroc(test.masks, maps, valid), aupro=100 * aupro(test.masks, maps,
                                                                                             valid=valid))
    return found


def trajectory(cfg: RunConfig, out: Path, device: torch.device) -> None:
    """Train `cfg` (fixed epochs), scoring a finished copy after every epoch into `out` (a CSV, rewritten each
    epoch); epochs already in `out` are not scored again."""
    run = RunDir(RUNS / cfg.run_name(), cfg)
    done = pd.read_csv(out) if out.is_file() else pd.DataFrame()
    if len(done) >= cfg.epochs:  # recorded whole (a fresh checkout has the file, not the run folder)
        return
    data, test = TrainingData.read(cfg, quiet=True), TestSplit.read(cfg)
    rows = done.to_dict("records")
    seen = {int(r["epoch"]) for r in rows}

    def score(epoch: int, model: DSKD) -> None:
        if epoch in seen:
            return
        t0 = time.perf_counter()
        found = snapshot_metrics(model, cfg, data, test, device)
        logged = pd.read_csv(run.path / "train_log.csv").iloc[epoch - 1].to_dict()
        rows.append({**logged, **found, "score_seconds": round(time.perf_counter() - t0, 2)})
        write_text(out, pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))
        log.info("%s epoch %d: held-out %.4f, %s", out.stem, epoch, logged["held_out_total"],
                 ", ".join(f"{k} {v:.1f}" for k, v in found.items()))

    train_model(cfg, run, device, resume=True, quiet=True, data=data, on_epoch=score)


def configs(args: argparse.Namespace) -> list[RunConfig]:
    out = []
    for backbone in args.backbones:
        for seed in args.seeds:
            for dataset, category in SCREEN:
                if args.datasets and category not in args.datasets:
                    continue
                for variant in args.variants:
                    cfg = profile_config("quick", dataset=dataset, category=category, data_root=args.data_root,
                                         backbone=backbone, variant=variant, seed=seed)
                    out.append(cfg.with_overrides(epochs=EPOCHS[cfg.image_size]))
    return out


def name_of(cfg: RunConfig) -> str:
    return f"{cfg.category}-{cfg.model.backbone}-{cfg.model.variant}-s{cfg.seed}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--datasets", nargs="*", default=[], help="categories to run (default: all four)")
    p.add_argument("--variants", nargs="+", default=["dskd", "se_only", "sd_only"])
    p.add_argument("--backbones", nargs="+", default=["efficientnet_lite0"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--rules", action="store_true", help="replay the candidate rules on the trajectories so far")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.rules:
        from benchmarks.stopping_rules import write_rules

        write_rules(OUT)
        return
    device = resolve_device("auto")
    log.info("machine: %s", machine())
    for cfg in configs(args):
        if not Path(cfg.data_root).is_dir():
            continue
        trajectory(cfg, OUT / f"{name_of(cfg)}.csv", device)


if __name__ == "__main__":
    main()
