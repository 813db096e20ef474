"""Readers for the benchmarks' official layouts, and one Dataset type that serves them all.

Each layout only lists `Sample`s (image, mask, label, defect type); decoding, resizing and every check on
the files happen in one place, `AnomalyDataset`, so all benchmarks behave alike on bad input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DskdError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

MVTEC_AD_CATEGORIES = ("carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut",
                       "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper")
MVTEC_AD_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
MVTEC3D_CATEGORIES = ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire")
MT_DEFECT_TYPES = ("Blowhole", "Break", "Crack", "Fray", "Uneven")
MT_TRAIN_FRACTION, MT_SPLIT_SEED = 0.8, 0

# Folder names a dataset may have under a common data root (`<root>/<name>`), the first one preferred.
FOLDER_NAMES = {
    "mvtec_ad": ("mvtec_ad", "mvtec_anomaly_detection", "mvtec"),
    "mvtec3d": ("mvtec3d", "mvtec_3d_anomaly_detection", "mvtec_3d"),
    "mt_defects": ("mt_defects", "Magnetic-tile-defect-datasets.", "Magnetic-tile-defect-datasets"),
    "synthetic": ("synthetic",),
}


@dataclass(frozen=True)
class Sample:
    path: Path
    mask: Path | None
    label: int
    defect_type: str


def read_image(path: Path | str) -> np.ndarray:
    """H x W x 3 uint8. Grayscale, palette and RGBA become RGB; 16-bit images are scaled to 8 bits."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float64)
                a = np.round(a / (65535.0 if a.max() > 255 else 255.0) * 255.0).clip(0, 255).astype(np.uint8)
                return np.repeat(a[..., None], 3, axis=2)
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise DskdError(f"{path}: unreadable or truncated image ({exc}); re-extract or remove the file") from exc


def read_mask(path: Path | str) -> np.ndarray:
    """H x W bool, non-zero = defect."""
    try:
        with Image.open(path) as im:
            im.load()
            a = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DskdError(f"{path}: unreadable or truncated mask ({exc}); re-extract or remove the file") from exc
    return (a.max(axis=2) if a.ndim == 3 else a) > 0


def content_box(width: int, height: int, size: int, mode: str) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image inside its size x size input; the rest is padding."""
    if mode == "stretch" or width == height:
        return 0, 0, size, size
    scale = size / max(width, height)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return (size - h) // 2, (size - w) // 2, h, w


def content_mask(width: int, height: int, size: int, mode: str) -> np.ndarray:
    """size x size bool: True where the input shows the image, False on padding."""
    top, left, h, w = content_box(width, height, size, mode)
    mask = np.zeros((size, size), bool)
    mask[top: top + h, left: left + w] = True
    return mask


def fit_to_square(arr: np.ndarray, size: int, resample: int, mode: str) -> np.ndarray:
    """Resize to size x size: `stretch` ignores the aspect ratio, `pad` keeps it and pads with zeros."""
    im = Image.fromarray(arr)
    top, left, h, w = content_box(im.width, im.height, size, mode)
    if (h, w) == (size, size):
        return np.asarray(im.resize((size, size), resample))
    small = np.asarray(im.resize((w, h), resample))
    out = np.zeros((size, size, *small.shape[2:]), dtype=small.dtype)
    out[top: top + h, left: left + w] = small
    return out


class AnomalyDataset(Dataset):
    """Items: image (3xSxS float in [0, 1]), mask (1xSxS, 0/1), label, defect_type, path."""

    def __init__(self, samples: Sequence[Sample], image_size: int, where: str, fit_mode: str = "stretch",
                 check_sizes: bool = True) -> None:
        if not samples:
            raise DskdError(f"{where}: no images found for this split; check the folder layout")
        self.samples = list(samples)
        self.image_size = image_size
        self.fit_mode = fit_mode
        if check_sizes:
            for s in self.samples:
                if s.mask is not None:
                    self._check_mask_size(s)

    @staticmethod
    def _check_mask_size(s: Sample) -> None:
        try:
            with Image.open(s.path) as a, Image.open(s.mask) as b:
                if a.size != b.size:
                    raise DskdError(f"{s.mask}: mask is {b.size[0]}x{b.size[1]} but its image {s.path.name} is "
                                    f"{a.size[0]}x{a.size[1]}; replace the mask")
        except OSError as exc:
            raise DskdError(f"{s.path}: unreadable image or mask ({exc}); re-extract or remove the file") from exc

    def __len__(self) -> int:
        return len(self.samples)

    def load_uint8(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(S x S x 3 uint8 image, S x S bool mask), resized; what the in-memory cache stores."""
        s = self.samples[i]
        img = read_image(s.path)
        mask = read_mask(s.mask) if s.mask is not None else np.zeros(img.shape[:2], bool)
        img = fit_to_square(img, self.image_size, Image.BILINEAR, self.fit_mode)
        mask = fit_to_square(mask.astype(np.uint8) * 255, self.image_size, Image.NEAREST, self.fit_mode) > 127
        return img, mask

    def valid_masks(self) -> np.ndarray | None:
        """N x S x S bool, True where the input shows the image (not padding); None where nothing is padded.

        Padding is not part of the image: scores and pixel metrics must not see it (an easy, defect-free
        region that would inflate pixel AUROC and AUPRO)."""
        if self.fit_mode == "stretch":
            return None
        sizes = []
        for s in self.samples:
            with Image.open(s.path) as im:  # reads the header only
                sizes.append(im.size)
        return np.stack([content_mask(w, h, self.image_size, self.fit_mode) for w, h in sizes])

    def __getitem__(self, i: int) -> dict:
        img, mask = self.load_uint8(i)
        s = self.samples[i]
        return {
            "image": torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div_(255.0),
            "mask": torch.from_numpy(np.array(mask)).unsqueeze(0).float(),
            "label": s.label,
            "defect_type": s.defect_type,
            "path": str(s.path),
        }

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples])

    @property
    def defect_types(self) -> list[str]:
        return [s.defect_type for s in self.samples]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS) if folder.is_dir() else []


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if folder.is_dir() else []


def resolve_root(name: str, root: Path | str) -> Path:
    """The dataset's own folder: `root` itself when it has the layout, else `root/<known folder name>`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DskdError(f"data root {root} does not exist; pass --data-root pointing at the extracted {name} data")
    looks_right = {
        "mt_defects": lambda p: (p / "MT_Free").is_dir(),
        "mvtec_ad": lambda p: any((p / c / "train").is_dir() for c in MVTEC_AD_CATEGORIES),
        "mvtec3d": lambda p: any((p / c / "train").is_dir() for c in MVTEC3D_CATEGORIES),
        "synthetic": lambda p: p.name == "synthetic",
    }[name]
    if looks_right(root):
        return root
    for folder in FOLDER_NAMES[name]:
        if (root / folder).is_dir() and (name == "synthetic" or looks_right(root / folder)):
            return root / folder
    return root


def _category_dir(root: Path, category: str, present: list[str]) -> Path:
    d = root / category
    if not d.is_dir():
        raise DskdError(f"category '{category}' not found under {root}; present: {', '.join(present) or 'none'}")
    return d


def _missing_mask(mask: Path, image: Path) -> DskdError:
    return DskdError(f"{image}: defective test image has no mask at {mask}; restore it, or pass "
                     "require_masks=False for image-level metrics only")


def mvtec_ad_samples(root: Path, category: str, split: str, require_masks: bool = True) -> list[Sample]:
    d = _category_dir(root, category, [c for c in _subdirs(root) if (root / c / "train").is_dir()])
    if split == "train":
        return [Sample(p, None, 0, "good") for p in _images(d / "train" / "good")]
    samples = []
    for defect in _subdirs(d / "test"):
        for p in _images(d / "test" / defect):
            if defect == "good":
                samples.append(Sample(p, None, 0, "good"))
                continue
            mask = d / "ground_truth" / defect / f"{p.stem}_mask.png"
            if not mask.is_file():
                if require_masks:
                    raise _missing_mask(mask, p)
                mask = None
            samples.append(Sample(p, mask, 1, defect))
    return samples


def mvtec3d_samples(root: Path, category: str, split: str, require_masks: bool = True) -> list[Sample]:
    d = _category_dir(root, category, [c for c in _subdirs(root) if (root / c / "train").is_dir()])
    if split == "train":
        return [Sample(p, None, 0, "good") for p in _images(d / "train" / "good" / "rgb")]
    samples = []
    for defect in _subdirs(d / "test"):
        for p in _images(d / "test" / defect / "rgb"):
            if defect == "good":
                samples.append(Sample(p, None, 0, "good"))
                continue
            mask = d / "test" / defect / "gt" / p.name
            if not mask.is_file():
                if require_masks:
                    raise _missing_mask(mask, p)
                mask = None
            samples.append(Sample(p, mask, 1, defect))
    return samples


def mt_free_split(free: list[Path], split_file: Path | str | None) -> set[str]:
    """Names of the MT_Free images used for training.

    Default: a seeded permutation (seed 0) of the sorted names, the first 80% for training. With
    `split_file`: the names it lists (one a line; folders and extensions are ignored when matching).
    """
    names = sorted(p.name for p in free)
    if split_file is None:
        order = np.random.default_rng(MT_SPLIT_SEED).permutation(len(names))
        return {names[i] for i in order[: round(MT_TRAIN_FRACTION * len(names))]}
    path = Path(split_file)
    if not path.is_file():
        raise DskdError(f"split file {path} not found; pass a text file with one MT_Free image name a line")
    by_stem = {Path(n).stem: n for n in names}
    listed = [Path(line.strip()).stem for line in path.read_text().splitlines() if line.strip()]
    unknown = [n for n in listed if n not in by_stem]
    if unknown:
        raise DskdError(f"{path}: {len(unknown)} listed name(s) are not MT_Free images, e.g. '{unknown[0]}'; "
                        "check the file against the data")
    return {by_stem[n] for n in listed}


def mt_defects_samples(root: Path, category: str, split: str, require_masks: bool = True,
                       split_file: Path | str | None = None) -> list[Sample]:
    if category != "mt_defects":
        raise DskdError(f"MT Defects has one category, 'mt_defects', not '{category}'")
    if not (root / "MT_Free" / "Imgs").is_dir():
        raise DskdError(f"{root} has no MT_Free/Imgs folder; point --data-root at the MT Defects data "
                        f"(present: {', '.join(_subdirs(root)) or 'nothing'})")
    free = [p for p in _images(root / "MT_Free" / "Imgs") if p.suffix.lower() == ".jpg"]
    train_names = mt_free_split(free, split_file)
    if split == "train":
        return [Sample(p, None, 0, "good") for p in free if p.name in train_names]
    samples = [Sample(p, None, 0, "good") for p in free if p.name not in train_names]
    for defect in MT_DEFECT_TYPES:
        for p in _images(root / f"MT_{defect}" / "Imgs"):
            if p.suffix.lower() != ".jpg":
                continue
            mask = p.with_suffix(".png")
            if not mask.is_file():
                if require_masks:
                    raise _missing_mask(mask, p)
                mask = None
            samples.append(Sample(p, mask, 1, defect))
    return samples
