"""The grid on a real two-node Ray cluster, started and stopped by the test on the loopback address only.

Ray binds to the machine's outward address even when told 127.0.0.1 (ray-project/ray#26293), so every Ray process
runs inside a network namespace this test makes (`unshare -n`, loopback up): there 127.0.0.1 is the only address and
nothing can leave. The driver runs inside it too; the test process, outside, watches the run folders and kills a
worker mid-training.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from dskd.repro.executors import execute
from dskd.repro.task import ExecutorConfig
from dskd.run.methods import METHODS
from dskd.run.profiles import profile_config

from ..conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
ray = pytest.importorskip("ray")  # CI installs it (the dev extra); the check below proves the local path without it

CLUSTER = """
set -e
ip link set lo up
export RAY_USAGE_STATS_ENABLED=0 PYTHONPATH={repo}
# Ray's token authentication, with a token of this test's own that every process of the cluster shares
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN={token}
RAY={bin}/ray
$RAY start --head --node-ip-address=127.0.0.1 --port=6390 --num-cpus=1 --include-dashboard=false \\
    --object-store-memory=100000000 --temp-dir={ray_tmp} > {tmp}/head.log 2>&1
$RAY start --address=127.0.0.1:6390 --node-ip-address=127.0.0.1 --num-cpus=1 --object-store-memory=100000000 \\
    --temp-dir={ray_tmp} > {tmp}/worker.log 2>&1
trap '$RAY stop --force > /dev/null 2>&1' EXIT
ss -H -ltnu > {tmp}/sockets_before.txt
{python} -c "$DRIVER" > {tmp}/driver.log 2>&1
ss -H -atnu > {tmp}/sockets_after.txt
"""

DRIVER = """
import json
from dskd.run.config import RunConfig
from dskd.repro.executors import execute
from dskd.repro.task import ExecutorConfig
configs = [RunConfig.from_dict(c) for c in json.load(open("{plan}"))]
outcomes = execute(configs, "{runs}", ExecutorConfig("ray", ray_address="127.0.0.1:6390"), quiet=True)
json.dump([{{"path": o.path, "error": o.error, "metrics": o.metrics}} for o in outcomes], open("{result}", "w"))
"""


def _grid(data_root, missing_root):
    configs = [profile_config("test", data_root=str(data_root), category=c, **METHODS[m].overrides)
               for c in ("stripes", "grid") for m in ("dskd", "se_only")]
    configs.append(profile_config("test", data_root=str(data_root), category="noise", epochs=4))  # killed once
    configs.append(profile_config("test", dataset="mvtec_ad", category="bottle", data_root=str(missing_root)))
    return configs


def _kill_worker_mid_training(run: Path, killed: list[int], stop: threading.Event) -> None:
    """Once the run has saved its first epoch, kill the Ray worker that trains it, as a lost node would be."""
    while not stop.is_set():
        pid_file, ckpt = run / ".worker.pid", run / "checkpoint.pt"
        if ckpt.is_file() and pid_file.is_file() and not (run / "metrics.json").exists():
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ss") is None, reason="needs unshare and ss")
def test_grid_on_a_two_node_cluster_survives_a_killed_worker_and_reports_a_failed_run(data_root, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("DSKD_NUM_THREADS", "1")  # as each single-CPU Ray worker: the same arithmetic
    configs = _grid(data_root, tmp_path / "nowhere")
    local = execute(configs, tmp_path / "local", ExecutorConfig("local"), quiet=True)
    assert [o.ok for o in local] == [True] * 5 + [False]

    plan, runs = tmp_path / "plan.json", tmp_path / "ray_runs"
    plan.write_text(json.dumps([c.to_dict() for c in configs]))
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    script = CLUSTER.format(repo=REPO, bin=Path(sys.executable).parent, tmp=tmp_path, python=sys.executable,
                            ray_tmp=ray_tmp, token=secrets.token_hex(32))
    driver = DRIVER.format(plan=plan, runs=runs, result=tmp_path / "result.json")
    killed, stop = [], threading.Event()
    noise_run = runs / local[4].path.split("/")[-1]
    killer = threading.Thread(target=_kill_worker_mid_training, args=(noise_run, killed, stop), daemon=True)
    killer.start()
    try:
        r = subprocess.run(["unshare", "-n", "bash", "-c", script], env={**os.environ, "DRIVER": driver},
                           capture_output=True, text=True, timeout=900)
    finally:
        stop.set()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert r.returncode == 0, r.stderr[-3000:] + (tmp_path / "head.log").read_text()[-2000:]
    results = json.loads((tmp_path / "result.json").read_text())

    # the same metrics as the local executor, run for run; the failed run reported with its one-line error
    for mine, theirs in zip(local, results, strict=True):
        if not mine.ok:
            assert theirs["error"] and "does not exist" in theirs["error"] and "\n" not in theirs["error"]
            continue
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert theirs["metrics"][key] == pytest.approx(mine.metrics[key], abs=1e-4), key
    # the killed run was retried on a new worker and resumed from its checkpoint
    assert killed, "the worker was never killed"
    log = (noise_run / "run.log").read_text()
    assert "resuming" in log and "after epoch" in log
    assert int((noise_run / ".worker.pid").read_text().split()[0]) != killed[0]
    # both nodes trained runs (a worker's parent is its node's raylet)
    parents = {(runs / Path(x["path"]).name / ".worker.pid").read_text().split()[1] for x in results if x["path"]}
    assert len(parents) == 2
    # every socket bound to, and every peer on, the loopback address (`ss -H`: netid state recv-q send-q local peer)
    loopback = ("127.", "[::ffff:127.", "[::1]:")
    lines = ((tmp_path / "sockets_before.txt").read_text() + (tmp_path / "sockets_after.txt").read_text()).splitlines()
    assert len(lines) > 5
    for line in lines:
        local, peer = line.split()[4:6]
        assert local.startswith(loopback), line
        assert peer.startswith(loopback) or peer in ("*:*", "0.0.0.0:*", "[::]:*"), line


def test_the_local_path_needs_no_ray(tmp_path, data_root):
    code = f"""
import sys
sys.modules["ray"] = None  # as if Ray were not installed
from dskd.run.profiles import profile_config
from dskd.errors import DskdError
from dskd.repro.executors import execute
from dskd.repro.task import ExecutorConfig
out = execute([profile_config("test", data_root="{data_root}")], "{tmp_path / 'runs'}", ExecutorConfig(), quiet=True)
assert out[0].ok, out[0].error
try:
    execute([profile_config("test", data_root="{data_root}")], "{tmp_path / 'runs'}", ExecutorConfig("ray"))
except DskdError as exc:
    print(exc)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "pip install -e '.[cluster]'" in r.stdout and len(r.stdout.strip().splitlines()) == 1


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_run_all_plans_the_union_of_runs_then_trains_it_once_on_ray(tmp_path):
    """Notebooks 10 and 20 share three methods: the planning pass finds the union, 6 distinct runs, Ray trains them
    (a local cluster, inside a network namespace), and the notebooks then find every run cached."""
    out = tmp_path / "results"
    script = (f"ip link set lo up; export RAY_USAGE_STATS_ENABLED=0; {sys.executable} -m dskd.repro.runall "
              f"--profile test --executor ray --only 10 20 --out {out}")
    r = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # notebook 10's three methods are among notebook 20's six (the ablation of the students): six runs, not nine
    assert "planned 6 distinct run(s) for 2 notebook(s)" in r.stdout and "6 run(s) done, 0 failed" in r.stdout
    runs = [p for p in (out / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 6 and all((p / "maps.npz").is_file() and (p / "run.log").is_file() for p in runs)
    for p in runs:  # trained once, by Ray: the notebooks' pass found each finished and used it
        log = (p / "run.log").read_text()
        assert "already trained; using it" in log and "resuming" not in log
    assert (out / "tables" / "table_mvtec_ad.md").is_file() and (out / "tables" / "ablation_students.md").is_file()


NOTEBOOK_AND_PROBE = """
set -e
ip link set lo up
export RAY_USAGE_STATS_ENABLED=0 PYTHONPATH={repo} RAY_AUTH_MODE=token RAY_AUTH_TOKEN={token}
RAY={bin}/ray
$RAY start --head --node-ip-address=127.0.0.1 --port=6391 --num-cpus=1 --include-dashboard=false \\
    --object-store-memory=100000000 --temp-dir={ray_tmp} > {tmp}/head.log 2>&1
# the second node sees its own, empty folder at {hidden}: a node without the shared filesystem
unshare -m bash -c "mount -t tmpfs none {hidden} && $RAY start --address=127.0.0.1:6391 --node-ip-address=127.0.0.1 \\
    --num-cpus=1 --object-store-memory=100000000 --temp-dir={ray_tmp}" > {tmp}/worker.log 2>&1
trap '$RAY stop --force > /dev/null 2>&1' EXIT
{python} -m dskd.repro.runall --profile test --only 10 --out {hidden}/out --executor ray --ray-address 127.0.0.1:6391 \\
    > {tmp}/probe.out 2> {tmp}/probe.err && exit 3
{python} -m papermill {notebook} {tmp}/executed.ipynb -k python3 --cwd {tmp} -p profile test -p out_dir {tmp}/out \\
    -p executor ray -p ray_address 127.0.0.1:6391 > {tmp}/papermill.log 2>&1
for pid in {tmp}/out/runs/*/.worker.pid; do tr '\\0' ' ' < /proc/$(cut -d' ' -f2 $pid)/cmdline; echo; done \\
    > {tmp}/parents.txt
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_a_notebook_sends_its_grid_to_ray_and_a_node_without_the_shared_storage_is_named(tmp_path):
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    script = NOTEBOOK_AND_PROBE.format(repo=REPO, bin=Path(sys.executable).parent, tmp=tmp_path, hidden=hidden,
                                       python=sys.executable, ray_tmp=ray_tmp, token=secrets.token_hex(32),
                                       notebook=REPO / "notebooks" / "10_table_mvtec_ad.ipynb")
    try:
        r = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    logs = "".join((tmp_path / f).read_text() for f in ("probe.err", "papermill.log", "worker.log")
                   if (tmp_path / f).is_file())
    assert r.returncode == 0, r.stderr[-2000:] + logs[-3000:]
    # the storage probe names the node that cannot see runs_root, in one line, and nothing trained
    # (Ray's own native warning that this namespace has no route outside is not ours: left out)
    err = [line for line in (tmp_path / "probe.err").read_text().splitlines() if "network_util.cc" not in line]
    assert len(err) == 1, err
    err = err[0]
    assert err.startswith("error: node 127.0.0.1 (") and "cannot share" in err and "No such file" in err, err
    assert str(hidden / "out" / "runs") in err and "Traceback" not in err
    assert not any((hidden / "out" / "runs").glob("*/checkpoint.pt"))
    # the notebook's parameters sent its three runs to Ray: each was trained by a worker that a raylet started
    parents = (tmp_path / "parents.txt").read_text().splitlines()
    assert len(parents) == 3 and all("raylet" in p for p in parents), parents
    assert (tmp_path / "out" / "tables" / "table_mvtec_ad.md").is_file()
