"""What a line feeds predict and calibrate, fourth round: file names that are not UTF-8, an output folder that is
also the input, GIF and WebP beside files that are not images, names too long for the file system, a data root
given relative to where `train` ran, an empty `--only`; and calibration sets that repeat an image, hold the run's
training images or hold defective parts. Each gives a correct result or one line, never a traceback."""

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ..conftest import REPO


def _cli(*args, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, "-m", "dskd", *map(str, args)], cwd=cwd, capture_output=True,
                          timeout=timeout, text=True, errors="backslashreplace")


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root):
    """One finished `test`-profile run (synthetic grid), shared by this module's tests."""
    from dskd import fit
    from dskd.run.profiles import profile_config

    out = tmp_path_factory.mktemp("line") / "run"
    return fit(profile_config("test", data_root=str(data_root), category="grid", device="cpu"), out, quiet=True).path


def _pictures(folder, n, seed=0, size=(70, 90)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_predict_reads_what_a_folder_holds_and_never_its_own_output(run, tmp_path):
    folder = _pictures(tmp_path / "parts", 3)
    Image.open(folder / "0.png").save(folder / "still.gif")
    Image.open(folder / "1.png").save(folder / "still.webp")
    (folder / "notes.txt").write_text("not an image")
    bad_name = os.fsencode(folder) + b"/caf\xe9.png"  # Latin-1, not UTF-8
    shutil.copy(folder / "2.png", bad_name)
    for _ in range(2):  # the output folder is the input folder, twice
        r = _cli("predict", "--run", run, folder, "--out", folder)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        rows = _rows(folder / "scores.csv")
        assert len(rows) == 6 and all(row["score"] for row in rows), rows  # 3 PNG, GIF, WebP, the Latin-1 name
    assert {os.path.splitext(r["path"])[1] for r in rows} == {".png", ".gif", ".webp"}
    assert any("\\udce9" in r["path"] for r in rows) and os.path.exists(os.fsencode(folder) + b"/caf\xe9_overlay.png")
    assert sum("notes.txt: not read" in line for line in r.stderr.splitlines()) == 1
    assert "that predict wrote (overlays, scores.csv) are not read" in r.stderr


@pytest.mark.slow
def test_an_overlay_name_too_long_is_shortened_and_the_batch_goes_on(run, tmp_path):
    folder = _pictures(tmp_path / "parts", 2)
    long = folder / ("x" * 240 + ".png")  # 244 bytes: allowed, but not with "_overlay.png" and a temporary name
    (folder / "0.png").rename(long)
    r = _cli("predict", "--run", run, folder, "--out", tmp_path / "out")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    rows = _rows(tmp_path / "out" / "scores.csv")
    assert len(rows) == 2 and all(row["overlay"] and os.path.isfile(row["overlay"]) for row in rows)
    assert max(len(os.fsencode(os.path.basename(row["overlay"]))) for row in rows) <= 200


@pytest.mark.slow
def test_a_relative_data_root_is_recorded_resolved(data_root, tmp_path):
    (tmp_path / "base").symlink_to(data_root)
    r = _cli("train", "--profile", "test", "--data-root", "base", "--category", "grid", "--out", tmp_path / "r",
             "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    recorded = json.loads((tmp_path / "r" / "config.json").read_text())["config"]["data_root"]
    assert recorded == str((tmp_path / "base").resolve())
    r = _cli("evaluate", "--run", tmp_path / "r", "--json")  # from another folder
    assert r.returncode == 0, r.stderr[-2000:]


def test_run_all_refuses_an_empty_selection():
    from dskd.errors import DskdError
    from dskd.repro import runall

    for only in ([""], [" "], ["10", ""]):
        with pytest.raises(DskdError, match="--only"):
            runall._chosen(only)
    assert len(runall._chosen(["10"])) == 1


def _decision(run):
    import json

    return json.loads((run / "decision.json").read_text())


def _copy_run(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.slow
def test_calibrate_counts_an_image_once_and_refuses_the_run_s_training_images(run, data_root, tmp_path):
    run = _copy_run(run, tmp_path)
    grid = data_root / "synthetic" / "grid"
    line = tmp_path / "line"
    shutil.copytree(grid / "test" / "good", line)
    n = len(list(line.glob("*.png")))
    shutil.copy(next(line.glob("*.png")), line / "copy_under_another_name.png")
    r = _cli("calibrate", "--run", run, line, line, "--device", "cpu", "--quiet")  # one folder twice
    assert r.returncode == 0, r.stderr[-2000:]
    assert _decision(run)["n_images"] == n
    assert sum("repeat another one's content and count once" in line for line in r.stderr.splitlines()) == 1

    before = _decision(run)
    r = _cli("calibrate", "--run", run, grid / "train" / "good", "--device", "cpu", "--quiet")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "the run trained on" in errors[0], r.stderr[-2000:]
    assert _decision(run) == before  # nothing changed


@pytest.mark.slow
def test_calibrating_on_defective_parts_asks_whether_they_are_all_good(run, data_root, tmp_path):
    from dskd.data import run_images
    from dskd.run.folder import open_run

    fresh = shutil.copytree(run, tmp_path / "fresh")
    run = _copy_run(run, tmp_path)
    test = data_root / "synthetic" / "grid" / "test"
    defective = tmp_path / "said_good"
    defective.mkdir()
    for kind in ("hole", "stain"):
        for image in sorted((test / kind).glob("*.png"))[:6]:
            shutil.copy(image, defective / f"{kind}_{image.name}")
    r = _cli("calibrate", "--run", run, defective, "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    warned = [line for line in r.stderr.splitlines() if "are these all good?" in line]
    assert len(warned) == 1 and "Mann-Whitney" in warned[0] and "_" in warned[0].split("the highest:")[1]
    # the good images the decision was set on, given again from another folder: no question asked
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    for sample in run_images(open_run(fresh).config, "held_out").samples:
        shutil.copy(sample.path, held_out / sample.path.name)
    good = _cli("calibrate", "--run", fresh, held_out, "--device", "cpu", "--quiet")
    assert good.returncode == 0 and "are these all good?" not in good.stderr, good.stderr[-2000:]


@pytest.mark.slow
def test_a_read_only_model_file_is_refused_and_suffixes_count_alike(run, data_root, tmp_path):
    from dskd.deploy.export import export

    onnx = export(run, "onnx", tmp_path / "model.onnx")
    good = data_root / "synthetic" / "grid" / "test" / "good"
    onnx.chmod(0o444)
    content = onnx.read_bytes()
    r = _cli("calibrate", "--model", onnx, good, "--quiet")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "read-only" in errors[0], r.stderr[-2000:]
    assert onnx.read_bytes() == content and (onnx.stat().st_mode & 0o777) == 0o444
    upper = onnx.with_name("M.ONNX")
    shutil.copy(onnx, upper)
    upper.chmod(0o644)
    r = _cli("calibrate", "--model", upper, good, "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
