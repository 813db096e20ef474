"""Every rule's decision, built by keyword only, comes out as the code made it before the decision had a package of
its own (golden_2026-12-07.json was written by that code from the same seeded inputs), but for one change made on
purpose the same day: the outline's pixel threshold is now the image threshold (decision schema 5,
`dskd.decision.outline`). Every stored form reads back."""

import json

import numpy as np
import pytest

from dskd.decision import Decision, at_threshold, excess_flags, false_alarm_threshold, shift_test
from dskd.decision.stored import from_metadata, read_decision, read_out_of_fold, to_metadata, write_decision

from ..conftest import REPO

GOLDEN = json.loads((REPO / "tests" / "decision" / "golden_2026-12-07.json").read_text())


def _inputs():
    rng = np.random.default_rng(7)  # drawn in the order the golden file's script drew them
    s76, px = rng.gamma(2.0, 1.0, 76).astype(np.float32), rng.gamma(2.0, 0.3, 5000).astype(np.float32)
    s8, s20 = rng.gamma(2.0, 1.0, 8).astype(np.float32), rng.gamma(2.0, 1.0, 20).astype(np.float32)
    folds = [rng.gamma(2.0, 1.0, n).astype(np.float32).tolist() for n in (70, 70, 69)]
    test, labels = rng.gamma(2.0, 1.2, 40).astype(np.float32), (np.arange(40) % 3 == 0).astype(np.int64)
    return s76, px, s8, s20, folds, test, labels, rng.gamma(2.0, 1.0, (40, 3)).astype(np.float32)


def _decisions() -> dict[str, Decision]:
    s76, px, s8, s20, folds, *_ = _inputs()
    return {
        "held_out_76": Decision.on_good_images(scores=s76, target=0.01,
                                               source="76 good images held out of training (mt/mt, seed 0)"),
        "held_out_8": Decision.on_good_images(scores=s8, target=0.01, source="8 good images"),
        "equal_scores": Decision.on_good_images(scores=np.full(12, 3.5, np.float32), target=0.05,
                                                source="12 equal"),
        "line_20": Decision.on_good_images(scores=s20, target=0.02, rule="line_false_alarm",
                                           source="20 good images from the line (line/)"),
        "cross_conformal": Decision.cross_conformal(out_of_fold_scores=folds, target=0.01,
                                                    source="209 good training images in 3 folds"),
        "training_images": Decision.on_training_images(threshold=4.25, target=0.01, n_images=30,
                                                       source="30 training images (synthetic/stripes)",
                                                       note="no validation split"),
        "before_decisions": Decision.unrecorded(threshold=4.25),
    }


def _as_golden(d: Decision) -> dict:
    """Today's record in the golden file's schema 3: the out-of-fold scores under their old name, the pixel
    threshold left out (schema 5 set it to the image threshold)."""
    out = d.to_dict()
    out.pop("set_at")
    out["fold_scores"], out["schema"] = out.pop("out_of_fold_scores"), 3
    out.pop("pixel_threshold")
    return out


def _golden(name: str) -> dict:
    return {k: v for k, v in GOLDEN[name].items() if k != "pixel_threshold"}


def test_every_rule_decides_as_before_and_positional_arguments_are_refused():
    for name, decision in _decisions().items():
        assert _as_golden(decision) == _golden(name), name
        assert decision.pixel_threshold == decision.threshold, name  # the outline is drawn at the decision
    with pytest.raises(TypeError):
        Decision(1.0, 1.0, "val_false_alarm", "x", 1)  # keyword arguments only


def test_decisions_flag_and_check_as_before():
    s76, px, *_, folds, test, labels, per_set = _inputs()
    d76 = Decision.on_good_images(scores=s76, target=0.01, source="x")
    cc = Decision.cross_conformal(out_of_fold_scores=folds, target=0.01, source="x")
    assert d76.flags(test).tolist() == GOLDEN["flags_76"]
    assert cc.flags(test, per_set).tolist() == GOLDEN["flags_cc"]
    assert cc.p_values(per_set).tolist() == GOLDEN["p_values_cc"]
    types = ["good" if label == 0 else "crack" for label in labels]
    assert json.loads(json.dumps(at_threshold(labels, d76.flags(test), types, d76.bound_false_alarm))) == \
        GOLDEN["at_threshold"]
    assert shift_test(d76, test[labels == 0]) == GOLDEN["shift_76"]
    assert shift_test(cc, test[labels == 0], set_scores=per_set[labels == 0]) == GOLDEN["shift_cc"]
    assert excess_flags(d76, 5, 40) == GOLDEN["excess"]
    assert false_alarm_threshold(s76, 0.01)[0] == GOLDEN["held_out_76"]["threshold"]


def test_every_stored_form_reads_back(tmp_path):
    for name, decision in _decisions().items():
        write_decision(tmp_path / "decision.json", decision)
        assert read_decision(tmp_path / "decision.json") == decision, name
        old = {**GOLDEN[name], "set_at": ""}  # the schema-3 file today's code replaced
        (tmp_path / "old.json").write_text(json.dumps(old))
        back = read_decision(tmp_path / "old.json")
        assert _as_golden(back) == _golden(name) and back.pixel_threshold == GOLDEN[name]["pixel_threshold"], name
        meta = {"image_size": "64", "fit_mode": "stretch", **to_metadata(decision)}
        assert from_metadata(meta, "model.onnx") == (64, "stretch", decision)
    from dskd.decision.stored import FILE_KEYS, file_metadata

    for int8 in (None, (8, ("se", "sd"))):
        meta = file_metadata(_decisions()["held_out_76"], version="0", fingerprint="f", run_name="r", image_size=64,
                             fit_mode="pad", batch=None, students=("se", "sd"), int8=int8)
        assert set(meta) <= set(FILE_KEYS) and from_metadata(meta, "m.onnx")[:2] == (64, "pad")
    # an exported file from before the decision was one JSON entry, and one older still (a threshold alone)
    before = {"image_size": "64", "fit_mode": "pad", "threshold": "2.5", "threshold_rule": "val_false_alarm",
              "pixel_threshold": "1.5"}
    _, _, d = from_metadata(before, "old.onnx")
    assert (d.threshold, d.pixel_threshold, d.rule) == (2.5, 1.5, "val_false_alarm")
    _, _, d = from_metadata({"image_size": "64", "fit_mode": "stretch", "threshold": "3.0"}, "older.onnx")
    assert (d.threshold, d.pixel_threshold) == (3.0, 3.0)
    # a student set's out-of-fold scores: stored as scores, or (trained earlier) inside a decision of its own
    (tmp_path / "set").mkdir()
    write_decision(tmp_path / "set" / "decision.json", _decisions()["held_out_76"])
    assert read_out_of_fold(tmp_path / "set", "train it again") == GOLDEN["held_out_76"]["calibration_scores"]
