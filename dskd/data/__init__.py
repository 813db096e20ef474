"""Datasets: `load_dataset(name, root, category, split, image_size)` for every benchmark the paper uses,
plus the embedded synthetic default. `root` may be the dataset's own folder or a parent holding
`mvtec_ad/`, `mvtec3d/`, `mt_defects/` and `synthetic/`."""

from __future__ import annotations

from pathlib import Path

from ..errors import DskdError
from . import synthetic
from .datasets import (
    MT_DEFECT_TYPES,
    MVTEC3D_CATEGORIES,
    MVTEC_AD_CATEGORIES,
    MVTEC_AD_TEXTURES,
    AnomalyDataset,
    Sample,
    mt_defects_samples,
    mvtec3d_samples,
    mvtec_ad_samples,
    read_image,
    resolve_root,
)

DATASETS = ("mvtec_ad", "mvtec3d", "mt_defects", "synthetic")
OFFICIAL_CATEGORIES = {
    "mvtec_ad": MVTEC_AD_CATEGORIES,
    "mvtec3d": MVTEC3D_CATEGORIES,
    "mt_defects": ("mt_defects",),
    "synthetic": synthetic.CATEGORIES,
}


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DskdError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")


def dataset_root(name: str, root: Path | str) -> Path:
    _check_name(name)
    if name == "synthetic":
        root = Path(root)
        return root if root.name == "synthetic" else root / "synthetic"
    return resolve_root(name, root)


def categories(name: str, root: Path | str | None = None) -> list[str]:
    """The categories present under `root` (for `synthetic`, its fixed names, present or not)."""
    _check_name(name)
    if name == "synthetic" or root is None:
        return list(OFFICIAL_CATEGORIES[name])
    if name == "mt_defects":
        return ["mt_defects"] if (dataset_root(name, root) / "MT_Free").is_dir() else []
    d = dataset_root(name, root)
    return [c for c in OFFICIAL_CATEGORIES[name] if (d / c / "train").is_dir()]


def load_dataset(name: str, root: Path | str, category: str, split: str, image_size: int = 256, *,
                 require_masks: bool = True, split_file: Path | str | None = None,
                 fit_mode: str = "stretch") -> AnomalyDataset:
    _check_name(name)
    if split not in ("train", "test"):
        raise DskdError(f"split must be 'train' or 'test', got '{split}'")
    d = dataset_root(name, root)
    if name == "synthetic":
        if category not in synthetic.CATEGORIES:
            raise DskdError(f"unknown synthetic category '{category}'; choose one of {', '.join(synthetic.CATEGORIES)}")
        synthetic.ensure_synthetic(d, (category,))
        samples = mvtec_ad_samples(d, category, split, require_masks)
    elif name == "mvtec_ad":
        samples = mvtec_ad_samples(d, category, split, require_masks)
    elif name == "mvtec3d":
        samples = mvtec3d_samples(d, category, split, require_masks)
    else:
        samples = mt_defects_samples(d, category, split, require_masks, split_file)
    return AnomalyDataset(samples, image_size, where=f"{d} ({name}/{category}/{split})", fit_mode=fit_mode)


__all__ = [
    "DATASETS", "MT_DEFECT_TYPES", "MVTEC3D_CATEGORIES", "MVTEC_AD_CATEGORIES", "MVTEC_AD_TEXTURES",
    "AnomalyDataset", "Sample", "categories", "dataset_root", "load_dataset", "read_image",
]
