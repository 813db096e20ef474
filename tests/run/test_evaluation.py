
import json

import numpy as np
import pandas as pd
import pytest
import torch

import dskd
from dskd.run.evaluation import evaluate
from dskd.run.profiles import profile_config
from dskd.run.training import fit

from ..conftest import needs_bottle


def test_map_statistics_and_threshold_leave_padding_out():
    """Normalization statistics weigh each map cell by how much of it shows the image; with the bottom half
    padded they are those of the top half's cells, and the training scores ignore the padded half."""
    from dskd.run.map_stats import fit_map_statistics as _fit_map_statistics

    model = dskd.build_model(variant="dskd", pretrained=False).eval()
    images = (torch.rand(6, 3, 64, 64) * 255).to(torch.uint8)
    valid = torch.zeros(6, 64, 64, dtype=torch.bool)
    valid[:, :32] = True  # rows 0-31: whole cells at strides 4, 8 and 16
    stats = _fit_map_statistics(model, images, torch.device("cpu"), 4, valid)
    with torch.no_grad():
        native = model.native_maps(images.float() / 255)
    for i, name in enumerate(model.students):
        for j, m in enumerate(native[name]):
            top = m[:, :, : m.shape[2] // 2].double()
            assert stats["map_stats"]["mean"][i][j] == pytest.approx(top.mean().item(), rel=1e-4)
            assert stats["map_stats"]["std"][i][j] == pytest.approx(top.std(unbiased=False).item(), rel=1e-3)
    with torch.no_grad():
        fused = model.fuse(native, (64, 64)).map[:, 0]
    assert stats["train_scores"] == pytest.approx(fused[:, :32].flatten(1).amax(1).tolist(), rel=1e-4)


def test_pad_mode_scores_and_metrics_see_only_the_image(mt, tmp_path):
    from dskd.run.evaluation import evaluate
    from dskd.run.metrics import all_metrics

    cfg = profile_config("test", dataset="mt_defects", category="mt_defects", data_root=str(mt), fit_mode="pad",
                         batch_size=4)
    run = fit(cfg, tmp_path / "run", quiet=True)
    result = evaluate(run, save_maps=True, device="cpu")
    saved = np.load(run.path / "maps.npz")
    valid = saved["valid"]
    assert valid.shape == (3, 64, 64) and valid[:, 13:51].all() and not valid[:, :13].any()  # 38 of 64 rows
    maps = saved["maps"].astype(np.float32)
    assert saved["scores"] == pytest.approx([m[v].max() for m, v in zip(maps, valid, strict=True)], abs=2e-2)
    again = all_metrics(saved["labels"], saved["scores"], saved["masks"], maps, valid=valid)
    assert result["pixel_auroc"] == pytest.approx(again["pixel_auroc"], abs=1e-2)



@needs_bottle
def test_data_without_masks_gives_image_metrics_and_absent_pixel_metrics(bottle, tmp_path, caplog):
    """Real MVTec AD bottle images without ground truth: image-level metrics, pixel metrics null with one warning,
    '—' in tables, and an explorer that shows no IoU."""
    from dskd import suite
    from dskd.repro.explorer import MapExplorer
    from dskd.run import archive

    cfg = profile_config("test", dataset="mvtec_ad", category="bottle", data_root=str(bottle))
    run = fit(cfg, tmp_path / "run", quiet=True)
    with caplog.at_level("WARNING"):
        result = evaluate(run, save_maps=True, device="cpu")
    assert [r.message for r in caplog.records if "no pixel masks" in r.message]
    assert result["pixel_auroc"] is None and result["aupro"] is None and result["pixel_f1_max"] is None
    assert json.loads((run.path / "metrics.json").read_text())["aupro"] is None
    assert 0 < result["image_auroc"] <= 1 and set(result["per_defect_image_auroc"]) == {"broken_large"}
    saved = archive.load(run.path)
    assert saved.masks is None
    runs = pd.DataFrame([{"category": "bottle", "method": "dskd", "seed": 0, **result, "train_minutes": 0.1,
                          "run": str(run.path)}])
    exp = suite.Experiment("mvtec_ad", "quick", str(bottle), ["bottle"], [0], tmp_path)
    table = suite.benchmark_table(exp, runs)
    assert table.loc["bottle", "pixel_auroc / dskd"] == "—" and table.loc["bottle", "image_auroc / dskd"] != "—"
    assert suite.method_table(runs, exp).loc["dskd", "aupro"] == "—"
    ex = MapExplorer({"bottle": run.path})
    assert ex.iou() is None and "IoU —" in ex.describe()
    ex.figure()
