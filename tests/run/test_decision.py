"""The deployed decision: a threshold from good images alone, and the numbers at it."""

import json
import shutil

import numpy as np
import pytest

from dskd.data import VAL_MIN, load_dataset
from dskd.run.decision import at_threshold, false_alarm_threshold, from_good_images
from dskd.run.evaluation import evaluate
from dskd.run.profiles import profile_config
from dskd.run.training import fit


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


def test_a_small_or_degenerate_validation_split_says_what_it_supports(caplog):
    few = from_good_images(np.linspace(0, 1, 12, dtype=np.float32), np.zeros(10, np.float32), 0.01, "12 images")
    assert few.expected_false_alarm == pytest.approx(1 / 13) and "1/13 = 7.7%" in few.note and "99 images" in few.note
    flat = from_good_images(np.full(200, 0.3, np.float32), np.zeros(10, np.float32), 0.01, "200 images")
    assert "all 200 validation scores are equal" in flat.note and flat.threshold > 0.3
    assert sum("decision threshold" in r.message for r in caplog.records) == 2


def test_numbers_at_the_threshold():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.9, 0.3, 0.8, 0.4, 0.95])
    types = ["good"] * 4 + ["crack", "crack", "hole"]
    got = at_threshold(labels, scores, types, 0.5)
    assert got["false_alarm_rate"] == 0.25 and got["recall"] == pytest.approx(2 / 3)
    assert got["precision_at_threshold"] == pytest.approx(2 / 3) and got["f1_at_threshold"] == pytest.approx(2 / 3)
    assert got["per_defect_recall"] == {"crack": 0.5, "hole": 1.0}
    good_only = at_threshold(labels[:4], scores[:4], types[:4], 0.5)
    assert good_only["false_alarm_rate"] == 0.25 and good_only["recall"] is None
    assert good_only["precision_at_threshold"] is None
    assert at_threshold(labels[4:], scores[4:], types[4:], 0.5)["false_alarm_rate"] is None


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
    run.decision_file.unlink()  # set again, now beside the permuted test split
    shuffled = evaluate(run, _grid_copy(data_root, tmp_path / "permuted", permute=True), device="cpu")
    same = ("threshold", "pixel_threshold", "rule", "n_images", "expected_false_alarm")
    def kept(d):
        return [d[k] for k in same]
    assert kept(shuffled["decision"]) == kept(truth["decision"]) == kept(decision)
    assert shuffled["image_auroc"] != truth["image_auroc"] and shuffled["recall"] != truth["recall"]
    assert truth["image_f1_max"] is not None and truth["false_alarm_rate"] is not None
    assert truth["precision"] == "float32" and 0 <= truth["precision_at_threshold"] <= 1  # two keys, two meanings
