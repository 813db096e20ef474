"""Datasets as a registry: `load_dataset(name, root, category, split, image_size)` for every benchmark the paper
uses, MPDD, a user's own folder, and the embedded synthetic default. Adding a dataset is one `DatasetSpec` and
one reader. `root` may be the dataset's own folder or a parent holding it under one of its known folder names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DskdError
from . import synthetic
from .datasets import AnomalyDataset, Sample
from .images import read_image
from .layouts import MT_DEFECT_TYPES, folder_samples, mt_defects_samples, mvtec3d_samples, mvtec_samples, subdirs

Reader = Callable[..., list[Sample]]  # (root, category, split, require_masks, split_file) -> samples


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
                ("mvtec3d", "mvtec_3d_anomaly_detection", "mvtec_3d")),
    DatasetSpec("mt_defects", "MT Defects", mt_defects_samples, ("mt_defects",),
                ("mt_defects", "Magnetic-tile-defect-datasets.", "Magnetic-tile-defect-datasets"), marker="MT_Free",
                standard_split="splits/differnet_train_free.txt"),
    DatasetSpec("mpdd", "MPDD", mvtec_samples, MPDD_CATEGORIES, ("mpdd", "MPDD")),
    DatasetSpec("folder", "own folder", folder_samples, (), (), marker="good"),
    DatasetSpec("synthetic", "synthetic textures", mvtec_samples, synthetic.CATEGORIES, ("synthetic",)),
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


def load_dataset(name: str, root: Path | str, category: str, split: str, image_size: int = 256, *,
                 require_masks: bool = True, split_file: Path | str | None = None,
                 fit_mode: str = "stretch") -> AnomalyDataset:
    spec = get_dataset(name)
    if split not in ("train", "test"):
        raise DskdError(f"split must be 'train' or 'test', got '{split}'")
    d = dataset_root(name, root)
    if name == "synthetic":
        if category not in synthetic.CATEGORIES:
            raise DskdError(f"unknown synthetic category '{category}'; choose one of {', '.join(synthetic.CATEGORIES)}")
        synthetic.ensure_synthetic(d, (category,))
    samples = spec.reader(d, category, split, require_masks, split_file)
    return AnomalyDataset(samples, image_size, where=f"{d} ({name}/{category}/{split})", fit_mode=fit_mode)


__all__ = [
    "DATASETS", "MT_DEFECT_TYPES", "MVTEC3D_CATEGORIES", "MVTEC_AD_CATEGORIES", "MVTEC_AD_TEXTURES", "REGISTRY",
    "AnomalyDataset", "DatasetSpec", "Sample", "categories", "dataset_root", "get_dataset", "load_dataset",
    "read_image",
]
