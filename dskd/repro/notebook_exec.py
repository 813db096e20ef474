"""One notebook under papermill, in bounded time: the cell limit and the kernel's start limit go to papermill (nbclient
enforces them), and a wall-clock limit on the whole process catches what they cannot (a client that stops reading,
a kernel that never shuts down). The notebook runs in its own folder, as it would in Jupyter. A signal to run_all
stops every process it started (`stop_everything`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
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


STOP = threading.Event()  # set when run_all is told to stop (a signal): nothing new starts, what runs is stopped
INTERRUPTED = "interrupted"


def papermill(notebook: Path, executed: Path, params: dict, log_file: Path, limits: Limits,
              env: dict[str, str] | None = None) -> str | None:
    """Run one notebook; None when it succeeded, else why not: `timed out`, `kernel died`, `interrupted` or
    `failed`."""
    if STOP.is_set():
        return INTERRUPTED
    executed.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(executed), "-k", "python3", "--cwd",
           str(notebook.parent), "--log-output", "--no-progress-bar", "--execution-timeout", str(limits.cell_s),
           "--start-timeout", str(limits.start_s)]
    for k, v in params.items():
        cmd += ["-y", json.dumps({k: v})]
    with open(log_file, "w") as log:
        # papermill in a process group of its own; its kernel, which jupyter_client starts in a session of its own,
        # is still its child: both are stopped as one tree (`stop_tree`) at the limit or on a signal.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True)
        total_s = limits.total_s(notebook)
        try:
            code = proc.wait(timeout=total_s)
        except subprocess.TimeoutExpired:
            stop_tree(proc.pid)
            log.write(f"\n[run_all] stopped after {total_s} s, the notebook's wall-clock limit\n")
            return TIMED_OUT
        except BaseException:  # Ctrl-C or an error here: the notebook and its kernel stop too
            stop_tree(proc.pid)
            raise
    if STOP.is_set():
        return INTERRUPTED
    return None if code == 0 else _why(log_file.read_text(errors="replace"))


def stop_tree(pid: int, include_root: bool = True, grace_s: float = 5.0) -> None:
    """Stop a process and every process below it (papermill, its kernel, the kernel's training workers or Ray
    cluster): SIGTERM to all, SIGKILL to those left after `grace_s`. The tree is read before anything is
    signalled, so that no orphan escapes it."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + ([root] if include_root else [])
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)


def stop_everything() -> None:
    """What a signal to run_all does: nothing new starts, and every process run_all started is stopped."""
    STOP.set()
    stop_tree(os.getpid(), include_root=False)


_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception|Interrupt|Exit))\b:?\s*(.*)$")


def last_error(log: str) -> str:
    """The last exception line of a notebook's log ("DskdError: ..."), papermill's own wrapper left out; else the
    log's last line."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).rstrip() for ln in log.splitlines()]
    for line in reversed(lines):
        m = _ERROR_LINE.match(line)
        if m and m.group(1) != "PapermillExecutionError" and m.group(2):
            return f"{m.group(1)}: {m.group(2)}"[:300]
    return next((ln.strip() for ln in reversed(lines) if ln.strip()), "")[:300]


def _why(log: str) -> str:
    """What papermill's log says stopped the notebook (nbclient's exception names)."""
    if "CellTimeoutError" in log or "Kernel didn't respond" in log:
        return TIMED_OUT
    if "DeadKernelError" in log or "Kernel died" in log:
        return KERNEL_DIED
    return "failed"
