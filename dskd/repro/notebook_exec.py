"""One notebook under papermill, in bounded time: the cell limit and the kernel's start limit go to papermill (nbclient
enforces them), and a wall-clock limit on the whole process catches what they cannot (a client that stops reading,
a kernel that never shuts down). The notebook runs in its own folder, as it would in Jupyter, once more in a fresh
kernel when it ran past a limit, and not at all when its last run succeeded with the same notebook, package code and
parameters (`run_notebook`). A signal to run_all stops every process it started (`stop_everything`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_json, write_text

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
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
        # papermill in a process group of its own; its kernel, which jupyter_client starts with setsid,
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


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)  # kill, a closed terminal or CI's cancel, Ctrl-C


@contextlib.contextmanager
def stopped_by_signals():
    """While inside, a stop signal stops everything started (`stop_everything`) and is recorded in the list this
    yields; outside, the previous handlers are back. Only the main thread can take signals: elsewhere it does
    nothing."""
    STOP.clear()
    signalled: list[int] = []

    def on_signal(signum: int, _frame) -> None:
        if not signalled:
            signalled.append(signum)
            print(f"\n[run_all] {signal.Signals(signum).name}: stopping every notebook and process it started",
                  file=sys.stderr, flush=True)
            stop_everything()

    main = threading.current_thread() is threading.main_thread()
    before = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS} if main else {}
    try:
        yield signalled
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def mark_interrupted(executed: Path) -> None:
    """The executed copy of a notebook that a signal stopped says so in its first cell and its metadata, so that
    nobody reads its tables as finished."""
    if not executed.is_file():
        return
    try:
        nb = json.loads(executed.read_text())
    except (OSError, ValueError):
        executed.unlink(missing_ok=True)  # half-written by papermill as it was stopped: nothing to keep
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    nb.setdefault("metadata", {})["dskd"] = {"interrupted": when}
    nb.setdefault("cells", []).insert(0, {"cell_type": "markdown", "metadata": {}, "source": [
        f"**Interrupted** ({when}): run_all was stopped while this notebook ran; this copy is incomplete."]})
    write_text(executed, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def portable(executed: Path) -> None:
    """papermill records where it read and wrote the notebook as absolute paths; inside this repository they are
    kept relative to it, so that a committed executed notebook names no machine's folders."""
    nb = json.loads(executed.read_text())
    meta = nb.get("metadata", {}).get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key) and Path(meta[key]).is_absolute() and Path(meta[key]).is_relative_to(REPO):
            meta[key] = os.path.relpath(meta[key], REPO)
    write_text(executed, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


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


def _stamp(notebook: Path, params: dict) -> str:
    h = hashlib.sha256(notebook.read_bytes())
    for src in sorted((REPO / "dskd").rglob("*.py")):
        h.update(src.read_bytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()


def run_notebook(notebook: Path, out_dir: Path, params: dict, force: bool,
                 limits: Limits) -> tuple[str, str, float]:
    executed = out_dir / "notebooks" / notebook.name
    stamp_file = executed.with_suffix(".stamp.json")
    stamp = _stamp(notebook, params)
    if not force and executed.is_file() and stamp_file.is_file() and \
            json.loads(stamp_file.read_text()).get("stamp") == stamp:
        return notebook.stem, "up to date", 0.0
    if STOP.is_set():
        return notebook.stem, "not started (run_all was stopped)", 0.0
    t0 = time.perf_counter()
    log_file = executed.with_suffix(".log")
    why = papermill(notebook, executed, params, log_file, limits)
    retried = why in (TIMED_OUT, KERNEL_DIED)
    if retried:  # once more, in a fresh kernel; the first attempt's log is kept beside
        print(f"[{time.strftime('%H:%M:%S')}] {notebook.stem}: {why}; retrying once in a fresh kernel", flush=True)
        log_file.replace(log_file.with_suffix(".attempt1.log"))
        first, why = why, papermill(notebook, executed, params, log_file, limits)
    minutes = (time.perf_counter() - t0) / 60
    if why is None:
        portable(executed)
        write_json(stamp_file, {"stamp": stamp, "params": params, "minutes": round(minutes, 2)})
        return notebook.stem, f"ok (retried after: {first})" if retried else "ok", minutes
    stamp_file.unlink(missing_ok=True)
    if why == INTERRUPTED:
        mark_interrupted(executed)
        return notebook.stem, f"interrupted (partial copy marked as such: {executed.name})", minutes
    shown = log_file.relative_to(REPO) if log_file.is_relative_to(REPO) else log_file
    said = f": {last_error(log_file.read_text(errors='replace'))}" if why == "failed" else ""
    return notebook.stem, f"{why.upper() if why == 'failed' else why}{' twice' if retried else ''}{said} (see " \
        f"{shown})", minutes


def succeeded(status: str) -> bool:
    return status.startswith(("ok", "up to date"))
