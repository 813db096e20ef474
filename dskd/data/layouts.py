"""Readers for each dataset layout: they list `Sample`s (image, mask, label, defect type) and nothing else.

Masks: a dataset without any ground-truth folder is image-level only (its masks are None and evaluation reports
pixel metrics as absent); a dataset with ground truth in which one defective image lacks its mask is an error
(unless `require_masks=False`), and so is a mask without its image.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import DskdError
from .datasets import Sample
from .images import IMAGE_EXTS

MT_DEFECT_TYPES = ("Blowhole", "Break", "Crack", "Fray", "Uneven")
TRAIN_FRACTION, SPLIT_SEED = 0.8, 0  # layouts without a train/test split: a seeded 80/20 split of the good images


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS) if folder.is_dir() else []


def subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if folder.is_dir() else []


def category_dir(root: Path, category: str, marker: str = "train") -> Path:
    d = root / category
    if not d.is_dir():
        present = [c for c in subdirs(root) if (root / c / marker).exists()]
        raise DskdError(f"category '{category}' not found under {root}; present: {', '.join(present) or 'none'}")
    return d


def _defective(images: list[Path], defect: str, mask_of: Callable[[Path], Path] | None,
               require_masks: bool) -> list[Sample]:
    samples = []
    for p in images:
        mask = mask_of(p) if mask_of is not None else None
        if mask is not None and not mask.is_file():
            if require_masks:
                raise DskdError(f"{p}: defective test image has no mask at {mask}; restore it, or pass "
                                "require_masks=False for image-level metrics only")
            mask = None
        samples.append(Sample(p, mask, 1, defect))
    return samples


def _orphan_masks(gt_dir: Path, expected: set[Path], image_of: Callable[[Path], Path]) -> None:
    """A mask whose image is missing means a broken copy of the data: say which, before anything runs."""
    for mask in (m for d in subdirs(gt_dir) for m in images_in(gt_dir / d)):
        if mask not in expected:
            raise DskdError(f"{mask}: mask without its image {image_of(mask)}; restore the image or remove the mask")


def mvtec_samples(root: Path, category: str, split: str, require_masks: bool = True,
                  split_file: str | None = None) -> list[Sample]:
    """MVTec AD, MPDD and the synthetic textures: `train/good`, `test/<type>`, `ground_truth/<type>/*_mask.png`."""
    d = category_dir(root, category)
    if split == "train":
        return [Sample(p, None, 0, "good") for p in images_in(d / "train" / "good")]
    gt = d / "ground_truth"
    good_mask = gt / "good"  # some copies keep an (empty) mask for every good image too: it belongs to its image
    samples = [Sample(p, m if (m := good_mask / f"{p.stem}_mask.png").is_file() else None, 0, "good")
               for p in images_in(d / "test" / "good")]
    for defect in (t for t in subdirs(d / "test") if t != "good"):
        mask_of = (lambda p, t=defect: gt / t / f"{p.stem}_mask.png") if gt.is_dir() else None
        samples += _defective(images_in(d / "test" / defect), defect, mask_of, require_masks)
    if gt.is_dir():
        _orphan_masks(gt, {s.mask for s in samples if s.mask is not None},
                       lambda m: d / "test" / m.parent.name / (m.stem.removesuffix("_mask") + ".png"))
    return samples


def mvtec3d_samples(root: Path, category: str, split: str, require_masks: bool = True,
                    split_file: str | None = None) -> list[Sample]:
    """MVTec 3D-AD, RGB only: `<split>/<type>/rgb/*.png`, masks in `test/<type>/gt/`; `validation/good` too."""
    d = category_dir(root, category)
    if split in ("train", "validation"):
        return [Sample(p, None, 0, "good") for p in images_in(d / split / "good" / "rgb")]
    samples = [Sample(p, None, 0, "good") for p in images_in(d / "test" / "good" / "rgb")]
    for defect in (t for t in subdirs(d / "test") if t != "good"):
        has_gt = (d / "test" / defect / "gt").is_dir()
        mask_of = (lambda p, t=defect: d / "test" / t / "gt" / p.name) if has_gt else None
        samples += _defective(images_in(d / "test" / defect / "rgb"), defect, mask_of, require_masks)
    return samples


def seeded_train_names(names: list[str], split_file: Path | str | None = None, what: str = "good") -> set[str]:
    """Names of the good images used for training: a seeded 80/20 split of the sorted names, or those a split file
    lists (one a line; folders and extensions are ignored when matching)."""
    names = sorted(names)
    if split_file is None:
        order = np.random.default_rng(SPLIT_SEED).permutation(len(names))
        return {names[i] for i in order[: round(TRAIN_FRACTION * len(names))]}
    path = Path(split_file)
    if not path.is_file():
        raise DskdError(f"split file {path} not found; pass a text file with one {what} image name a line")
    by_stem = {Path(n).stem: n for n in names}
    listed = [Path(line.strip()).stem for line in path.read_text().splitlines() if line.strip()]
    unknown = [n for n in listed if n not in by_stem]
    if unknown:
        raise DskdError(f"{path}: {len(unknown)} listed name(s) are not {what} images, e.g. '{unknown[0]}'; "
                        "check the file against the data")
    return {by_stem[n] for n in listed}


def mt_defects_samples(root: Path, category: str, split: str, require_masks: bool = True,
                       split_file: str | None = None) -> list[Sample]:
    """MT Defects: `MT_<Type>/Imgs/*.jpg` with same-named `.png` masks; trained on `MT_Free` images only."""
    if category != "mt_defects":
        raise DskdError(f"MT Defects has one category, 'mt_defects', not '{category}'")
    if not (root / "MT_Free" / "Imgs").is_dir():
        raise DskdError(f"{root} has no MT_Free/Imgs folder; point --data-root at the MT Defects data "
                        f"(present: {', '.join(subdirs(root)) or 'nothing'})")
    free = [p for p in images_in(root / "MT_Free" / "Imgs") if p.suffix.lower() == ".jpg"]
    train_names = seeded_train_names([p.name for p in free], split_file, "MT_Free")
    if split == "train":
        return [Sample(p, None, 0, "good") for p in free if p.name in train_names]
    samples = [Sample(p, None, 0, "good") for p in free if p.name not in train_names]
    for defect in MT_DEFECT_TYPES:
        jpgs = [p for p in images_in(root / f"MT_{defect}" / "Imgs") if p.suffix.lower() == ".jpg"]
        samples += _defective(jpgs, defect, lambda p: p.with_suffix(".png"), require_masks)
    return samples


def folder_samples(root: Path, category: str, split: str, require_masks: bool = True,
                   split_file: str | None = None) -> list[Sample]:
    """A user's own folder, `<category>/good/` and one folder per defect type, masks optional in
    `<category>/ground_truth/<type>/<name>_mask.png`; a seeded 80/20 split of `good/` (or `--split-file`)."""
    d = category_dir(root, category, "good")
    if not (d / "good").is_dir():
        raise DskdError(f"{d} has no good/ folder; put the defect-free images in {d / 'good'}")
    good = images_in(d / "good")
    train_names = seeded_train_names([p.name for p in good], split_file)
    if split == "train":
        return [Sample(p, None, 0, "good") for p in good if p.name in train_names]
    gt = d / "ground_truth"
    samples = [Sample(p, None, 0, "good") for p in good if p.name not in train_names]
    for defect in (t for t in subdirs(d) if t not in ("good", "ground_truth")):
        mask_of = (lambda p, t=defect: gt / t / f"{p.stem}_mask.png") if gt.is_dir() else None
        samples += _defective(images_in(d / defect), defect, mask_of, require_masks)
    return samples


def labelled_samples(folder: Path) -> list[Sample]:
    """Every image of a labelled folder, for choosing a threshold on it: `good/` and one folder per defect type
    (masks are not read)."""
    if not (folder / "good").is_dir():
        raise DskdError(f"{folder} has no good/ folder; a labelled folder holds good/ and one folder per defect type")
    samples = [Sample(p, None, 0, "good") for p in images_in(folder / "good")]
    for defect in (t for t in subdirs(folder) if t not in ("good", "ground_truth")):
        samples += [Sample(p, None, 1, defect) for p in images_in(folder / defect)]
    if not samples or all(s.label for s in samples) or not any(s.label for s in samples):
        raise DskdError(f"{folder} needs good images and defective ones (a folder per defect type beside good/) "
                        "to choose an F1-max threshold")
    return samples
