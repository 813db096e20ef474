"""Atomic writes: every artifact is written to a temporary file beside its target, then renamed over it,
so a crash, a kill or a full disk never leaves a half-written checkpoint, table or metrics file; a write the system
refuses (no space, read-only, quota) is one line naming the folder, its free space and how far the write got. A JSON
artifact that cannot be read back is one line too, naming the file and the remedy."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from .errors import DskdError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


class WriteError(DskdError):
    """A write the system refused, said in one line; nothing half-written is left."""


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def refused(path: Path, exc: Exception, written: int = 0) -> WriteError:
    """The one line of a write the system refused (`exc`: the OSError, or a library's own error for it)."""
    try:
        free = f"{_mb(shutil.disk_usage(path.parent).free)} free there"
    except OSError:
        free = "its free space unknown"
    reached = f"; the write had reached {_mb(written)} when it failed" if written else ""
    text = str(exc).strip()
    why = getattr(exc, "strerror", None) or (text.splitlines()[-1] if text else type(exc).__name__)
    return WriteError(f"could not write {path.name} in {path.parent} ({why}; {free}{reached}); free "
                      "space, or choose a folder you may write to")


def atomic_write(path: Path | str, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, flush it to disk, then rename it to `path`; an OSError becomes a `WriteError`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise refused(path, exc) from exc
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes private files; artifacts get the usual permissions
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        written = 0
        with suppress(OSError):
            written = os.path.getsize(tmp)
        with suppress(OSError):
            os.unlink(tmp)
        raise refused(path, exc, written) from exc
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: Path | str, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: Path | str, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path, remedy: str) -> Any:
    """A JSON artifact; one line naming the file and `remedy` when it is missing, unreadable or corrupt."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DskdError(f"{path} is unreadable or corrupt ({type(exc).__name__}); fix it by {remedy}") from exc
