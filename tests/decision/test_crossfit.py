"""Cross-fitting (`--folds K`): every good image scored by a student set that never trained on it, one teacher for
all sets, the cross-conformal decision, and the same decisions from PyTorch, ONNX Runtime and OpenVINO."""

import json

import numpy as np
import pytest
import torch

from dskd.data import fold_of, load_dataset
from dskd.decision import Decision, false_alarm_threshold, rank_of
from dskd.deploy.calibration import calibrate
from dskd.deploy.export import export
from dskd.deploy.predictors import onnxruntime_predictor, openvino_predictor, torch_predictor
from dskd.model.cross_fitted import CrossFitModel
from dskd.model.network import DSKD
from dskd.run.batch_maps import all_maps, preload
from dskd.run.evaluation import evaluate
from dskd.run.folder import files_fingerprint, load_run
from dskd.run.profiles import profile_config
from dskd.run.training import fit
from dskd.stats import rank_sum_p_value

from .test_decision import _grid_copy

FOLDS = 3


def _paths(data, split, **kw):
    return [s.path for s in load_dataset("mvtec_ad", data, "grid", split, 64, **kw).samples]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_good_image_is_scored_by_a_set_that_never_trained_on_it(data_root, tmp_path):
    load_dataset("synthetic", data_root, "grid", "test", 64)  # generates the data
    data = _grid_copy(data_root, tmp_path / "mvtec_ad", permute=False)
    cfg = profile_config("test", dataset="mvtec_ad", data_root=str(data), category="grid", folds=FOLDS)
    run = fit(cfg, tmp_path / "run", quiet=True)
    decision = Decision.from_dict(json.loads(run.decision_file.read_text()))
    pool = _paths(data, "train", folds=FOLDS)
    assert decision.rule == "cross_conformal" and decision.n_images == len(pool) == 60
    held = [_paths(data, "val", folds=FOLDS, fold=k) for k in range(FOLDS)]
    assert sorted(p for fold in held for p in fold) == sorted(pool)  # every good image in exactly one fold
    loaded = load_run(run, "cpu")
    for k in range(FOLDS):
        trained_on = _paths(data, "train", folds=FOLDS, fold=k)
        assert not set(trained_on) & set(held[k]) and len(trained_on) + len(held[k]) == len(pool)
        info = json.loads((run.student_set(k).path / "config.json").read_text())  # what set k recorded training on
        assert info["train_files_fingerprint"] == files_fingerprint(trained_on, data)
        images, _ = preload(load_dataset("mvtec_ad", data, "grid", "val", 64, folds=FOLDS, fold=k), quiet=True)
        set_scores = all_maps(loaded, images, None, False, True)[4]
        # set k scored fold k
        assert decision.out_of_fold_scores[k] == pytest.approx(sorted(set_scores[:, k]), rel=1e-5)
        assert sorted(set_scores[:, k]) != pytest.approx(sorted(set_scores[:, (k + 1) % FOLDS]), rel=1e-3)
    assert not run.student_set(0).checkpoint.exists()  # the sets' weights live in the run's one checkpoint

    truth = evaluate(run, device="cpu")
    run.decision_file.unlink()  # set again, now beside a permuted test split
    shuffled = evaluate(run, _grid_copy(data_root, tmp_path / "permuted", permute=True), device="cpu")
    assert shuffled["decision"] == {**truth["decision"], "set_at": shuffled["decision"]["set_at"]}
    assert run.recorded_decision().out_of_fold_scores == decision.out_of_fold_scores
    assert shuffled["image_auroc"] != truth["image_auroc"]

    test, _ = preload(load_dataset("mvtec_ad", data, "grid", "test", 64), quiet=True)
    want = torch_predictor(run.path, "cpu")
    _, scores, members = want.infer(test.numpy(), None)
    flags = decision.flags(scores, members)
    assert flags.sum() == truth["good_flagged"] + truth["defective_flagged"]
    for path, read in ((export(run.path, "onnx"), onnxruntime_predictor),
                       (export(run.path, "openvino"), openvino_predictor)):
        got = read(path)
        _, s, m = got.infer(test.numpy(), None)
        assert m == pytest.approx(members, abs=1e-4) and (got.decision.flags(s, m) == flags).all()
        # On the line: a plain threshold on the averaged score, set on good images no set trained on.
        line = calibrate([data / "grid" / "test" / "good"], model=path)
        assert line.rule == "line_false_alarm" and not line.out_of_fold_scores
        assert line.previous[0]["rule"] == "cross_conformal"
        _, s, m = read(path).infer(test.numpy(), None)
        assert (read(path).decision.flags(s, m) == (s >= line.threshold)).all()


def test_an_ensemble_holds_one_teacher_and_k_student_sets():
    cfg = profile_config("test").model
    single, ensemble = DSKD(cfg), CrossFitModel(cfg, FOLDS)
    teacher = sum(p.numel() for p in single.teacher.parameters())
    students = sum(p.numel() for p in single.parameters()) - teacher
    assert sum(p.numel() for p in ensemble.parameters()) == teacher + FOLDS * students
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = ensemble.eval().anomaly_map(x, keep_students=False)
        alone = [m.eval().anomaly_map(x, keep_students=False) for m in ensemble.sets]
    assert out.set_scores.shape == (2, FOLDS)
    assert out.set_scores == pytest.approx(torch.stack([a.score for a in alone], 1), rel=1e-5)
    mean_map = torch.stack([a.map for a in alone]).mean(0)  # sum fusion: the ensemble's map is the sets' mean map
    assert out.map.flatten() == pytest.approx(mean_map.flatten(), rel=1e-4, abs=1e-5)


def test_folds_are_seeded_and_even():
    folds = fold_of(61, 5, seed=3)
    assert sorted(np.bincount(folds)) == [12, 12, 12, 12, 13]
    assert (folds == fold_of(61, 5, seed=3)).all() and (folds != fold_of(61, 5, seed=4)).any()


def test_one_fold_decides_as_its_threshold_does():
    rng = np.random.default_rng(0)
    calibration, new = rng.normal(size=120).astype(np.float32), rng.normal(size=500).astype(np.float32)
    d = Decision.cross_conformal(out_of_fold_scores=[calibration], target=0.02, source="one fold")
    threshold, _ = false_alarm_threshold(calibration, 0.02)
    assert d.threshold == threshold and (d.flags(new, new[:, None]) == (new >= threshold)).all()


def test_cross_conformal_false_alarms_stay_near_the_target():
    """K sets with different score scales and offsets, exchangeable good images: the share of new good images
    flagged, averaged over calibration draws, is near m / (N + 1) and below Vovk's worst case."""
    rng = np.random.default_rng(1)
    k, n, rate, rates = 4, 200, 0.05, []
    scale, offset = rng.uniform(0.5, 2, k), rng.normal(size=k)
    for _ in range(300):
        calibration = [scale[j] * rng.gamma(2, size=n // k) + offset[j] for j in range(k)]
        d = Decision.cross_conformal(out_of_fold_scores=calibration, target=rate, source="draw")
        new = rng.gamma(2, size=400)
        rates.append(d.flags(new, scale * new[:, None] + offset).mean())
    m = rank_of(n, rate)
    assert np.mean(rates) == pytest.approx(m / (n + 1), abs=0.01)
    assert np.mean(rates) <= 2 * rate + 2 * (1 - rate) * (k - 1) / (n + k)
    with pytest.raises(Exception, match="each of its 4 student sets"):
        d.flags(new, new[:, None])


def test_the_shift_test_across_folds_holds_its_level_and_sees_a_shift():
    rng = np.random.default_rng(2)
    def p(shift):
        new = rng.normal(size=25) + shift
        noise = rng.normal(scale=0.3, size=(3, 25))
        return rank_sum_p_value(*[(rng.normal(size=40), new + noise[j]) for j in range(3)])
    assert np.mean([p(0.0) < 0.01 for _ in range(500)]) <= 0.015
    assert np.mean([p(1.0) < 0.01 for _ in range(100)]) > 0.8


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_cross_fitted_run_resumes_set_by_set(data_root, tmp_path, monkeypatch):
    """Stopped in set 1's second epoch, a cross-fitted run continues there: set 0 is not trained again, and the
    result equals an uninterrupted run's."""
    import dskd.run.trainer as engine

    cfg = profile_config("test", data_root=str(data_root), category="grid", folds=2, epochs=2)
    whole = fit(cfg, tmp_path / "whole", quiet=True)
    real = engine.write_log

    def stop_in_set_1(path, rows):
        real(path, rows)
        if path.parent.name == "1" and len(rows) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "write_log", stop_in_set_1)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "parts", quiet=True)
    monkeypatch.setattr(engine, "write_log", real)
    set_0 = (tmp_path / "parts" / "folds" / "0" / "train_log.csv").stat().st_mtime_ns
    parts = fit(cfg, tmp_path / "parts", quiet=True)
    assert (parts.student_set(0).path / "train_log.csv").stat().st_mtime_ns == set_0
    a = torch.load(whole.checkpoint, weights_only=False)["model"]
    b = torch.load(parts.checkpoint, weights_only=False)["model"]
    assert a.keys() == b.keys() and any(k.startswith("sets.1.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
