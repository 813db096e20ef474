"""Run every notebook with papermill: `./run_all.sh [--profile P] [--data-root R] [--only NAME ...]`.

Executed notebooks go to `<out>/notebooks/`. A notebook is skipped when its last run succeeded with the same
notebook, the same package code and the same parameters (a stamp file records them), unless --force.
A failing notebook does not stop the others; the summary at the end lists each one, and the exit status
is non-zero when any failed.

Nothing waits forever: every cell has a time limit (`--timeout`, by default the profile's `cell_timeout_s`), the kernel
a start limit, and the whole notebook a wall-clock limit derived from both. A notebook that runs past a limit or
whose kernel dies is run once more in a fresh kernel, then reported as `timed out` / `kernel died` with its log.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import DskdError, os_problem
from .experiment_config import (
    PROFILE_RULES,
    ExperimentConfig,
    add_flags,
    check_categories,
    from_parameters,
    parameter_fields,
)
from .notebook_exec import (
    NOTEBOOKS,
    REPO,
    START_TIMEOUT,
    STOP,
    Limits,
    run_notebook,
    stopped_by_signals,
    succeeded,
)
from .results_index import write_index
from .task import ExecutorConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line and exit code 2, like every other user error
        print(f"error: ./run_all.sh: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="./run_all.sh",
        description="Regenerate every table and figure by running the notebooks with papermill. With no "
                    "arguments: the offline demo (synthetic data, EfficientNet-Lite0 teacher) in about 5 "
                    "minutes on 2 CPU cores.")
    add_flags(p, skip=("out_dir",))  # the notebooks' parameters (dskd.repro.experiment_config), as flags
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="run only these notebooks (a name or its prefix, e.g. 10_table_mvtec_ad or 10)")
    p.add_argument("--force", action="store_true", help="run notebooks even when their outputs are up to date")
    p.add_argument("--jobs", type=_positive("notebooks"), default=1, help="notebooks run in parallel (default 1)")
    p.add_argument("--timeout", type=_positive("seconds"), metavar="SECONDS",
                   help="most seconds one notebook cell may run before the notebook is stopped, retried once, and "
                        "reported (default by profile: " +
                        ", ".join(f"{k} {r.cell_timeout_s}" for k, r in PROFILE_RULES.items()) +
                        f"); the kernel has {START_TIMEOUT} s to start")
    p.add_argument("--out", help="results folder (default: results/<profile>/); the notebooks' out_dir")
    return p


def _writable(out_dir: Path) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise DskdError(f"--out {out_dir} is a file; choose a folder for the results")
    try:
        (out_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DskdError(os_problem(exc)) from exc
    return out_dir


def _positive(what: str):
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"expected a whole number of {what} above 0, not '{text}'")
        return int(text)

    return parse


def _chosen(only: list[str] | None) -> list[Path]:
    notebooks = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    if not notebooks:
        raise DskdError(f"no notebooks in {NOTEBOOKS}; run ./run_all.sh from a full checkout of the repository")
    if only is None:
        return notebooks
    if not [o for o in only if o.strip()]:
        raise DskdError("--only names no notebook (an empty name would select every one); name some, e.g. --only 10 "
                        "22, or leave --only out to run them all")
    unknown = [o for o in only if not o.strip() or not any(nb.stem == o or nb.stem.startswith(o) for nb in notebooks)]
    if unknown:
        raise DskdError(f"--only: no notebook matches {unknown}; known: {', '.join(nb.stem for nb in notebooks)}")
    return [nb for nb in notebooks if any(nb.stem == o or nb.stem.startswith(o) for o in only)]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        notebooks = _chosen(args.only)
        config = from_parameters(vars(args))
        if config.data_root and not Path(config.data_root).is_dir():
            raise DskdError(f"--data-root {config.data_root} does not exist; pass the folder that holds the datasets")
        check_categories(config)
        out_dir = _writable(Path(args.out or REPO / "results" / config.profile).resolve())
    except DskdError as exc:  # said before anything runs
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with stopped_by_signals() as signalled:
        try:
            code = _run(args, notebooks, config, out_dir)
            if code >= 0:
                return code
        except BaseException:
            if not STOP.is_set():
                raise
        return _interrupted(signalled)


def _interrupted(signalled: list[int]) -> int:
    signum = signalled[0] if signalled else signal.SIGTERM
    print(f"error: run_all was stopped by {signal.Signals(signum).name}; the notebooks it had finished are intact, "
          "the interrupted one is marked as such; run it again to finish", file=sys.stderr)
    return 128 + signum


def _run(args: argparse.Namespace, notebooks: list[Path], config: ExperimentConfig, out_dir: Path) -> int:
    params = notebook_params(vars(args), config, out_dir)
    limits = Limits(args.timeout or config.rules().cell_timeout_s)
    t0 = time.perf_counter()
    failed_runs = 0
    if config.executor.name != "local":
        from .planning import plan_and_train

        try:
            failed_runs = plan_and_train(notebooks, params, out_dir, config.executor, limits)
        except DskdError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda nb: _announce(run_notebook(nb, out_dir, params, args.force, limits)),
                                notebooks))
    failed = report(results)
    if STOP.is_set():
        return -1  # main says how it was stopped
    write_index(out_dir, config.profile, params.get("data_root"))
    print(f"\n{len(results) - len(failed)} ok, {len(failed)} failed, {(time.perf_counter() - t0) / 60:.1f} minutes;"
          f" tables in {out_dir / 'tables'}, figures in {out_dir / 'figures'}")
    return 1 if failed or failed_runs else 0


def notebook_params(given: dict, config: ExperimentConfig, out_dir: Path) -> dict:
    """What the notebooks are told: the profile, their folders as they see them, and every other parameter given on
    the command line. The executor's stay here: under Ray the runs are trained before the notebooks start."""
    told = {name: given[name] for name, _, owner in parameter_fields()
            if owner is not ExecutorConfig and given.get(name) is not None and name not in ("data_root", "out_dir")}
    told.update(profile=config.profile, out_dir=_shown(out_dir))
    if config.data_root:
        told["data_root"] = _shown(config.data_root)
    return told


def report(results: list[tuple[str, str, float]]) -> list[tuple[str, str, float]]:
    """Print the summary table; returns the notebooks that did not succeed."""
    print(f"\n{'notebook':<32} {'status':<40} {'minutes':>7}")
    for name, status, minutes in results:
        print(f"{name:<32} {status:<40} {minutes:>7.1f}")
    return [r for r in results if not succeeded(r[1])]


def _shown(path: str | Path) -> str:
    """A folder as the notebooks get it (they run in notebooks/): relative to notebooks/ when it lies in this
    repository or was named by a relative path, so that the executed copies committed under results/ name no
    machine's folders; an absolute path outside the repository stays as the user named it."""
    resolved = Path(path).resolve()
    if resolved.is_relative_to(REPO) or not Path(path).is_absolute():
        return os.path.relpath(resolved, NOTEBOOKS)
    return str(path)


def _announce(result: tuple[str, str, float]) -> tuple[str, str, float]:
    print(f"[{time.strftime('%H:%M:%S')}] {result[0]}: {result[1]} ({result[2]:.1f} min)", flush=True)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
