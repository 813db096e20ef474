import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import dskd
from dskd.cli import main
from dskd.run import archive
from dskd.run.folder import load_run
from dskd.run.metrics import all_metrics

from .conftest import REPO


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dskd", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)



@pytest.mark.slow
def test_cli_train_evaluate_predict_end_to_end(data_root, tmp_path):
    run = tmp_path / "run"
    r = _cli("train", "--profile", "test", "--dataset", "synthetic", "--category", "grid", "--data-root", data_root,
             "--backbone", "efficientnet_lite0", "--variant", "dskd", "--image-size", 64, "--epochs", 1,
             "--batch-size", 8, "--seed", 0, "--device", "cpu", "--out", run, "--quiet", cwd=REPO)
    assert r.returncode == 0, r.stderr
    info = json.loads((run / "config.json").read_text())
    assert info["completed"] and info["torch"] == torch.__version__ and info["config"]["image_size"] == 64
    assert info["train_files_fingerprint"] and info["device"].startswith("cpu") and "git_commit" in info
    log_lines = (run / "train_log.csv").read_text().splitlines()
    assert log_lines[0].startswith("epoch,loss_se,loss_sd,loss_total,seconds") and len(log_lines) == 2

    r = _cli("evaluate", "--run", run, "--json", "--save-maps", "--device", "cpu", cwd=REPO)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)  # exactly one JSON object
    saved = archive.load(run)
    again = all_metrics(saved.labels, saved.scores, saved.masks, saved.maps.astype(np.float32))
    assert result["image_auroc"] == again["image_auroc"]  # the scores are stored exactly
    for key in ("pixel_auroc", "aupro"):  # the maps are stored in float16
        assert result[key] == pytest.approx(again[key], abs=5e-3)
    assert result["precision"] == "float32" and info["config"]["precision"] == "float32"
    assert result["n_test"] == 40 and result["seconds"] > 0
    assert json.loads((run / "metrics.json").read_text())["aupro"] == result["aupro"]
    assert saved.maps.shape == (40, 64, 64) and saved.masks.shape == (40, 64, 64)
    assert saved.per_scale["se"][0].shape == (40, 16, 16) and saved.per_scale["sd"][2].shape == (40, 4, 4)

    images = data_root / "synthetic" / "grid" / "test" / "hole"
    r = _cli("predict", "--run", run, images, "--out", tmp_path / "pred", "--device", "cpu", cwd=REPO)
    assert r.returncode == 0, r.stderr
    rows = (tmp_path / "pred" / "scores.csv").read_text().splitlines()
    assert rows[0] == "path,score,decision,threshold,p_value,overlay,error" and len(rows) == 1 + 6
    assert len(list((tmp_path / "pred").glob("*_overlay.png"))) == 6



@pytest.mark.parametrize("argv, words", [
    (["train"], ["--out"]),
    (["train", "--out", "X", "--variant", "triple"], ["triple"]),
    (["train", "--out", "X", "--dataset", "mvtec_ad", "--category", "bottle", "--data-root", "/nonexistent"],
     ["/nonexistent"]),
    (["train", "--out", "X", "--dataset", "mvtec_ad"], ["--category"]),
    (["train", "--out", "X", "--image-size", "100"], ["100", "multiple of 32"]),
    (["evaluate", "--run", "/nonexistent/run"], ["/nonexistent/run"]),
])
def test_bad_arguments_exit_2_with_one_line(argv, words, capsys, tmp_path):
    argv = [str(tmp_path / a) if a == "X" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err


def test_load_run_refuses_unfinished(tmp_path):
    with pytest.raises(dskd.DskdError, match="not a trained run"):
        load_run(tmp_path)


