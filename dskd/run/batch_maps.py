"""Images decoded once into memory, and anomaly maps computed over them in batches."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import AnomalyDataset
from ..errors import DskdError
from ..model.maps import AnomalyOutput
from ..model.network import DSKD
from .folder import LoadedRun, autocast


def preload(dataset: AnomalyDataset, workers: int = 2, desc: str = "loading",
            quiet: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All images (N x 3 x S x S uint8) and masks (N x S x S bool) decoded once, in parallel, before anything
    trains. Every unreadable file is collected and reported in one message, never as a worker's traceback."""
    n, s = len(dataset), dataset.image_size
    images = torch.empty(n, 3, s, s, dtype=torch.uint8)
    masks = torch.empty(n, s, s, dtype=torch.bool)
    failed: list[str] = []
    loader = DataLoader(range(n), batch_size=16, num_workers=min(workers, n), collate_fn=_DecodeBatch(dataset))
    for idx, img, mask, errors in tqdm(loader, desc=desc, leave=False, disable=quiet or n < 64):
        images[idx], masks[idx] = img, mask
        failed += errors
    if failed:
        shown = "; ".join(failed[:5]) + (f"; and {len(failed) - 5} more" if len(failed) > 5 else "")
        raise DskdError(f"{len(failed)} unreadable file(s) in {dataset.where}: {shown}; re-extract or remove them")
    return images, masks


class _DecodeBatch:
    """Decodes a batch of samples in a worker; a file that cannot be read becomes a message, not an exception."""

    def __init__(self, dataset: AnomalyDataset) -> None:
        self.dataset = dataset

    def __call__(self, idx: list[int]):
        s, errors = self.dataset.image_size, []
        img = np.zeros((len(idx), s, s, 3), np.uint8)
        mask = np.zeros((len(idx), s, s), bool)
        for k, i in enumerate(idx):
            try:
                img[k], mask[k] = self.dataset.load_uint8(i)
            except DskdError as exc:
                errors.append(str(exc).split("; re-extract")[0])
        return torch.tensor(idx), torch.from_numpy(img).permute(0, 3, 1, 2), torch.from_numpy(mask), errors


def valid_tensor(dataset: AnomalyDataset) -> torch.Tensor | None:
    valid = dataset.valid_masks()
    return None if valid is None else torch.from_numpy(valid)


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 N x 3 x S x S -> float in [0, 1] on the device, what the model takes."""
    return images.to(device, non_blocking=True).float().div_(255.0)


@torch.inference_mode()
def maps_in_batches(model: DSKD, images: torch.Tensor, device: torch.device, batch_size: int, precision: str,
                    *, desc: str = "maps", quiet: bool = True, valid: torch.Tensor | None = None,
                    keep_students: bool = True, fused: bool = True,
                    ) -> Iterator[tuple[slice, dict[str, list[torch.Tensor]], AnomalyOutput | None]]:
    """Yield (slice, native per-scale maps in float32, AnomalyOutput) over a uint8 image tensor; `valid`
    (N x H x W bool, None: no padding) keeps padding out of the scores; `keep_students=False` leaves the
    per-student maps out (faster); `fused=False` yields the native maps alone (None in place of the output)."""
    model.eval()
    for i in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, disable=quiet):
        sl = slice(i, min(i + batch_size, len(images)))
        x = to_input(images[sl], device)
        with autocast(device, precision):
            native = model.native_maps(x)
        native = {k: [m.float() for m in v] for k, v in native.items()}
        if not fused:
            yield sl, native, None
            continue
        yield sl, native, model.fuse(native, x.shape[-2:], valid=None if valid is None else valid[sl],
                                     keep_students=keep_students)


def scored(loaded: LoadedRun, dataset: AnomalyDataset, quiet: bool) -> np.ndarray:
    """The image scores of a dataset's images."""
    images, _ = preload(dataset, desc=f"loading {dataset.where}", quiet=quiet)
    return all_maps(loaded, images, valid_tensor(dataset), False, quiet)[1]


def all_maps(loaded: LoadedRun, images: torch.Tensor, valid: torch.Tensor | None, keep: bool, quiet: bool):
    """Fused maps and scores of every image; with `keep`, also each student's map and native per-scale maps; a
    cross-fitted model's scores by each student set too (else None)."""
    model, (n, _, s, _) = loaded.model, images.shape
    maps, scores = np.empty((n, s, s), np.float32), np.empty(n, np.float32)
    set_scores = np.empty((n, loaded.run.config.folds), np.float32) if loaded.run.config.cross_fitted else None
    per_student = {name: np.empty((n, s, s), np.float16) for name in model.students} if keep else {}
    native: dict[str, list[list[np.ndarray]]] = {name: [] for name in per_student}
    for sl, nat, out in maps_in_batches(model, images, loaded.device, loaded.run.config.batch_size * 2,
                                        loaded.precision, desc="evaluate", quiet=quiet, valid=valid,
                                        keep_students=keep):
        maps[sl], scores[sl] = out.map[:, 0].cpu().numpy(), out.score.cpu().numpy()
        if set_scores is not None:
            set_scores[sl] = out.set_scores.cpu().numpy()
        for name in per_student:
            per_student[name][sl] = out.per_student[name][:, 0].cpu().numpy()
            native[name].append([m[:, 0].cpu().numpy() for m in nat[name]])
    per_scale = {k: [np.concatenate(parts) for parts in zip(*v, strict=True)] for k, v in native.items()}
    return maps, scores, per_student, per_scale, set_scores
