"""A run's checkpoint: what it holds while training (weights, optimizers, log) and once finished (weights and the
statistics fitted after training, not the optimizers), written atomically after every epoch and read back with
checks. The frozen teacher is never saved: it is rebuilt from its own weights on load."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from ..atomic import WriteError, atomic_write
from ..errors import DskdError
from ..model.cross_fitted import CrossFitModel
from ..model.network import DSKD
from ..settings import type_problem


def is_teacher_key(key: str) -> bool:
    """A state-dict entry of the frozen teacher, rebuilt from its own weights on load and never saved."""
    return key.startswith("teacher.") or ".teacher." in key


def load_students(model: DSKD | CrossFitModel, state: dict[str, torch.Tensor]) -> None:
    """The students' weights into `model`; a cross-fitted run saved before 2026-12-07 named its sets `members`."""
    state = {"sets." + k[len("members."):] if k.startswith("members.") else k: v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or not all(map(is_teacher_key, missing)):
        raise DskdError(f"checkpoint does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")


CHECKPOINT_SCHEMA = 2  # 2: a finished run keeps its weights and statistics, not its optimizers' state
# What every checkpoint holds, and what a finished run's adds (`dskd.run.training`).
_CHECKPOINT_KEYS = {"epoch": int, "model": dict, "log": list}
_FINISHED_KEYS = {"image_threshold": float, "map_stats": dict, "train_scores": list}


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomically; a full disk is one line that says the previous checkpoint is kept and how to go on."""
    buf = io.BytesIO()  # serialized first: torch.save reports a full disk as a RuntimeError, Python as an OSError
    torch.save(payload, buf)
    try:
        atomic_write(path, lambda tmp: tmp.write_bytes(buf.getbuffer()))
    except WriteError as exc:
        kept = "the previous checkpoint is intact" if path.is_file() else "no checkpoint was written"
        raise WriteError(f"{exc}; {kept}; then continue with --resume") from exc


def read_checkpoint(path: Path, device: torch.device | str = "cpu", finished: bool = False) -> dict[str, Any]:
    """A checkpoint checked against what this version writes: one line naming the file and the field otherwise."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise DskdError(f"{path} is unreadable or corrupt ({type(exc).__name__}); train the run again, or resume "
                        "it from an intact checkpoint") from exc
    remedy = "train the run again" if finished else "train the run again (without --resume)"
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise DskdError(f"{path} is not a dskd checkpoint (no 'model' entry: a bare state dict or another tool's "
                        f"file?); {remedy}")
    wanted = {**_CHECKPOINT_KEYS, **(_FINISHED_KEYS if finished else {})}
    for key, kind in wanted.items():
        problem = "is missing" if key not in ckpt else type_problem(ckpt[key], kind)
        if problem:
            raise DskdError(f"{path}: its '{key}' {problem}; {remedy}")
    if ckpt.get("schema", 1) > CHECKPOINT_SCHEMA:
        raise DskdError(f"{path} was written by a newer dskd (checkpoint schema {ckpt['schema']}); update dskd")
    return ckpt


def student_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable part of the model; the frozen teacher is rebuilt from its own weights on load."""
    return {k: v for k, v in model.state_dict().items() if not is_teacher_key(k)}
