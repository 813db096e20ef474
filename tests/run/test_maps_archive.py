import numpy as np
import pytest

from dskd import DskdError, suite
from dskd.run import archive
from dskd.run.evaluation import evaluate
from dskd.run.methods import METHODS
from dskd.run.metrics import all_metrics
from dskd.run.profiles import profile_config
from dskd.run.training import fit

from ..conftest import tiny_saved_maps


@pytest.mark.parametrize("masks", [True, False])
def test_archive_round_trip(tmp_path, masks):
    saved = tiny_saved_maps(masks=masks)
    saved.pixel_threshold = 0.125 if masks else None
    saved.set_scores = np.random.default_rng(1).random((4, 3)).astype(np.float32) if masks else None
    archive.save(tmp_path / "maps.npz", saved)
    back = archive.load(tmp_path)  # a run folder finds its maps.npz
    assert back.fusion == {"scale_fusion": "sum", "student_fusion": "max", "sigma": 2.0, "score_share": 0.0,
                           "map_norm": "zscore"}
    assert back.students == ["se", "sd"] and back.paths == saved.paths and back.threshold == 0.25
    assert (back.masks is None) == (not masks) and back.valid is None
    assert back.pixel_threshold == saved.pixel_threshold  # the deployed outline's, or None when not recorded
    np.testing.assert_array_equal(back.per_scale["sd"][2], saved.per_scale["sd"][2])
    np.testing.assert_array_equal(back.maps, saved.maps)
    if masks:  # a cross-fitted model's scores by each student set, which its decision compares
        np.testing.assert_array_equal(back.set_scores, saved.set_scores)
    else:
        assert back.set_scores is None
    assert archive.version(tmp_path / "maps.npz") == archive.VERSION


def test_archive_refuses_other_versions_and_corrupt_files(tmp_path):
    old = tmp_path / "old" / "maps.npz"
    old.parent.mkdir()
    np.savez_compressed(old, maps=np.zeros((1, 2, 2)))  # what dskd wrote before the schema had a version
    with pytest.raises(DskdError, match="schema version 0.*--save-maps"):
        archive.load(old)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DskdError, match="corrupt"):
        archive.load(bad)
    with pytest.raises(DskdError, match="not found"):
        archive.load(tmp_path / "missing")


def test_refuse_takes_the_runs_own_settings_unless_told_otherwise():
    saved = tiny_saved_maps()
    own = suite.fuse_saved(saved)
    explicit = suite.fuse_saved(saved, student_fusion="max", sigma=2.0)
    np.testing.assert_array_equal(own[0], explicit[0])
    other = suite.fuse_saved(saved, student_fusion="sum")
    assert not np.allclose(own[0], other[0])
    with pytest.raises(DskdError, match="map_norm"):
        suite.fuse_saved(saved, map_norm="none")


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_evaluates_and_refuses_to_its_own_maps(method, data_root, tmp_path):
    """Each registered method at the test profile: train, evaluate with saved maps, and re-fuse those maps with the
    run's recorded settings, which reproduces its fused map and scores."""
    cfg = profile_config("test", data_root=str(data_root), category="grid", student_fusion="max",
                         **METHODS[method].overrides)
    run = fit(cfg, runs_root=tmp_path, quiet=True)
    result = evaluate(run, save_maps=True, device="cpu")
    saved = archive.load(run.path)
    assert saved.fusion["student_fusion"] == "max" and saved.students == list(cfg.validate().model.students)
    maps, scores = suite.fuse_saved(saved)
    np.testing.assert_array_equal(maps.astype(np.float16), saved.maps)
    np.testing.assert_allclose(scores, saved.scores, rtol=1e-6)
    again = all_metrics(saved.labels, scores, saved.masks, maps)
    assert again["image_auroc"] == pytest.approx(result["image_auroc"], abs=1e-6)
    assert again["aupro"] == pytest.approx(result["aupro"], abs=1e-4)
