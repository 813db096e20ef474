"""The saved-maps archive (`maps.npz`): one schema, written and read only here.

What evaluation computed for every test image (the image as the network saw it, its mask, the fused map and
score, each student's map and each student's native per-scale maps, a cross-fitted model's score by each student
set), together with what is needed to fuse those again exactly as the run did: its fusion settings and the
normalization statistics fitted on training images.
Ablations, figures and the explorer read an archive instead of running the network again.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..errors import DskdError
from ..model.config import N_SCALES, ModelConfig

VERSION = 4  # 3: the pixel threshold; 4: a cross-fitted model's scores by each student set
FUSION_FIELDS = ("scale_fusion", "student_fusion", "sigma", "score_share", "map_norm")


@dataclass
class SavedMaps:
    images: np.ndarray  # N x S x S x 3 uint8, as the network saw them
    masks: np.ndarray | None  # N x S x S bool; None when the data has no pixel masks
    labels: np.ndarray  # N, 1 = defective
    scores: np.ndarray  # N float32
    maps: np.ndarray  # N x S x S float16, fused and smoothed
    paths: list[str]
    defect_types: list[str]
    threshold: float  # the run's deployed image-score threshold (`dskd.decision`)
    per_student: dict[str, np.ndarray]  # student -> N x S x S float16, its scales fused and smoothed
    per_scale: dict[str, list[np.ndarray]]  # student -> per scale, N x h x w float32 at the scale's resolution
    norm: np.ndarray  # students x 2 x scales: (location, spread) applied before fusion
    fusion: dict[str, Any]  # the run's FUSION_FIELDS
    valid: np.ndarray | None = None  # N x S x S bool, False on padding; None when nothing is padded
    pixel_threshold: float | None = None  # the deployed outline's threshold; None: not recorded
    flagged: np.ndarray | None = None  # N bool: the deployed decision; None (older archives): score >= threshold
    set_scores: np.ndarray | None = None  # N x K: a cross-fitted model's score by each student set; None: one set

    @property
    def students(self) -> list[str]:
        return list(self.per_scale)

    def verdicts(self) -> np.ndarray:
        """Which test images the run's deployed decision flags (a cross-fitted run's is not a score threshold)."""
        return self.scores >= self.threshold if self.flagged is None else self.flagged.astype(bool)

    @staticmethod
    def fusion_of(model: ModelConfig) -> dict[str, Any]:
        return {k: getattr(model, k) for k in FUSION_FIELDS}


def save(path: Path | str, saved: SavedMaps) -> Path:
    arrays: dict[str, Any] = {
        "version": np.int32(VERSION), "fusion": np.array(json.dumps(saved.fusion)),
        "students": np.array(saved.students), "paths": np.array(saved.paths),
        "defect_types": np.array(saved.defect_types), "threshold": np.float32(saved.threshold),
        "pixel_threshold": np.float32(np.nan if saved.pixel_threshold is None else saved.pixel_threshold),
    }
    for f in dataclasses.fields(SavedMaps):
        value = getattr(saved, f.name)
        if isinstance(value, np.ndarray):
            arrays[f.name] = value
    for name in saved.students:
        arrays[f"student_{name}"] = saved.per_student[name]
        for j, m in enumerate(saved.per_scale[name]):
            arrays[f"scale{j}_{name}"] = m

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    return atomic_write(path, write)


_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def _corrupt(path: Path | str, exc: BaseException) -> DskdError:
    return DskdError(f"{path} is corrupt ({type(exc).__name__}); re-create it with "
                     "'python -m dskd evaluate --run RUN --save-maps'")


def version(path: Path | str) -> int:
    """The archive's schema version (0: written before versions existed); reads nothing else."""
    try:
        with np.load(path) as z:
            return int(z["version"]) if "version" in z.files else 0
    except _UNREADABLE as exc:
        raise _corrupt(path, exc) from exc


def load(path: Path | str) -> SavedMaps:
    """An archive by its file, or by the run folder that holds `maps.npz`."""
    path = Path(path)
    path = path / "maps.npz" if path.is_dir() or path.suffix != ".npz" else path
    if not path.is_file():
        raise DskdError(f"{path} not found; evaluate the run with 'python -m dskd evaluate --run RUN --save-maps'")
    got = version(path)
    if got != VERSION:
        raise DskdError(f"{path} has schema version {got}, this dskd reads {VERSION}; re-create it with "
                        "'python -m dskd evaluate --run RUN --save-maps'")
    try:
        with np.load(path) as z:
            a = {k: z[k] for k in z.files}
    except _UNREADABLE as exc:
        raise _corrupt(path, exc) from exc
    students = [str(s) for s in a["students"]]
    return SavedMaps(
        images=a["images"], masks=a.get("masks"), labels=a["labels"], scores=a["scores"], maps=a["maps"],
        paths=[str(p) for p in a["paths"]], defect_types=[str(t) for t in a["defect_types"]],
        threshold=float(a["threshold"]), per_student={n: a[f"student_{n}"] for n in students},
        per_scale={n: [a[f"scale{j}_{n}"] for j in range(N_SCALES)] for n in students},
        norm=a["norm"], fusion=json.loads(str(a["fusion"])), valid=a.get("valid"), flagged=a.get("flagged"),
        set_scores=a.get("set_scores"),
        pixel_threshold=None if np.isnan(a["pixel_threshold"]) else float(a["pixel_threshold"]),
    )
