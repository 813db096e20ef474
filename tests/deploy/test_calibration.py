"""Calibrate on the line: a run's or an exported file's threshold reset from good images, by the training rule, with
the previous decision kept, and used by predict and export afterwards; a batch flagged far above the promise warns."""

import csv
import json
import logging
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dskd.decision import Decision, excess_flags
from dskd.deploy.predictors import onnxruntime_predictor, openvino_predictor

from ..conftest import REPO


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dskd", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def _line_images(src, dst, n, brighten=0):
    """Good images as a line would take them: the synthetic category's unseen good images, a little brighter."""
    dst.mkdir(parents=True)
    for p in sorted(src.glob("*.png"))[:n]:
        a = np.asarray(Image.open(p).convert("RGB")).astype(int) + brighten
        Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(dst / p.name)
    return dst


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_calibrate_a_run_and_its_exported_files(data_root, tmp_path):
    from dskd import fit
    from dskd.deploy.export import export
    from dskd.run.profiles import profile_config

    run = fit(profile_config("test", data_root=str(data_root), category="grid"), tmp_path / "run", quiet=True)
    trained = json.loads(run.decision_file.read_text())
    good = data_root / "synthetic" / "grid" / "test" / "good"
    line = _line_images(good, tmp_path / "line", 16, brighten=12)

    r = _cli("calibrate", "--run", run.path, line, "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    now = json.loads(run.decision_file.read_text())
    assert now["rule"] == "line_false_alarm" and now["n_images"] == 16 and "line" in now["source"]
    assert now["previous"][0]["threshold"] == trained["threshold"] and now["threshold"] != trained["threshold"]
    assert now["bound_false_alarm"] == pytest.approx(1 - 0.05 ** (1 / 16))  # Beta(1, 16)'s 0.95 quantile
    assert "is now" in r.stderr and f"{now['bound_false_alarm']:.1%}" in r.stdout

    r = _cli("predict", "--run", run.path, line, "--out", tmp_path / "p", "--device", "cpu", "--quiet")
    rows = list(csv.DictReader(open(tmp_path / "p" / "scores.csv")))
    assert r.returncode == 0 and {float(row["threshold"]) for row in rows} == {now["threshold"]}
    assert sum(row["decision"] == "defective" for row in rows) == 0  # nothing above the highest of its own 16

    onnx_path = export(run.path, "onnx", tmp_path / "x" / "model.onnx")
    xml_path = export(run.path, "openvino", tmp_path / "x" / "model.xml")
    for path, read in ((onnx_path, onnxruntime_predictor), (xml_path, openvino_predictor)):
        assert read(path).threshold == now["threshold"]  # export carries the calibrated decision
        weights = path.with_suffix(".bin").read_bytes() if path.suffix == ".xml" else None
        again = _line_images(good, tmp_path / f"line_{path.suffix[1:]}", 12)
        r = _cli("calibrate", "--model", path, again, "--quiet")
        assert r.returncode == 0, r.stderr[-2000:]
        d = read(path).decision
        assert d.rule == "line_false_alarm" and d.n_images == 12 and d.threshold != now["threshold"]
        assert [p["threshold"] for p in d.previous] == [now["threshold"], trained["threshold"]]
        if weights is not None:
            assert path.with_suffix(".bin").read_bytes() == weights  # only the .xml was rewritten
    assert json.loads(run.decision_file.read_text()) == now  # the run is not touched by its files' calibration


def test_a_batch_flagged_far_above_the_promise_warns(caplog):
    """The share a batch flags against the bound, by the exact binomial tail: 3 of 40 is within a 4.5 % / 13.3 %
    promise; 20 of 40 is not."""
    from dskd.deploy.prediction import _check_share
    from dskd.deploy.predictors import Predictor

    d = Decision.on_good_images(scores=np.linspace(0, 1, 21, dtype=np.float32),
                                target=0.01, source="21 images")
    assert excess_flags(d, 3, 40) > 0.1 and excess_flags(d, 20, 40) < 1e-4
    predictor = Predictor(lambda x, v: (x, x), 64, "stretch", d, "runs/r", "run")
    rows = [{"error": "", "decision": "defective" if i < 20 else "good"} for i in range(40)]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _check_share(predictor, rows[20 - 3:])  # 3 of 23
        assert not caplog.records
        _check_share(predictor, rows)
    assert len(caplog.records) == 1 and "20 of 40" in caplog.text and "calibrate --run runs/r" in caplog.text
