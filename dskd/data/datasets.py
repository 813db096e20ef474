"""One Dataset type that serves every layout: the readers in `layouts.py` only list `Sample`s; decoding,
resizing and every check on the files happen here, so all datasets behave alike on bad input."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DskdError
from .images import content_mask, fit_to_square, image_size, read_image, read_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    path: Path
    mask: Path | None
    label: int
    defect_type: str


class AnomalyDataset:
    """A map-style dataset (needs no PyTorch until an item is asked for). Items: image (3xSxS float tensor in
    [0, 1]), mask (1xSxS, 0/1), label, defect_type, path."""

    def __init__(self, samples: Sequence[Sample], image_size: int, where: str, fit_mode: str = "stretch",
                 check_sizes: bool = True, folds: np.ndarray | None = None) -> None:
        if not samples:
            raise DskdError(f"{where}: no images found for this split; check the folder layout")
        self.samples = list(samples)
        self.folds = folds  # cross-fitting's pool of good images: each one's fold (`dskd.data.fold_of`)
        self.image_size = image_size
        self.fit_mode = fit_mode
        self.where = where
        if check_sizes:
            for s in self.samples:
                if s.mask is not None:
                    _check_mask_size(s)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def has_masks(self) -> bool:
        """Whether pixel metrics can be computed: every defective image has a mask."""
        return all(s.mask is not None for s in self.samples if s.label == 1)

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
        return np.stack([content_mask(*image_size(s.path), self.image_size, self.fit_mode) for s in self.samples])

    def __getitem__(self, i: int) -> dict:
        import torch

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


def _check_mask_size(s: Sample) -> None:
    try:
        a, b = image_size(s.path), image_size(s.mask)
    except DskdError:
        return  # an unreadable file is reported, with every other one, when the images are decoded
    if a != b:
        raise DskdError(f"{s.mask}: mask is {b[0]}x{b[1]} but its image {s.path} is {a[0]}x{a[1]}; "
                        "replace the mask")
