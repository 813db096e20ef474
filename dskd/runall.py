"""Run every notebook with papermill: `./run_all.sh [--profile P] [--data-root R] [--only NAME ...]`.

Executed notebooks go to `<out>/notebooks/`. A notebook is skipped when its last run succeeded with the same
notebook, the same package code and the same parameters (a stamp file records them), unless --force.
A failing notebook does not stop the others; the summary at the end lists each one, and the exit status
is non-zero when any failed.

Nothing waits forever: every cell has a time limit (`--timeout`, by default the profile's `CELL_TIMEOUT`), the kernel
a start limit, and the whole notebook a wall-clock limit derived from both. A notebook that runs past a limit or
whose kernel dies is run once more in a fresh kernel, then reported as `timed out` / `kernel died` with its log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .config import PROFILES
from .errors import DskdError
from .files import write_json, write_text
from .notebook_exec import CELL_TIMEOUT, KERNEL_DIED, START_TIMEOUT, TIMED_OUT, Limits, papermill
from .run_task import EXECUTORS, ExecutorConfig

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


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
        write_json(stamp_file, {"stamp": stamp, "params": params, "minutes": round(minutes, 2)})
        return notebook.stem, f"ok (retried after: {first})" if retried else "ok", minutes
    stamp_file.unlink(missing_ok=True)
    shown = log_file.relative_to(REPO) if log_file.is_relative_to(REPO) else log_file
    return notebook.stem, f"{why.upper() if why == 'failed' else why}{' twice' if retried else ''} (see {shown})", \
        minutes


def succeeded(status: str) -> bool:
    return status.startswith(("ok", "up to date"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="./run_all.sh",
        description="Regenerate every table and figure by running the notebooks with papermill. With no "
                    "arguments: the offline demo (synthetic data, EfficientNet-Lite0 teacher) in about 15 "
                    "minutes on 2 CPU cores.")
    p.add_argument("--profile", choices=sorted(set(PROFILES) - {"test"}) + ["test"], default="demo",
                   help="demo: synthetic data stands in for every benchmark (offline); quick: real data, CPU-sized; "
                        "paper: ResNet18, 256 px, 200 epochs (GPU); test: the tiny profile of the test suite "
                        "(default: demo)")
    p.add_argument("--data-root", help="folder holding mvtec_ad/, mvtec3d/ and mt_defects/ (quick, paper); "
                                       "absent benchmarks are skipped under quick and are an error under paper")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="run only these notebooks (a name or its prefix, e.g. 10_table_mvtec_ad or 10)")
    p.add_argument("--force", action="store_true", help="run notebooks even when their outputs are up to date")
    p.add_argument("--jobs", type=int, default=1, help="notebooks run in parallel (default 1)")
    p.add_argument("--timeout", type=_positive, metavar="SECONDS",
                   help="most seconds one notebook cell may run before the notebook is stopped, retried once, and "
                        "reported (default by profile: " + ", ".join(f"{k} {v}" for k, v in CELL_TIMEOUT.items()) +
                        f"); the kernel has {START_TIMEOUT} s to start")
    p.add_argument("--out", help="results folder (default: results/<profile>/)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: each notebook trains its runs in turn; ray: one pass plans every run the notebooks "
                        "need, Ray trains them (every GPU of this machine, or a cluster), then the notebooks run")
    p.add_argument("--ray-address", help="join a running Ray cluster ('auto' or ray://HOST:10001); default: start one")
    p.add_argument("--gpus-per-run", type=float, help="GPUs per run on Ray (fractions share a GPU; default 1 if any)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs per run on Ray (default 1)")
    return p


def _writable(out_dir: Path) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise DskdError(f"--out {out_dir} is a file; choose a folder for the results")
    try:
        (out_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DskdError(f"could not use {exc.filename} ({exc.strerror}); check that its folder exists and that you "
                        "may write there") from exc
    return out_dir


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of seconds above 0, not '{text}'")
    return int(text)


def _chosen(only: list[str] | None) -> list[Path]:
    notebooks = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    if not only:
        return notebooks
    unknown = [o for o in only if not any(nb.stem == o or nb.stem.startswith(o) for nb in notebooks)]
    if unknown:
        raise DskdError(f"no notebook matches {unknown}; known: {', '.join(nb.stem for nb in notebooks)}")
    return [nb for nb in notebooks if any(nb.stem == o or nb.stem.startswith(o) for o in only)]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        notebooks = _chosen(args.only)
        if args.data_root and not Path(args.data_root).is_dir():
            raise DskdError(f"--data-root {args.data_root} does not exist; pass the folder that holds the datasets")
        out_dir = _writable(Path(args.out or REPO / "results" / args.profile).resolve())
    except DskdError as exc:  # said before anything runs
        print(f"error: {exc}", file=sys.stderr)
        return 2
    params = {"profile": args.profile, "out_dir": _shown(out_dir)}  # notebooks run in notebooks/
    if args.data_root:
        params["data_root"] = _shown(Path(args.data_root).resolve())
    if args.profile == "test":
        params["complexity_size"] = 64
    limits = Limits(args.timeout or CELL_TIMEOUT[args.profile])
    t0 = time.perf_counter()
    failed_runs = 0
    if args.executor == "ray":
        from .planning import plan_and_train

        executor = ExecutorConfig("ray", args.ray_address, args.gpus_per_run, args.cpus_per_run)
        try:
            failed_runs = plan_and_train(notebooks, params, out_dir, executor, limits)
        except DskdError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda nb: _announce(run_notebook(nb, out_dir, params, args.force, limits)),
                                notebooks))
    print(f"\n{'notebook':<32} {'status':<40} {'minutes':>7}")
    for name, status, minutes in results:
        print(f"{name:<32} {status:<40} {minutes:>7.1f}")
    failed = [r for r in results if not succeeded(r[1])]
    write_index(out_dir, args.profile, params.get("data_root"))
    print(f"\n{len(results) - len(failed)} ok, {len(failed)} failed, {(time.perf_counter() - t0) / 60:.1f} minutes;"
          f" tables in {out_dir / 'tables'}, figures in {out_dir / 'figures'}")
    return 1 if failed or failed_runs else 0


def _shown(path: Path) -> str:
    """A path as the notebooks get it: relative to notebooks/ inside this repository (so that the executed copies
    committed under results/ name no machine's folders), absolute elsewhere."""
    return os.path.relpath(path, NOTEBOOKS) if path.is_relative_to(REPO) else str(path)


def _owner(stem: str, sources: dict[str, str]) -> str:
    """The notebook that writes a file: it names the file, or the file's name starts with an f-string's prefix."""
    for nb, text in sources.items():
        if f'"{stem}"' in text or any(stem.startswith(p) for p in re.findall(r'f"(\w+?_)\{', text)):
            return nb
    return "?"


def write_index(out_dir: Path, profile: str, data_root: str | None) -> Path:
    """`<out>/README.md`: every table and figure, the notebook that made it, what produced it, and the command."""
    sources = {nb.stem: "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"])
               for nb in sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))}
    command = "./run_all.sh" + ("" if profile == "demo" else f" --profile {profile}") + \
        (f" --data-root {os.path.relpath(NOTEBOOKS / data_root, REPO)}" if data_root else "")
    size = sum(f.stat().st_size for sub in ("tables", "figures", "notebooks") for f in (out_dir / sub).glob("*.*")
               if f.suffix in (".md", ".csv", ".png", ".pdf", ".ipynb"))
    lines = [f"# {out_dir.name}: the `{profile}` profile", "",
             f"Regenerate with `{command}` (one notebook: add `--only NAME`). Tables, figures and executed notebooks: "
             f"{size / 1e6:.1f} MB.", "", "| file | notebook | what produced it |", "|---|---|---|"]
    for table in sorted((out_dir / "tables").glob("*.md")):
        said = next((ln for ln in table.read_text().splitlines()[1:] if ln.strip()), "")
        lines.append(f"| [tables/{table.name}](tables/{table.name}) | {_owner(table.stem, sources)} | {said} |")
    for fig in sorted((out_dir / "figures").glob("*.png")):
        lines.append(f"| [figures/{fig.name}](figures/{fig.name}) (+ .pdf) | {_owner(fig.stem, sources)} | |")
    for nb in sorted((out_dir / "notebooks").glob("*.ipynb")):
        lines.append(f"| [notebooks/{nb.name}](notebooks/{nb.name}) | {nb.stem} | executed copy, with outputs |")
    return write_text(out_dir / "README.md", "\n".join(lines) + "\n")


def _announce(result: tuple[str, str, float]) -> tuple[str, str, float]:
    print(f"[{time.strftime('%H:%M:%S')}] {result[0]}: {result[1]} ({result[2]:.1f} min)", flush=True)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
