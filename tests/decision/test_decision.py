"""The deployed decision: a threshold from good images alone, and the numbers at it."""

import json
import logging
import shutil

import numpy as np
import pytest

from dskd.data import VAL_MIN, load_dataset
from dskd.decision import Decision, at_threshold, false_alarm_threshold, shift_test
from dskd.run.evaluation import evaluate
from dskd.run.profiles import profile_config
from dskd.run.training import fit
from dskd.stats import beta_quantile, clopper_pearson, false_alarm_bound, rank_sum_p_value


def test_false_alarm_threshold_follows_its_stated_rule():
    scores = np.arange(199, dtype=np.float32)  # n = 199: m = floor(0.01 * 200) = 2
    t, expected = false_alarm_threshold(scores, 0.01)
    assert expected == pytest.approx(2 / 200)
    assert 197 < t < 197.001 and (scores >= t).sum() == 1  # just above the 2nd highest: only the highest flagged
    t, expected = false_alarm_threshold(scores[:21], 0.01)  # 21 images cannot resolve 1 %: above their highest
    assert 20 < t < 20.001 and expected == pytest.approx(1 / 22)
    t, _ = false_alarm_threshold(np.full(30, 0.5, np.float32), 0.05)  # ties: nobody flagged
    assert t > 0.5 and t == np.nextafter(np.float32(0.5), np.float32(1))


def test_false_alarm_rate_on_new_good_images_meets_the_target():
    """Fresh draws from the validation images' distribution are flagged at the rate the rule promises."""
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(200):
        t, expected = false_alarm_threshold(rng.gamma(2.0, size=999), 0.02)
        rates.append((rng.gamma(2.0, size=2000) >= t).mean())
    assert expected == pytest.approx(0.02) and np.mean(rates) == pytest.approx(0.02, abs=0.002)


def test_the_stated_bound_and_intervals_are_the_exact_beta_quantiles():
    """Against SciPy's Beta law: the bound is the 0.95 quantile of Beta(m, n + 1 - m), the intervals Clopper–Pearson."""
    from scipy import stats

    for m, n in ((1, 8), (1, 21), (1, 76), (7, 760), (3, 299)):
        assert false_alarm_bound(m, n) == pytest.approx(stats.beta.ppf(0.95, m, n + 1 - m), rel=1e-9)
    for k, n in ((0, 20), (4, 20), (20, 20), (3, 191), (150, 392)):
        want = stats.binomtest(k, n).proportion_ci(method="exact")
        assert clopper_pearson(k, n) == pytest.approx((want.low, want.high), abs=1e-9)
    assert beta_quantile(0.5, 1, 1) == pytest.approx(0.5)


def test_the_bound_holds_with_its_confidence_over_calibration_draws():
    """Over many draws of 76 calibration images, the fresh-image false-alarm rate of the threshold exceeds the
    stated bound in about 5 % of draws, as promised (the rule's rate is exactly Beta distributed)."""
    rng = np.random.default_rng(3)
    over = []
    for _ in range(2000):
        d = Decision.on_good_images(scores=rng.random(76, dtype=np.float32),
                                    target=0.01, source="draw")
        over.append(1 - d.threshold > d.bound_false_alarm)  # uniform scores: the rate is 1 - threshold
    assert d.expected_false_alarm == pytest.approx(1 / 77) and np.mean(over) == pytest.approx(0.05, abs=0.015)


def test_the_shift_test_keeps_its_level_and_sees_a_shift():
    rng = np.random.default_rng(4)
    same = [rank_sum_p_value((rng.normal(size=21), rng.normal(size=20))) < 0.01 for _ in range(1000)]
    assert np.mean(same) <= 0.02  # exchangeable good images: at most about the 1 % level
    moved = [rank_sum_p_value((rng.normal(size=21), rng.normal(size=20) + 1.5)) < 0.01 for _ in range(200)]
    assert np.mean(moved) > 0.9
    d = Decision.on_good_images(scores=rng.normal(size=76).astype(np.float32),
                                target=0.01, source="76 images")
    assert shift_test(d, rng.normal(size=191) + 1.0)["shifted"] and not shift_test(d, np.array([]))


def test_a_decision_file_is_checked_field_by_field():
    d = Decision.on_good_images(scores=np.linspace(0, 1, 30, dtype=np.float32),
                                target=0.01, source="30 images")
    again = Decision.from_dict(d.to_dict())
    assert again == d and again.calibration_scores == sorted(again.calibration_scores)
    old = Decision.from_dict({"threshold": 3.0, "pixel_threshold": 2.0, "rule": "val_false_alarm", "source": "x",
                              "n_images": 21, "target_false_alarm": 0.01, "expected_false_alarm": 1 / 22})
    assert old.bound_false_alarm == pytest.approx(false_alarm_bound(1, 21))  # computed for files before the bound
    for broken, words in (({"threshold": 3.0}, "'rule' is missing"), ([1, 2], "not a decision"),
                          ({**d.to_dict(), "threshold": "3"}, "threshold='3' must be a number"),
                          ({**d.to_dict(), "n_images": -2}, "n_images=-2 must be at least 0"),
                          ({**d.to_dict(), "calibration_scores": [1.0, None]}, "calibration_scores=None"),
                          ({**d.to_dict(), "rule": "magic"}, "rule='magic' is not allowed")):
        with pytest.raises(ValueError, match=words):
            Decision.from_dict(broken, "run/decision.json")


def test_a_small_or_degenerate_validation_split_says_what_it_supports(caplog):
    few = Decision.on_good_images(scores=np.linspace(0, 1, 12, dtype=np.float32),
                                  target=0.01, source="12 images")
    assert few.expected_false_alarm == pytest.approx(1 / 13) and "1/13 = 7.7%" in few.note
    assert "99 good images" in few.note
    flat = Decision.on_good_images(scores=np.full(200, 0.3, np.float32),
                                   target=0.01, source="200 images")
    assert "all 200 calibration scores are equal" in flat.note and flat.threshold > 0.3
    # the two warnings; whether the INFO lines are captured too depends on the logging level earlier tests left
    assert sum(r.levelno == logging.WARNING and "decision threshold" in r.message for r in caplog.records) == 2


def test_numbers_at_the_threshold():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.9, 0.3, 0.8, 0.4, 0.95])
    types = ["good"] * 4 + ["crack", "crack", "hole"]
    got = at_threshold(labels, scores >= 0.5, types)
    assert got["false_alarm_rate"] == 0.25 and got["recall"] == pytest.approx(2 / 3)
    assert got["precision_at_threshold"] == pytest.approx(2 / 3) and got["f1_at_threshold"] == pytest.approx(2 / 3)
    assert got["per_defect_recall"] == {"crack": 0.5, "hole": 1.0}
    good_only = at_threshold(labels[:4], scores[:4] >= 0.5, types[:4])
    assert good_only["false_alarm_rate"] == 0.25 and good_only["recall"] is None
    assert good_only["precision_at_threshold"] is None
    assert at_threshold(labels[4:], scores[4:] >= 0.5, types[4:])["false_alarm_rate"] is None


def test_validation_split_is_seeded_disjoint_and_never_trained_on(data_root):
    """60 synthetic training images: 10 % is 6, so the minimum of 8 applies; other seeds hold out others."""
    def split(name, seed=0, fraction=0.1):
        return {s.path for s in load_dataset("synthetic", data_root, "grid", name, 64, val_fraction=fraction,
                                             seed=seed).samples}

    train, val, everything = split("train"), split("val"), split("train", fraction=0)
    assert len(val) == VAL_MIN and not train & val and train | val == everything
    assert split("val") == val and split("val", seed=1) != val


def _grid_copy(data_root, dst, permute: bool):
    """The synthetic grid category as MVTec AD data (train/ linked, no masks), its test labels shuffled among the
    test folders with `permute`."""
    src = data_root / "synthetic" / "grid"
    (dst / "grid").mkdir(parents=True)
    (dst / "grid" / "train").symlink_to(src / "train")
    files = sorted((src / "test").rglob("*.png"))
    folders = [f.parent.name for f in files]
    for f, folder in zip(files, np.random.default_rng(1).permutation(folders) if permute else folders, strict=True):
        (dst / "grid" / "test" / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst / "grid" / "test" / folder / f"{f.parent.name}_{f.name}")
    return dst


@pytest.mark.timeout(900)
def test_permuting_the_test_labels_leaves_the_deployed_threshold_unchanged(data_root, tmp_path):
    load_dataset("synthetic", data_root, "grid", "test", 64)  # generates the data
    data = _grid_copy(data_root, tmp_path / "mvtec_ad", permute=False)
    cfg = profile_config("test", dataset="mvtec_ad", data_root=str(data), category="grid")
    run = fit(cfg, tmp_path / "run", quiet=True)
    decision = json.loads(run.decision_file.read_text())
    assert decision["rule"] == "val_false_alarm" and decision["n_images"] == VAL_MIN
    truth = evaluate(run, device="cpu")
    one_off = evaluate(run, threshold_from=data / "grid" / "test", device="cpu")  # a labelled folder, once
    assert one_off["decision_rule"] == "f1_max_on_folder" and one_off["decision_threshold"] != decision["threshold"]
    assert json.loads(run.decision_file.read_text()) == decision  # the deployed decision is untouched...
    assert evaluate(run, device="cpu")["decision"]["threshold"] == decision["threshold"]  # ...and used after it
    run.decision_file.unlink()  # set again, now beside the permuted test split
    shuffled = evaluate(run, _grid_copy(data_root, tmp_path / "permuted", permute=True), device="cpu")
    same = ("threshold", "pixel_threshold", "rule", "n_images", "expected_false_alarm")
    def kept(d):
        return [d[k] for k in same]
    assert kept(shuffled["decision"]) == kept(truth["decision"]) == kept(decision)
    assert shuffled["image_auroc"] != truth["image_auroc"] and shuffled["recall"] != truth["recall"]
    assert truth["image_f1_max"] is not None and truth["false_alarm_rate"] is not None
    assert truth["precision"] == "float32" and 0 <= truth["precision_at_threshold"] <= 1  # two keys, two meanings
    # the outline is the decision's: good images outlined exactly when flagged; SegF1 and AUPRO at 0.05 beside
    assert truth["good_outlined"] == truth["false_alarm_rate"] and decision["pixel_threshold"] == decision["threshold"]
    if truth["pixel_f1_max"] is not None:  # with masks
        assert 0 <= truth["pixel_f1_at_threshold"] <= 1 and 0 <= truth["aupro_005"] <= truth["aupro"] + 1e-9
