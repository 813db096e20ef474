"""Datasets as a registry: `load_dataset(name, root, category, split, image_size)` for every benchmark the paper
uses, MPDD, a user's own folder, and the embedded synthetic default. Adding a dataset is one `DatasetSpec` and
one reader. `root` may be the dataset's own folder or a parent holding it under one of its known folder names."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DskdError
from . import synthetic
from .datasets import AnomalyDataset, Sample
from .images import read_image
from .layouts import (
    MT_DEFECT_TYPES,
    folder_samples,
    labelled_samples,
    mt_defects_samples,
    mvtec3d_samples,
    mvtec_samples,
    subdirs,
)

log = logging.getLogger(__name__)
Reader = Callable[..., list[Sample]]  # (root, category, split, require_masks, split_file) -> samples


# The quick profile's image size by kind of image (docs/findings.md sections 15 and 22). Epochs: one run of a
# 250-image category trains in at most 10 minutes on a 2-core CPU at that size.
PHOTOGRAPHS = "photographs of objects and textures: the field's standard 256 px"
QUICK_EPOCHS_256 = 10


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str  # as tables name it
    reader: Reader
    categories: tuple[str, ...]  # the official ones; empty: whatever folders the data root holds
    folder_names: tuple[str, ...]  # names the dataset's folder may have under a common data root, preferred first
    marker: str = "train"  # what a category folder holds (or, for single-category layouts, the dataset folder)
    textures: tuple[str, ...] = ()  # categories averaged as textures in tables (the rest are objects)
    standard_split: str | None = None  # the field's usual training list, relative to the dataset's folder
    validation: bool = False  # the data has its own folder of good validation images (used instead of carving one)
    quick: tuple[int, int, str] = (256, QUICK_EPOCHS_256, PHOTOGRAPHS)  # the quick profile's size, epochs, and why

    def standard_split_file(self, root: Path | str) -> str | None:
        """The usual protocol's training list when it lies beside the data (MT Defects: DifferNet's 761 images),
        so that tables use the split the published numbers used."""
        if self.standard_split is None:
            return None
        path = dataset_root(self.name, root) / self.standard_split
        return str(path.resolve()) if path.is_file() else None

    def looks_like(self, folder: Path) -> bool:
        """Does `folder` have this dataset's layout (rather than being a parent of it)?"""
        if self.name == "synthetic":
            return folder.name == "synthetic"
        if self.categories == (self.name,):  # a single-category layout: the marker sits in the dataset's folder
            return (folder / self.marker).is_dir()
        return any((folder / c / self.marker).is_dir() for c in self.categories or subdirs(folder))


MVTEC_AD_CATEGORIES = ("carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut",
                       "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper")
MVTEC_AD_TEXTURES = MVTEC_AD_CATEGORIES[:5]
MVTEC3D_CATEGORIES = ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire")
MPDD_CATEGORIES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")

REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("mvtec_ad", "MVTec AD", mvtec_samples, MVTEC_AD_CATEGORIES,
                ("mvtec_ad", "mvtec_anomaly_detection", "mvtec"), textures=MVTEC_AD_TEXTURES),
    DatasetSpec("mvtec3d", "MVTec 3D-AD (RGB)", mvtec3d_samples, MVTEC3D_CATEGORIES,
                ("mvtec3d", "mvtec_3d_anomaly_detection", "mvtec_3d"), validation=True),
    DatasetSpec("mt_defects", "MT Defects", mt_defects_samples, ("mt_defects",),
                ("mt_defects", "Magnetic-tile-defect-datasets.", "Magnetic-tile-defect-datasets"), marker="MT_Free",
                standard_split="splits/differnet_train_free.txt",
                quick=(128, 21, "small grayscale tiles: 128 px measured best (docs/findings.md sections 2, 7, 15)")),
    DatasetSpec("mpdd", "MPDD", mvtec_samples, MPDD_CATEGORIES, ("mpdd", "MPDD")),
    DatasetSpec("folder", "own folder", folder_samples, (), (), marker="good"),
    DatasetSpec("synthetic", "synthetic textures", mvtec_samples, synthetic.CATEGORIES, ("synthetic",),
                quick=(128, 21, "generated at 128 px")),
)}
DATASETS = tuple(REGISTRY)


def get_dataset(name: str) -> DatasetSpec:
    if name not in REGISTRY:
        raise DskdError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    return REGISTRY[name]


def dataset_root(name: str, root: Path | str) -> Path:
    """The dataset's own folder: `root` itself when it has the layout, else `root/<known folder name>`."""
    spec = get_dataset(name)
    root = Path(root).expanduser()
    if name == "synthetic":
        return root if root.name == "synthetic" else root / "synthetic"
    if not root.is_dir():
        raise DskdError(f"data root {root} does not exist; pass --data-root pointing at the extracted {name} data")
    if spec.looks_like(root):
        return root
    for folder in spec.folder_names:
        if (root / folder).is_dir() and spec.looks_like(root / folder):
            return root / folder
    return root


def categories(name: str, root: Path | str | None = None) -> list[str]:
    """The categories present under `root` (for `synthetic`, or without a root, the official names)."""
    spec = get_dataset(name)
    if name == "synthetic" or (root is None and spec.categories):
        return list(spec.categories)
    if root is None:
        return []
    d = dataset_root(name, root)
    if spec.categories == (name,):
        return [name] if (d / spec.marker).is_dir() else []
    wanted = spec.categories or tuple(subdirs(d))
    return [c for c in wanted if (d / c / spec.marker).is_dir()]


SPLITS = ("train", "val", "test")
VAL_MIN = 8  # the fewest validation images held out: fewer cannot place a threshold usefully (README, thresholds)


def load_dataset(name: str, root: Path | str, category: str, split: str, image_size: int = 256, *,
                 require_masks: bool = True, split_file: Path | str | None = None,
                 fit_mode: str = "stretch", val_fraction: float = 0.0, seed: int = 0, folds: int = 1,
                 fold: int | None = None) -> AnomalyDataset:
    """One split of a dataset. `val` is the good images that set the decision threshold and are never trained on:
    the data's own validation folder where it has one, else a seeded `val_fraction` (at least `VAL_MIN` images)
    of the good training images, which `train` then leaves out. `val_fraction=0`: no validation split.

    Cross-fitting (`folds` >= 2) pools every good image (training and validation folders) and deals it, seeded,
    into `folds` folds (`fold_of`): `val` is fold `fold`, `train` the others (all of them with `fold=None`)."""
    spec = get_dataset(name)
    if split not in SPLITS:
        raise DskdError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
    d = dataset_root(name, root)
    if name == "synthetic":
        if category not in synthetic.CATEGORIES:
            raise DskdError(f"unknown synthetic category '{category}'; choose one of {', '.join(synthetic.CATEGORIES)}")
        synthetic.ensure_synthetic(d, (category,))
    where = f"{d} ({name}/{category}/{split})"
    which = None
    if split == "test":
        samples = spec.reader(d, category, split, require_masks, split_file)
    else:
        train, val, which = _cross_fit(spec, d, category, split_file, folds, fold, seed) if folds > 1 else \
            (*_train_and_val(spec, d, category, split_file, val_fraction, seed), None)
        samples = train if split == "train" else val
        if not val and val_fraction > 0 and split == "train" and folds == 1:
            log.warning("%s: %d good training images are too few to hold out %d for validation (and keep as many "
                        "for training): none held out, the threshold comes from the training images; add images, "
                        "or pass --val-fraction 0 to say so", where, len(train), VAL_MIN)
        if split == "val" and not samples:
            raise NoValidationSplit(f"{where}: no validation split (val_fraction {val_fraction}, {len(train)} "
                                    "good training images)")
    pool = split == "train" and folds > 1 and fold is None
    return AnomalyDataset(samples, image_size, where=where, fit_mode=fit_mode, folds=which if pool else None)


RUN_PARTS = {"train": "train", "held_out": "val", "test": "test"}  # what a run sees -> the split it is


def run_images(run: Any, part: str, data_root: Path | str | None = None) -> AnomalyDataset:
    """The images a run sees (`run`: its settings, `dskd.run.config.RunConfig`), read in this one place so that
    training, deciding, exporting, evaluating and the benchmarks agree. `train`: what it trains on (cross-fitted:
    every good image, with each one's fold; set k: all folds but k); `held_out`: the good images it never trains on
    (the validation split; set k: fold k; `NoValidationSplit` where it has none); `test`: the test split.
    `data_root` reads the same images where the data has moved."""
    return load_dataset(run.dataset, data_root or run.data_root, run.category, RUN_PARTS[part], run.image_size,
                        split_file=run.split_file, fit_mode=run.fit_mode, val_fraction=run.val_fraction,
                        seed=run.seed, folds=run.folds, fold=run.fold)


def held_out_images(run: Any, data_root: Path | str | None = None) -> AnomalyDataset | None:
    """`run_images(run, "held_out")`, or None where the run holds no good image out."""
    try:
        return run_images(run, "held_out", data_root)
    except NoValidationSplit:
        return None


class NoValidationSplit(DskdError):
    """Asked for the validation split of data that has none (val_fraction 0, or too few images to carve one)."""


def _train_and_val(spec: DatasetSpec, d: Path, category: str, split_file: Path | str | None, fraction: float,
                   seed: int) -> tuple[list[Sample], list[Sample]]:
    train = spec.reader(d, category, "train", False, split_file)
    if fraction <= 0:
        return train, []
    if spec.validation:
        val = spec.reader(d, category, "validation", False, split_file)
        if val:
            return train, val
    n_val = max(VAL_MIN, round(fraction * len(train)))
    if len(train) - n_val < n_val:
        return train, []
    held = set(np.random.default_rng(seed).permutation(len(train))[:n_val].tolist())
    return [s for i, s in enumerate(train) if i not in held], [s for i, s in enumerate(train) if i in held]


def fold_of(n: int, folds: int, seed: int) -> np.ndarray:
    """Each of n images' fold: a seeded shuffle dealt round-robin, so folds differ in size by one at most."""
    fold = np.empty(n, np.int64)
    fold[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    return fold


def _cross_fit(spec: DatasetSpec, d: Path, category: str, split_file: Path | str | None, folds: int,
               fold: int | None, seed: int) -> tuple[list[Sample], list[Sample], np.ndarray]:
    """(the images set `fold` trains on, fold `fold`, each pooled image's fold); with `fold=None`, the whole pool."""
    pool = spec.reader(d, category, "train", False, split_file)
    if spec.validation:
        pool += spec.reader(d, category, "validation", False, split_file)
    if len(pool) < 2 * folds:
        raise DskdError(f"{d}: {len(pool)} good images are too few for {folds} folds (each fold needs 2 to score "
                        "and the others to train on); lower --folds")
    which = fold_of(len(pool), folds, seed)
    if fold is None:
        return pool, [], which
    return [s for s, f in zip(pool, which, strict=True) if f != fold], \
        [s for s, f in zip(pool, which, strict=True) if f == fold], which


__all__ = [
    "DATASETS", "MT_DEFECT_TYPES", "MVTEC3D_CATEGORIES", "MVTEC_AD_CATEGORIES", "MVTEC_AD_TEXTURES", "REGISTRY",
    "SPLITS", "VAL_MIN", "AnomalyDataset", "DatasetSpec", "NoValidationSplit", "Sample", "categories",
    "dataset_root", "fold_of", "get_dataset", "held_out_images", "labelled_samples", "load_dataset", "read_image",
    "run_images",
]
