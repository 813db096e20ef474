import json
import subprocess
import sys

import numpy as np
import pytest

from dskd import archive, runall
from dskd.config import ModelConfig
from dskd.explorer import MapExplorer

from .conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_notebooks_committed_clean_with_parameters_cell():
    assert len(NOTEBOOKS) >= 10
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), path.name
        params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(params) == 1, path.name
        for name in ("profile", "data_root", "categories", "backbone", "image_size", "epochs", "seeds", "out_dir"):
            assert f"{name} =" in "".join(params[0]["source"]), (path.name, name)


@pytest.mark.slow
def test_every_notebook_executes_under_the_test_profile(tmp_path):
    code = runall.main(["--profile", "test", "--out", str(tmp_path), "--jobs", "2"])
    assert code == 0, [p.read_text()[-2000:] for p in (tmp_path / "notebooks").glob("*.log")]
    tables = {p.stem for p in (tmp_path / "tables").glob("*.csv")}
    assert {"table_mvtec_ad", "table_mvtec3d_rgb", "table_mt_defects", "table_mt_defects_per_defect",
            "ablation_students", "ablation_df_embedding", "ablation_multiscale", "backbones_complexity",
            "backbones_accuracy"} <= tables
    for name in tables:
        assert (tmp_path / "tables" / f"{name}.md").is_file()
    md = (tmp_path / "tables" / "table_mvtec_ad.md").read_text()
    assert "synthetic textures standing in for MVTec AD" in md and "64 px" in md and "seeds 0" in md
    figures = {p.name for p in (tmp_path / "figures").iterdir()}
    assert "qualitative_synthetic_stripes.png" in figures and "qualitative_synthetic_stripes.pdf" in figures
    assert len(list((tmp_path / "notebooks").glob("*.ipynb"))) == len(NOTEBOOKS)
    # A second run finds everything up to date and runs nothing.
    again = subprocess.run([sys.executable, "-m", "dskd.runall", "--profile", "test", "--out",
                            str(tmp_path), "--only", "22"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_run_all_help_documents_every_option():
    out = subprocess.run([str(REPO / "run_all.sh"), "--help"], capture_output=True, text=True, timeout=120).stdout
    for option in ("--profile", "--data-root", "--only", "--force", "--jobs", "demo", "quick", "paper"):
        assert option in out, option


def test_run_all_reports_failures_and_unknown_names(tmp_path, capsys):
    assert runall.main(["--only", "99_nothing", "--out", str(tmp_path)]) == 2
    assert "99_nothing" in capsys.readouterr().err


@pytest.fixture
def fake_run(tmp_path):
    """A run directory whose saved maps are known exactly."""
    n, s = 3, 32
    masks = np.zeros((n, s, s), bool)
    masks[1, 4:12, 4:12] = True  # 64 defect pixels
    maps = np.zeros((n, s, s), np.float32)
    maps[1, 4:12, 4:16] = 1.0  # 96 predicted pixels, 64 of them right: IoU 64/96
    maps16 = maps.astype(np.float16)
    saved = archive.SavedMaps(
        images=np.zeros((n, s, s, 3), np.uint8), masks=masks, labels=np.array([0, 1, 0]),
        scores=maps.reshape(n, -1).max(1), maps=maps16, paths=["a.png", "b.png", "c.png"],
        defect_types=["good", "hole", "good"], threshold=0.5, per_student={"se": maps16, "sd": maps16 * 2},
        per_scale={name: [maps[:, ::f, ::f] for f in (4, 8, 16)] for name in ("se", "sd")},
        norm=np.zeros((2, 2, 3), np.float32), fusion=archive.SavedMaps.fusion_of(ModelConfig()))
    run = tmp_path / "run"
    archive.save(run / "maps.npz", saved)
    return run


def test_explorer_callbacks_and_iou(fake_run):
    ex = MapExplorer({"fake": fake_run})
    assert ex.threshold == pytest.approx(0.5) and ex.iou() == 1.0  # image 0: nothing predicted, nothing true
    ex.set_image(1)
    assert ex.iou() == pytest.approx(64 / 96)
    ex.set_threshold(2.0)
    assert ex.iou() == 0.0
    ex.set_view("student sd")
    ex.set_threshold(1.5)
    assert ex.iou() == pytest.approx(64 / 96)
    assert "scale 3 of se" in ex.views
    ex.set_view("scale 1 of se")
    assert ex.current_map().shape == (32, 32)
    ex.set_opacity(3.0)
    assert ex.opacity == 1.0
    with pytest.raises(ValueError, match="out of range"):
        ex.set_image(7)
    with pytest.raises(ValueError, match="fused"):
        ex.set_view("nonsense")
    box = ex.widget()  # builds every control without a running kernel
    assert len(box.children) == 4
    ex.set_cmap("viridis")
    fig = ex.figure()
    assert any("IoU" in ax.get_title() for ax in fig.axes)
