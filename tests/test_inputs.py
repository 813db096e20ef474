"""Real-world inputs, as users meet them: hand-edited run folders, a full disk under every write, name clashes
across folders, half-written downloads, a signal to run_all. Each gives exit 0 with a correct result or exit 2 with
one line, never a traceback, and leaves nothing half-written."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import REPO

needs_unshare = pytest.mark.skipif(shutil.which("unshare") is None, reason="a full disk is made with unshare + tmpfs")


def _cli(*args, timeout=300, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "dskd", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _one_line(r, *words, code=2):
    assert r.returncode == code, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), r.stderr[-2000:]
    return errors[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root):
    """One finished `test`-profile run, shared by this module's tests (they copy it before changing anything)."""
    from dskd import fit
    from dskd.run.evaluation import evaluate
    from dskd.run.profiles import profile_config

    out = tmp_path_factory.mktemp("inputs") / "run"
    trained = fit(profile_config("test", data_root=str(data_root), category="grid", device="cpu"), out, quiet=True)
    evaluate(trained, save_maps=True, device="cpu")
    return trained.path


def _copy(run, tmp_path, name="edited"):
    target = tmp_path / name
    shutil.copytree(run, target)
    return target


@pytest.mark.slow
def test_hand_edited_run_folders_are_named_with_their_field(run, tmp_path):
    edited = _copy(run, tmp_path)
    info = json.loads((edited / "config.json").read_text())
    info["config"]["image_size"] = "64"
    (edited / "config.json").write_text(json.dumps(info))
    _one_line(_cli("evaluate", "--run", edited, "--device", "cpu"), "config.json", "image_size='64'", "whole number")

    edited = _copy(run, tmp_path, "decision")
    (edited / "decision.json").write_text(json.dumps({"threshold": 3.0}))
    for command in (["evaluate", "--run", edited, "--device", "cpu"], ["export", "--run", edited],
                    ["predict", "--run", edited, edited, "--out", tmp_path / "p"]):
        _one_line(_cli(*command), "decision.json", "'rule' is missing", "calibrate")

    edited = _copy(run, tmp_path, "bare")
    state = torch.load(edited / "checkpoint.pt", weights_only=False)["model"]
    torch.save(state, edited / "checkpoint.pt")
    _one_line(_cli("evaluate", "--run", edited, "--device", "cpu"), "checkpoint.pt", "bare state dict")

    from dskd.run.evaluation import evaluate_once
    from dskd.run.folder import open_run

    edited = _copy(run, tmp_path, "metrics")  # a broken metrics.json is only a cache: evaluated anew
    for broken in ("{", json.dumps({"image_auroc": 0.5})):
        (edited / "metrics.json").write_text(broken)
        assert evaluate_once(open_run(edited))["n_good"] == 16


@pytest.mark.slow
def test_predict_over_clashing_names_keeps_every_overlay(run, tmp_path, data_root):
    good = sorted((data_root / "synthetic" / "grid" / "test" / "good").glob("*.png"))
    for folder, picks in (("a", good[:2]), ("b", good[2:3]), ("c/a", good[3:4])):  # two folders named a
        (tmp_path / folder).mkdir(parents=True)
        for i, p in enumerate(picks):
            shutil.copy(p, tmp_path / folder / f"00{i}.png")
    Image.open(good[5]).save(tmp_path / "a" / "000.jpg")  # 000.png beside 000.jpg
    r = _cli("predict", "--run", run, tmp_path / "a", tmp_path / "b", tmp_path / "c/a", "--out", tmp_path / "o",
             "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "o" / "scores.csv")))
    overlays = [row["overlay"] for row in rows]
    assert len(rows) == 5 and len(set(overlays)) == 5 and all(Path(o).is_file() for o in overlays)
    assert len({row["path"] for row in rows}) == 5
    assert len(list((tmp_path / "o").rglob("*_overlay.png"))) == 5


FULL_DISK = """
set -e
mount -t tmpfs -o size=$SIZE tmpfs "$MNT"
set +e
"$PY" -m dskd "$@" > "$MNT.out" 2> "$MNT.err"
echo $? > "$MNT.rc"
ls -a "$MNT" "$MNT"/* > "$MNT.ls" 2>&1
[ -z "$KEEP" ] || cp -r "$MNT/$KEEP" "$MNT.kept"
"""


def _on_a_full_disk(tmp_path, size, *argv, keep=""):
    """Run `python -m dskd ARGV` with a tmpfs of `size` mounted at tmp_path/disk (in a mount namespace of its own);
    returns (result, listing of the disk afterwards, the copy of disk/KEEP)."""
    mnt = tmp_path / "disk"
    mnt.mkdir(parents=True)
    env = {**os.environ, "SIZE": size, "MNT": str(mnt), "PY": sys.executable, "KEEP": keep}
    r = subprocess.run(["unshare", "-rm", "sh", "-c", FULL_DISK, "sh", *map(str, argv)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    result = subprocess.CompletedProcess(argv, int((tmp_path / "disk.rc").read_text()),
                                         (tmp_path / "disk.out").read_text(), (tmp_path / "disk.err").read_text())
    return result, (tmp_path / "disk.ls").read_text(), tmp_path / "disk.kept"


@needs_unshare
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_full_disk_under_training_predict_and_export(run, tmp_path, data_root):
    """A real full file system (a small tmpfs): the epoch-2 checkpoint does not fit beside epoch 1's; predict's
    overlays fill it; an export does not fit. One line each, what was done kept, no temporary file left."""
    r, listing, kept = _on_a_full_disk(tmp_path / "train", "300M", "train", "--profile", "test", "--data-root",
                                       data_root, "--epochs", "3", "--out", tmp_path / "train/disk/run", "--quiet",
                                       "--device", "cpu", keep="run")
    _one_line(r, "checkpoint.pt", "No space left", "previous checkpoint is intact", "--resume")
    assert torch.load(kept / "checkpoint.pt", weights_only=False)["epoch"] == 1 and ".tmp" not in listing

    images = data_root / "synthetic" / "grid" / "test" / "good"
    r, listing, kept = _on_a_full_disk(tmp_path / "predict", "120k", "predict", "--run", run, images, "--out",
                                       tmp_path / "predict/disk/o", "--device", "cpu", "--quiet", keep="o")
    line = _one_line(r, "No space left", "stopped after", "of 16 images")
    done = int(line.split("stopped after ")[1].split(" ")[0])
    rows = list(csv.DictReader(open(kept / "scores.csv"))) if (kept / "scores.csv").is_file() else []
    assert 0 < done < 16 and ".tmp" not in listing
    assert len(rows) == done or "could not be written either" in line

    for fmt, name in (("onnx", "model.onnx"), ("openvino", "model.xml")):
        r, listing, _ = _on_a_full_disk(tmp_path / fmt, "2M", "export", "--run", run, "--format", fmt, "--out",
                                        tmp_path / fmt / "disk" / name)
        _one_line(r, name, "could not write")
        assert "model." not in listing and ".tmp" not in listing, listing


def test_a_truncated_download_is_one_line_and_leaves_nothing(tmp_path):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(np.random.default_rng(0).bytes(300_000))
    full = tmp_path / "full.tar.xz"
    with tarfile.open(full, "w:xz") as t:
        t.add(payload, arcname="MPDD/metal_plate/x.bin")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "MPDD.zip").write_bytes(full.read_bytes()[:20_000])  # the user's half-saved archive
    r = subprocess.run([sys.executable, "-m", "dskd.data", "download", "mpdd", "--root", tmp_path / "root"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    _one_line(r, "MPDD.zip", "20,000 bytes", "truncated or corrupt", "download it again")
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["MPDD.zip"]  # no .mpdd.extracting left


@pytest.mark.slow
def test_torchscript_export_of_an_ordinary_run(run, tmp_path, data_root):
    from dskd.run.folder import load_run

    r = _cli("export", "--run", run, "--format", "torchscript", "--out", tmp_path / "m.pt")
    assert r.returncode == 0, r.stderr[-2000:]
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.rand(2, 3, 64, 64)
    want = load_run(run, "cpu").model.anomaly_map(x)
    got_map, got_score = scripted(x)
    assert torch.allclose(got_score, want.score, rtol=1e-4) and torch.allclose(got_map, want.map, rtol=1e-4, atol=1e-5)


def _descendants(pid):
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_all_stopped_by_sigterm_leaves_no_process_behind(tmp_path):
    """`timeout`, a CI runner's cancel and `kill` send SIGTERM: run_all stops papermill, the kernel and whatever the
    kernel started, marks the interrupted notebook, and exits non-zero with one line."""
    import psutil

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "dskd.repro.runall", "--profile", "test", "--only", "10", "20",
                             "--force", "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen: dict[int, psutil.Process] = {}
    deadline = time.time() + 240
    while time.time() < deadline:  # until the notebook's kernel runs, and then a little longer (it is training)
        for p in _descendants(proc.pid):
            seen[p.pid] = p
        if any("ipykernel" in " ".join(p.cmdline()) for p in seen.values() if p.is_running()):
            break
        time.sleep(0.5)
    else:
        pytest.fail("the notebook's kernel never started")
    time.sleep(5)
    for p in _descendants(proc.pid):
        seen[p.pid] = p
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "SIGTERM" in errors[0] and "Traceback" not in err
    time.sleep(1)
    alive = [p for p in seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [" ".join(p.cmdline())[:120] for p in alive]
    executed = out / "notebooks" / "10_table_mvtec_ad.ipynb"
    if executed.is_file():  # papermill had written its partial copy: it says it is incomplete
        assert "Interrupted" in "".join(json.loads(executed.read_text())["cells"][0]["source"])
    assert not (out / "notebooks" / "10_table_mvtec_ad.stamp.json").exists()
    assert not (out / "notebooks" / "20_ablation_students.ipynb").exists()  # never started


def test_an_empty_mask_beside_a_good_test_image_belongs_to_it(tmp_path):
    from dskd.data import load_dataset

    root = tmp_path / "mvtec_ad" / "c"
    for sub in ("train/good", "test/good", "test/hole", "ground_truth/hole", "ground_truth/good"):
        (root / sub).mkdir(parents=True)
    for sub in ("train/good", "test/good", "test/hole"):
        for i in range(3):
            Image.fromarray(np.full((40, 40, 3), 90 + i, np.uint8)).save(root / sub / f"00{i}.png")
    hole = np.zeros((40, 40), np.uint8)
    hole[5:9, 5:9] = 255
    for i in range(3):
        Image.fromarray(hole).save(root / "ground_truth/hole" / f"00{i}_mask.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "ground_truth/good/000_mask.png")
    test = load_dataset("mvtec_ad", tmp_path / "mvtec_ad", "c", "test", 32)
    good = [s for s in test.samples if s.label == 0]
    assert len(test) == 6 and good[0].mask is not None and good[1].mask is None
    (root / "test/good/000.png").unlink()  # now the mask has lost its image: that is still an error
    with pytest.raises(ValueError, match="mask without its image"):
        load_dataset("mvtec_ad", tmp_path / "mvtec_ad", "c", "test", 32)


def test_a_finished_run_keeps_weights_not_optimizer_state(run):
    """What --resume needs (the optimizers' state) lives in checkpoint.pt only while a run trains."""
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["optimizers"] == {} and ckpt["schema"] == 2 and ckpt["model"] and ckpt["map_stats"]
    weights = sum(v.numel() * v.element_size() for v in ckpt["model"].values())
    assert (run / "checkpoint.pt").stat().st_size < 1.1 * weights
