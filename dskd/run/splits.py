"""The images a run sees, read in one place so that training, deciding, exporting, evaluating and the benchmarks
agree: the good images it trains on, the good images held out of its training (they stop it and set its decision),
and its test split. Which image falls where (the seeded hold-out, cross-fitting's folds) is the data layer's
(`dskd.data.load_dataset`); a run's settings say which part it asks for."""

from __future__ import annotations

from pathlib import Path

from ..data import AnomalyDataset, NoValidationSplit, load_dataset
from .config import RunConfig

PARTS = {"train": "train", "held_out": "val", "test": "test"}


def run_images(cfg: RunConfig, part: str, data_root: str | Path | None = None) -> AnomalyDataset:
    """`train`: what the run trains on (a cross-fitted run: every good image; set k: all folds but k);
    `held_out`: the good images it never trains on (the validation split; set k: fold k), `NoValidationSplit` where
    it has none; `test`: the test split. `data_root` reads the same images where the data has moved."""
    return load_dataset(cfg.dataset, data_root or cfg.data_root, cfg.category, PARTS[part], cfg.image_size,
                        split_file=cfg.split_file, fit_mode=cfg.fit_mode, val_fraction=cfg.val_fraction,
                        seed=cfg.seed, folds=cfg.folds, fold=cfg.fold)


def held_out_or_none(cfg: RunConfig, data_root: str | Path | None = None) -> AnomalyDataset | None:
    """The run's held-out good images, or None where it holds none out (`val_fraction` 0, too few images)."""
    try:
        return run_images(cfg, "held_out", data_root)
    except NoValidationSplit:
        return None
