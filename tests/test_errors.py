"""Real-world bad input, as a user meets it: every case exits 2 (or 0 where some work was done) with one line that
names the file and what to do, never a traceback, and leaves nothing half-written. Real files: the shared MVTec AD
bottle images (masks absent, as in many users' own data), truncated or converted by the tests themselves."""

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dskd import DskdError
from dskd.data import load_dataset
from dskd.data.images import read_image
from dskd.repro import runall

from .conftest import BOTTLE, REPO, needs_bottle


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "dskd", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _one_line(r, *words, code=2):
    err = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), err
    return errors[0]


def _truncate(path, keep=200):
    path.write_bytes(path.read_bytes()[:keep])


def _train(data, out, *extra):
    return _cli("train", "--profile", "test", "--dataset", "mvtec_ad", "--category", "bottle", "--data-root", data,
                "--out", out, "--quiet", "--device", "cpu", *extra)


@needs_bottle
def test_truncated_training_images_are_all_listed_before_training(bottle, tmp_path):
    bad = sorted((bottle / "bottle/train/good").glob("*.png"))
    _truncate(bad[3])
    _truncate(bad[17])
    r = _train(bottle, tmp_path / "run")
    line = _one_line(r, "2 unreadable file(s)", bad[3].name, bad[17].name, "re-extract or remove")
    assert "DataLoader" not in r.stderr and "worker" not in line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # nothing trained, nothing half-written


@needs_bottle
@pytest.mark.slow
def test_predict_skips_unreadable_files_and_strict_stops(bottle, tmp_path):
    run = tmp_path / "run"
    assert _train(bottle, run).returncode == 0
    images = tmp_path / "mixed"
    shutil.copytree(bottle / "bottle/test/broken_large", images)
    victim = sorted(images.glob("*.png"))[1]
    _truncate(victim)
    r = _cli("predict", "--run", run, images, "--out", tmp_path / "pred", "--device", "cpu")
    assert r.returncode == 0 and "Traceback" not in r.stderr and victim.name in r.stderr
    rows = list(csv.DictReader(open(tmp_path / "pred" / "scores.csv")))
    assert len(rows) == 4 and [Path(r["path"]).name for r in rows if r["error"]] == [victim.name]
    assert "truncated" in next(r["error"] for r in rows if r["error"])
    assert len(list((tmp_path / "pred").glob("*_overlay.png"))) == 3
    _one_line(_cli("predict", "--run", run, images, "--out", tmp_path / "strict", "--strict"), victim.name)
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    shutil.copy(victim, only_bad / victim.name)
    _one_line(_cli("predict", "--run", run, only_bad, "--out", tmp_path / "none"), "none of the 1 image(s)")

    # A corrupt config.json or checkpoint.pt: one line naming the file, exit 2.
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "config.json").write_text('{"config": {"model": ')
    _one_line(_cli("evaluate", "--run", broken), "config.json", "corrupt")
    shutil.copy(run / "config.json", broken / "config.json")
    _truncate(broken / "checkpoint.pt", 1000)
    _one_line(_cli("evaluate", "--run", broken, "--device", "cpu"), "checkpoint.pt", "corrupt")


def test_out_that_is_a_file_is_refused(tmp_path, data_root):
    target = tmp_path / "taken"
    target.write_text("mine")
    r = _cli("train", "--profile", "test", "--data-root", data_root, "--out", target)
    _one_line(r, str(target), "is a file")
    assert target.read_text() == "mine"


@needs_bottle
def test_image_modes_are_read_alike(tmp_path):
    """16-bit, palette, grayscale, RGBA and CMYK files and an EXIF-rotated JPEG decode to the same pixels (or
    the same up to the format's own loss) by the one reader that training, evaluation and predict share."""
    rgb = np.asarray(Image.open(sorted((BOTTLE / "train/good").glob("*.png"))[0]).convert("RGB").resize((64, 48)))
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    cases = {
        "gray.png": (Image.fromarray(gray), np.repeat(gray[..., None], 3, 2), 0),
        "rgba.png": (Image.fromarray(np.dstack([rgb, np.full(gray.shape, 128, np.uint8)])), rgb, 0),
        "palette.png": (Image.fromarray(rgb).quantize(256), None, 0),
        "cmyk.jpg": (Image.fromarray(rgb).convert("CMYK"), rgb, 12),
        "sixteen.png": (Image.fromarray(gray.astype(np.uint16) * 257), np.repeat(gray[..., None], 3, 2), 0),
    }
    for name, (im, expected, tol) in cases.items():
        im.save(tmp_path / name, quality=98) if name.endswith(".jpg") else im.save(tmp_path / name)
        got = read_image(tmp_path / name)
        assert got.shape == (48, 64, 3) and got.dtype == np.uint8, name
        if expected is not None:
            assert np.abs(got.astype(int) - expected).mean() <= tol, name
    full = np.array([[0, 65535]], np.uint16)  # a 16-bit PNG spans its full range: 65535 is white, not clipped
    Image.fromarray(full).save(tmp_path / "range.png")
    assert read_image(tmp_path / "range.png")[0, :, 0].tolist() == [0, 255]
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored sideways: a viewer turns it 90 degrees clockwise
    rotated.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "exif.jpg", exif=exif, quality=98)
    upright = read_image(tmp_path / "exif.jpg")
    assert upright.shape == rgb.shape and np.abs(upright.astype(int) - rgb).mean() < 6


def test_mask_problems_name_both_files(tmp_path):
    root = tmp_path / "mvtec_ad" / "c"
    for sub in ("train/good", "test/good", "test/hole", "ground_truth/hole"):
        (root / sub).mkdir(parents=True)
    for sub in ("train/good/0.png", "train/good/1.png", "test/good/0.png", "test/hole/0.png"):
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / sub)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "ground_truth/hole/0_mask.png")
    with pytest.raises(DskdError) as e:
        load_dataset("mvtec_ad", tmp_path / "mvtec_ad", "c", "test", 32)
    msg = str(e.value)
    assert "0_mask.png" in msg and "test/hole/0.png" in msg and "20x20" in msg and "\n" not in msg
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "ground_truth/hole/0_mask.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "ground_truth/hole/7_mask.png")
    with pytest.raises(DskdError) as e:
        load_dataset("mvtec_ad", tmp_path / "mvtec_ad", "c", "test", 32)
    msg = str(e.value)
    assert "7_mask.png" in msg and "test/hole/7.png" in msg and "without its image" in msg


@pytest.mark.slow
def test_a_second_trainer_on_the_same_folder_is_told_it_is_busy(tmp_path, data_root):
    out = tmp_path / "run"
    args = ["train", "--profile", "test", "--data-root", data_root, "--epochs", "3", "--out", out, "--quiet",
            "--device", "cpu"]
    first = subprocess.Popen([sys.executable, "-m", "dskd", *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / ".run.lock"
        for _ in range(600):  # until the first trainer holds the folder
            if (out / "config.json").is_file() or (first.poll() is not None):
                break
            time.sleep(0.1)
        assert lock.is_file()
        _one_line(_cli(*args), "is busy", "--wait")
        waited = _cli(*args, "--wait")  # waits for the first, then finds the run finished
        assert waited.returncode == 0, waited.stderr
    finally:
        first.wait(timeout=300)
    assert first.returncode == 0, first.stderr
    info = json.loads((out / "config.json").read_text())
    assert info["completed"] and len((out / "train_log.csv").read_text().splitlines()) == 4


def test_run_all_checks_its_arguments_before_running(tmp_path, capsys):
    assert runall.main(["--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err and "does not exist" in err
    assert runall.main(["--only", "99_nothing", "--out", str(tmp_path)]) == 2
    assert "99_nothing" in capsys.readouterr().err
    assert not (tmp_path / "notebooks").exists()
    (tmp_path / "taken").write_text("mine")
    for out, said in ((tmp_path / "taken", "is a file"), (Path("/proc/dskd"), "could not use /proc/dskd")):
        assert runall.main(["--only", "00", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and said in err, err
    assert (tmp_path / "taken").read_text() == "mine"


BAD_INPUTS = [
    ["train"], ["train", "--out", "{t}/a", "--variant", "triple"], ["train", "--out", "{t}/a", "--image-size", "100"],
    ["train", "--out", "{t}/a", "--image-size", "abc"], ["train", "--out", "{t}/a", "--epochs", "0"],
    ["train", "--out", "{t}/a", "--dataset", "mvtec_ad"], ["train", "--out", "{t}/a", "--dataset", "imagenet"],
    ["train", "--out", "{t}/a", "--dataset", "mvtec_ad", "--category", "bottle", "--data-root", "{t}/none"],
    ["train", "--out", "{t}/a", "--dataset", "mt_defects", "--data-root", "{t}"],
    ["train", "--out", "{t}/a", "--split-file", "{t}/none.txt", "--dataset", "mt_defects", "--data-root", "{t}"],
    ["train", "--out", "{t}/a", "--variant", "sd_only", "--df-source", "se"],
    ["train", "--out", "{t}/a", "--precision", "float16", "--device", "cpu"],
    ["train", "--out", "{t}/a", "--device", "cuda"] if not __import__("torch").cuda.is_available() else ["nothing"],
    ["train", "--out", "{t}/a", "--sigma", "-1"], ["train", "--out", "{t}/a", "--scale-weights", "1", "x", "1"],
    ["train", "--out", "{t}/a", "--lr", "-0.1"], ["train", "--out", "{t}/a", "--backbone", "vgg"],
    ["evaluate", "--run", "{t}/none"], ["evaluate"], ["predict", "--run", "{t}/none", "{t}", "--out", "{t}/p"],
    ["nothing"], ["train", "--out", "{t}/a", "--fit-mode", "crop"], ["train", "--out", "{t}/a", "--se-optim-name", "x"],
    ["train", "--out", "/proc/dskd/a"], ["predict", "--model", "{t}/none.onnx", "{t}", "--out", "{t}/p"],
    ["train", "--out", "{t}/a", "--val-fraction", "0.7"], ["train", "--out", "{t}/a", "--max-false-alarm", "0"],
    ["train", "--out", "{t}/a", "--target-false-alarm", "1"],
]
DATA_INPUTS = [["download", "mt_defects", "--root", "/proc/dskd"], ["download", "imagenet", "--root", "{t}"], []]


@pytest.mark.slow
def test_no_bad_input_prints_a_traceback(tmp_path):
    """At least 20 bad inputs through the real command line: each exits 2 with one error line, no traceback."""
    assert len(BAD_INPUTS) >= 20
    for argv in BAD_INPUTS:
        r = _cli(*[a.format(t=tmp_path) for a in argv])
        assert r.returncode == 2 and "Traceback" not in r.stderr, (argv, r.stderr[-1500:])
        assert len([line for line in r.stderr.splitlines() if line.startswith("error:")]) == 1, (argv, r.stderr)
    for argv in DATA_INPUTS:  # python -m dskd.data
        r = subprocess.run([sys.executable, "-m", "dskd.data", *[a.format(t=tmp_path) for a in argv]], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr and "error:" in r.stderr, (argv, r.stderr[-1500:])


def _images(folder, n, value=100, size=40):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n + value)
    for i in range(n):
        Image.fromarray(rng.integers(value - 20, value + 20, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.mark.slow
def test_evaluate_on_a_test_split_with_one_kind_of_image_reports_what_it_can(tmp_path):
    """A user's own folder before any defect is collected (good images only), and a test split of defective images
    only: the metrics that need both kinds of image are null with one warning line saying why, the pixel metrics
    are measured where the masks allow; the score distribution and the share at the decision threshold are
    reported; exit 0, no traceback."""
    good_only = tmp_path / "parts"
    _images(good_only / "washer" / "good", 20)
    defective_only = tmp_path / "mvtec_ad" / "bottle"
    _images(defective_only / "train" / "good", 16)
    _images(defective_only / "test" / "dent", 3, value=200)
    for i in range(3):
        mask = np.zeros((40, 40), np.uint8)
        mask[10:20, 10:20] = 255
        (defective_only / "ground_truth" / "dent").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(defective_only / "ground_truth" / "dent" / f"{i}_mask.png")
    for dataset, root, category, kind in (("folder", good_only, "washer", "defect-free"),
                                          ("mvtec_ad", tmp_path, "bottle", "defective")):
        run = tmp_path / f"run_{dataset}"
        trained = _cli("train", "--profile", "test", "--dataset", dataset, "--category", category, "--data-root",
                       root, "--out", run, "--quiet", "--device", "cpu")
        assert trained.returncode == 0, trained.stderr[-2000:]
        r = _cli("evaluate", "--run", run, "--json", "--device", "cpu")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        warnings = [line for line in r.stderr.splitlines() if line.startswith("WARNING")]
        assert len(warnings) == 1 and f"only {kind} images" in warnings[0], r.stderr
        result = json.loads(r.stdout)
        assert result["image_auroc"] is None and result["image_f1_max"] is None
        pixel = [result[k] for k in ("pixel_auroc", "aupro", "pixel_f1_max")]
        if kind == "defect-free":  # no defect pixel anywhere: undefined too, said in the same line
            assert pixel == [None] * 3 and "pixel AUROC, AUPRO and pixel F1 are null" in warnings[0]
        else:  # defect and defect-free pixels within the defective images: defined
            assert all(0 <= v <= 1 for v in pixel), pixel
        assert result["decision_rule"] == "val_false_alarm" and result["decision_images"] == 8
        summary = result["score_summary"][{"defect-free": "good", "defective": "defective"}[kind]]
        assert summary["n"] == result["n_test"] and 0 <= summary["flagged"] <= 1
        assert summary["min"] <= summary["median"] <= summary["max"]
        assert json.loads((run / "metrics.json").read_text())["image_auroc"] is None
    shown = _cli("evaluate", "--run", run, "--device", "cpu")  # the same, as a person reads it
    assert shown.returncode == 0 and "image AUROC: —" in shown.stdout and "flagged by the decision" in shown.stdout
    _images(tmp_path / "labelled" / "good", 4)  # a labelled folder the user names: F1-max on it
    _images(tmp_path / "labelled" / "dent", 4, value=200)
    r = _cli("evaluate", "--run", run, "--json", "--device", "cpu", "--threshold-from", tmp_path / "labelled")
    decision = json.loads(r.stdout)["decision"]
    assert decision["rule"] == "f1_max_on_folder" and "(4 good, 4 defective images)" in decision["source"]
    assert json.loads((run / "decision.json").read_text())["rule"] == "val_false_alarm"  # one evaluation only
    r = _cli("evaluate", "--run", run, "--threshold-from", good_only / "washer")  # good/ alone
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "needs good images and defective" in r.stderr
