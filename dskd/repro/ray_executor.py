"""The Ray executor: one Ray task per run with the resources asked for, retried elsewhere when its worker or node
dies (the run resumes from its last epoch checkpoint), after checking that every node shares `runs_root`."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import DskdError
from ..run.config import RunConfig
from .task import ExecutorConfig, train_and_evaluate

INSTALL = ("--executor ray needs Ray: pip install -e '.[cluster]' -c <(printf 'torch==VERSION\\n') with this "
           "machine's torch version, so that pip keeps it")


def import_ray():
    try:
        import ray
    except ImportError:
        raise DskdError(INSTALL) from None
    return ray


def connect(executor: ExecutorConfig):
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=executor.ray_address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    return ray


def _probe(path: str, token: str) -> str | None:
    """On one node: can it read the driver's marker and write one the driver can read?"""
    import ray

    marker = Path(path)
    try:
        if marker.read_text() != token:
            return "it sees another file at that path"
        (marker.parent / f"{marker.name}-{ray.get_runtime_context().get_node_id()}").write_text(token)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


def check_storage(ray, root: Path) -> None:
    """Every live node must see `root` as this machine does: a write probe from each; one line naming the first
    node that cannot."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    root.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    marker = root / f".probe-{token}"
    marker.write_text(token)
    probe = ray.remote(num_cpus=0)(_probe)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    try:
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(marker), token) for n in nodes]
        for node, problem in zip(nodes, ray.get(refs, timeout=300), strict=True):
            if problem is None and not (root / f"{marker.name}-{node['NodeID']}").is_file():
                problem = "its write is not visible here"
            if problem:
                raise DskdError(f"node {node['NodeManagerAddress']} ({node['NodeID'][:8]}) cannot share {root} "
                                f"({problem}); runs_root must be a filesystem mounted at the same path on every node")
    finally:
        for f in root.glob(f"{marker.name}*"):
            f.unlink(missing_ok=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def run_on_ray(configs: list[RunConfig], root: Path, executor: ExecutorConfig, quiet: bool) -> list[dict[str, Any]]:
    ray = connect(executor)
    root = root.resolve()
    check_storage(ray, root)
    gpus = executor.gpus_per_run
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    task = ray.remote(train_and_evaluate).options(num_cpus=executor.cpus_per_run, num_gpus=gpus,
                                                   max_retries=executor.max_retries, retry_exceptions=False)
    threads = max(1, int(executor.cpus_per_run))
    refs = [task.remote(c.to_dict(), str(root), threads) for c in configs]
    where = {ref: i for i, ref in enumerate(refs)}
    results: list[dict[str, Any]] = [{} for _ in refs]
    pending, failed = list(refs), 0
    with tqdm(total=len(refs), desc="runs on Ray", unit="run", disable=quiet) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:  # retries used up, or a bug in the run: report, go on
                    result = {"error": _one_line(exc)}
                results[where[ref]] = result
                failed += "error" in result
                bar.update(1)
                bar.set_postfix(waiting_or_running=len(pending), failed=failed)
    return results
