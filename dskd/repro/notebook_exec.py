"""One notebook under papermill, in bounded time: the cell limit and the kernel's start limit go to papermill (nbclient
enforces them), and a wall-clock limit on the whole process catches what they cannot (a client that stops reading,
a kernel that never shuts down). The notebook runs in its own folder, as it would in Jupyter."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 180  # seconds for a kernel to start and answer, on a loaded machine
TIMED_OUT, KERNEL_DIED = "timed out", "kernel died"


@dataclass(frozen=True)
class Limits:
    """How long a notebook may take: each cell `cell_s`, the kernel's start `start_s`; the whole notebook is killed
    after `start_s` + `cell_s` per code cell + a minute, whatever papermill is doing."""
    cell_s: int
    start_s: int = START_TIMEOUT

    def total_s(self, notebook: Path) -> int:
        cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
        return self.start_s + self.cell_s * max(1, len(cells)) + 60


def papermill(notebook: Path, executed: Path, params: dict, log_file: Path, limits: Limits,
              env: dict[str, str] | None = None) -> str | None:
    """Run one notebook; None when it succeeded, else why not: `timed out`, `kernel died` or `failed`."""
    executed.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(executed), "-k", "python3", "--cwd",
           str(notebook.parent), "--log-output", "--no-progress-bar", "--execution-timeout", str(limits.cell_s),
           "--start-timeout", str(limits.start_s)]
    for k, v in params.items():
        cmd += ["-y", json.dumps({k: v})]
    with open(log_file, "w") as log:
        # papermill in a process group of its own, stopped whole at the limit; its kernel, which jupyter_client starts
        # in a session of its own, shuts itself down once papermill is gone (ipykernel watches its parent).
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True)
        total_s = limits.total_s(notebook)
        try:
            code = proc.wait(timeout=total_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            log.write(f"\n[run_all] stopped after {total_s} s, the notebook's wall-clock limit\n")
            return TIMED_OUT
        except BaseException:  # Ctrl-C or an error here: the notebook and its kernel stop too
            _stop(proc)
            raise
    return None if code == 0 else _why(log_file.read_text(errors="replace"))


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have ended by itself meanwhile
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _why(log: str) -> str:
    """What papermill's log says stopped the notebook (nbclient's exception names)."""
    if "CellTimeoutError" in log or "Kernel didn't respond" in log:
        return TIMED_OUT
    if "DeadKernelError" in log or "Kernel died" in log:
        return KERNEL_DIED
    return "failed"
