"""Export: the whole inference path in one file gives the PyTorch model's maps and scores through ONNX Runtime and
OpenVINO, on real images (MT Defects, MPDD), at batch 1 and at a dynamic batch; and predict runs from the file."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dskd.data.images import content_mask, fit_to_square, read_image
from dskd.deploy.export import export, export_model
from dskd.deploy.predictors import onnxruntime_predictor, openvino_predictor
from dskd.model.config import VARIANTS
from dskd.model.network import build_model

from ..conftest import MT_ROOT, REPO, SHARED_DATA

SIZE = 64
MPDD = SHARED_DATA / "mpdd" / "metal_plate" / "test" / "defective"


def _real_images(n_each: int = 2) -> list[np.ndarray]:
    paths = sorted((MT_ROOT / "MT_Crack" / "Imgs").glob("*.jpg"))[:n_each] + sorted(MPDD.glob("*.png"))[:n_each]
    if len(paths) < 2 * n_each:
        pytest.skip("MT Defects or MPDD not found in ../shared/data")
    return [read_image(p) for p in paths]


def _random_bn(model):
    """Non-trivial BatchNorm statistics, so that folding them is tested for real."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and m.weight.requires_grad:
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _batch(images, mode):
    x = np.stack([fit_to_square(im, SIZE, Image.BILINEAR, mode).transpose(2, 0, 1) for im in images])
    valid = np.stack([content_mask(im.shape[1], im.shape[0], SIZE, mode) for im in images])
    return x, (valid if mode == "pad" else None)


def _close(got, want, what):
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)
    assert err <= 1e-4, f"{what}: relative error {err:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_exported_maps_equal_pytorch_through_both_runtimes(backbone, variant, tmp_path):
    torch.manual_seed(0)
    model = _random_bn(build_model(backbone, variant, pretrained=backbone == "efficientnet_lite0")).eval()
    model.map_norm_stats.copy_(torch.rand_like(model.map_norm_stats) + 0.5)
    model = model.for_inference()
    meta = {"image_size": str(SIZE), "fit_mode": "stretch", "threshold": "1.5", "threshold_rule": "val_false_alarm"}
    path = export_model(model, "onnx", tmp_path / "m.onnx", meta, image_size=SIZE)
    x, _ = _batch(_real_images(), "stretch")
    with torch.no_grad():
        want = model.anomaly_map(torch.from_numpy(x).float() / 255)
    for predictor in (onnxruntime_predictor(path), openvino_predictor(path)):
        assert predictor.threshold == 1.5 or predictor.source.endswith(".onnx")
        for sl in (slice(0, 1), slice(0, len(x))):  # batch 1, and the dynamic batch
            maps, scores, _ = predictor.infer(x[sl], None)
            _close(maps, want.map[sl, 0].numpy(), f"{predictor.source} maps")
            _close(scores, want.score[sl].numpy(), f"{predictor.source} scores")


@pytest.mark.slow
@pytest.mark.parametrize("score_share", [0.0, 0.05])  # the map's maximum; the mean of its largest 5 % of pixels
def test_pad_mode_and_a_fixed_batch_agree_in_every_engine(tmp_path, score_share):
    model = _random_bn(build_model("efficientnet_lite0", "dskd", score_share=score_share)).eval().for_inference()
    meta = {"image_size": str(SIZE), "fit_mode": "pad", "threshold": "0.5"}
    onnx_path = export_model(model, "onnx", tmp_path / "m.onnx", meta, image_size=SIZE, batch=1, padded=True)
    xml_path = export_model(model, "openvino", tmp_path / "m.xml", meta, image_size=SIZE, batch=1, padded=True)
    images = _real_images(1)  # MT's tiles are far from square: pad mode pads them
    x, valid = _batch(images, "pad")
    assert not valid.all()
    with torch.no_grad():
        want = model.anomaly_map(torch.from_numpy(x).float() / 255, valid=torch.from_numpy(valid))
    ov = openvino_predictor(xml_path)
    assert (ov.fit_mode, ov.threshold, ov.image_size) == ("pad", 0.5, SIZE)  # metadata travels in the IR
    for predictor in (onnxruntime_predictor(onnx_path), ov):
        for i in range(len(x)):
            maps, scores, _ = predictor.infer(x[i: i + 1], valid[i: i + 1])
            _close(maps, want.map[i: i + 1, 0].numpy(), predictor.source)
            _close(scores, want.score[i: i + 1].numpy(), predictor.source)


@pytest.mark.slow
def test_export_and_predict_through_the_command_line_in_every_engine(data_root, tmp_path):
    from dskd import evaluate, fit
    from dskd.run.profiles import profile_config

    run = fit(profile_config("test", data_root=str(data_root), category="grid"), tmp_path / "run", quiet=True)
    metrics = evaluate(run, device="cpu")
    assert metrics["decision_rule"] == "val_false_alarm"  # set on held-out good images: the same in every engine
    onnx_path, xml_path = export(run.path, "onnx"), export(run.path, "openvino", tmp_path / "ir" / "model.xml")
    images = data_root / "synthetic" / "grid" / "test" / "hole"
    results = {}
    for name, source in (("torch", ["--run", run.path]), ("onnxruntime", ["--model", onnx_path]),
                         ("openvino", ["--model", xml_path, "--engine", "openvino"])):
        r = subprocess.run([sys.executable, "-m", "dskd", "predict", *map(str, source), str(images), "--out",
                            str(tmp_path / name), "--device", "cpu"], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        results[name] = list(csv.DictReader(open(tmp_path / name / "scores.csv")))
    assert len(results["torch"]) == 6
    for name in ("onnxruntime", "openvino"):
        for a, b in zip(results["torch"], results[name], strict=True):
            assert float(a["score"]) == pytest.approx(float(b["score"]), rel=1e-4)
            assert float(b["threshold"]) == metrics["decision_threshold"]
            if abs(float(a["score"]) - metrics["decision_threshold"]) > 1e-4:  # engines agree to 1e-4
                assert a["decision"] == b["decision"]
    meta = onnxruntime_predictor(onnx_path)
    decision = json.loads((run.path / "decision.json").read_text())
    assert (meta.threshold, meta.pixel_threshold, meta.decision.rule) == (
        decision["threshold"], decision["pixel_threshold"], "val_false_alarm")
    overlay = Image.open(results["openvino"][0]["overlay"])
    assert overlay.size == Image.open(results["openvino"][0]["path"]).size  # the image's own size


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("backbone", ["efficientnet_lite1", "efficientnet_lite2"])
def test_the_other_offline_teachers_train_export_and_predict_alike(backbone, data_root, tmp_path):
    """Lite1 and Lite2 as Lite0: a run trains and evaluates, and its ONNX, OpenVINO and INT8 exports give its maps."""
    from dskd import fit
    from dskd.deploy.export import export
    from dskd.deploy.predictors import open_predictor, torch_predictor
    from dskd.run.evaluation import evaluate
    from dskd.run.profiles import profile_config

    run = fit(profile_config("test", data_root=str(data_root), category="grid", backbone=backbone), tmp_path / "r",
              quiet=True)
    assert evaluate(run, device="cpu")["backbone"] == backbone
    images = sorted((data_root / "synthetic" / "grid" / "test" / "good").glob("*.png"))[:3]
    x, _ = _batch([np.asarray(Image.open(p).convert("RGB")) for p in images], "stretch")
    want, _, _ = torch_predictor(run.path, "cpu").infer(x, None)
    for fmt, int8 in (("onnx", False), ("openvino", False), ("openvino", True)):
        got, _, _ = open_predictor(model=export(run.path, fmt, int8=int8, calibration_images=8)).infer(x, None)
        if int8:  # INT8 changes the maps a little (results/benchmarks/int8.md); it must not change them much
            assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.95
        else:
            _close(got, want, f"{backbone} {fmt}")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_int8_export_quantizes_the_networks_only_and_keeps_the_maps(data_root, tmp_path):
    import openvino as ov

    from dskd import fit
    from dskd.deploy.export import InferenceGraph, _onnx_proto
    from dskd.deploy.int8 import STUDENT_NETWORKS, network_nodes
    from dskd.run.folder import load_run
    from dskd.run.profiles import profile_config

    # all 60 training images: the toy run whose INT8 maps this test has followed since it was written
    run = fit(profile_config("test", data_root=str(data_root), category="grid", val_fraction=0), tmp_path / "run",
              quiet=True)
    r = subprocess.run([sys.executable, "-m", "dskd", "export", "--run", str(run.path), "--format", "onnx", "--int8"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "--format openvino" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "dskd", "export", "--run", str(run.path), "--format", "openvino",
                        "--int8-teacher"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "needs --int8" in r.stderr and "Traceback" not in r.stderr
    fp32 = export(run.path, "openvino", tmp_path / "fp32.xml")
    r = subprocess.run([sys.executable, "-m", "dskd", "export", "--run", str(run.path), "--format", "openvino",
                        "--int8", "--calibration-images", "8"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    int8 = run.path / "model_int8.xml"
    model = ov.Core().read_model(str(int8))
    assert model.get_rt_info(["dskd", "precision"]).astype(str) == "int8"
    assert model.get_rt_info(["dskd", "calibration"]).astype(str).startswith("8 training images")
    assert model.get_rt_info(["dskd", "int8_networks"]).astype(str) == "se, sd, embed"
    # what stays float: every op converted from a node outside the quantized networks (the map path, the teacher)
    proto = _onnx_proto(InferenceGraph(load_run(run.path).model), (torch.rand(2, 3, 64, 64),), None, {})
    teacher_too = export(run.path, "openvino", tmp_path / "all.xml", int8=True, int8_teacher=True, calibration_images=8)
    quantized_convs = {}
    for path, networks in ((int8, STUDENT_NETWORKS), (teacher_too, (*STUDENT_NETWORKS, "model.teacher"))):
        inside = network_nodes(proto, networks)
        ops = {op.get_friendly_name(): op for op in ov.Core().read_model(str(path)).get_ordered_ops()}
        fed = {name for name, op in ops.items()
               if any(i.get_source_output().get_node().get_type_name() == "FakeQuantize" for i in op.inputs())}
        floating = {n for n in ops if n.split("/")[0] not in inside}
        assert {"MatMul", "ReduceL2", "Add"} <= {ops[n].get_type_name() for n in floating}  # the map path is there
        assert not fed & floating  # and nothing in it reads a quantized tensor (it clipped the defects)
        assert not fed & {n for n, op in ops.items() if op.get_type_name() == "GroupConvolution"}  # depthwise: float
        quantized_convs[path] = len(fed & {n for n, op in ops.items() if op.get_type_name() == "Convolution"})
    assert 5 < quantized_convs[int8] < quantized_convs[teacher_too]  # the students; --int8-teacher: the teacher too
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((run.config.image_size,) * 2))
                       for p in sorted((data_root / "synthetic" / "grid" / "test").rglob("*.png"))
                       if "ground_truth" not in p.parts][:8]).transpose(0, 3, 1, 2)
    want_maps, want_scores, _ = openvino_predictor(fp32).infer(images, None)
    got_maps, got_scores, _ = openvino_predictor(int8).infer(images, None)
    assert not np.allclose(got_maps, want_maps)  # quantized for real
    # close, not equal: a 2-epoch toy run calibrated on 8 images (real data: results/benchmarks/int8.md)
    assert np.corrcoef(got_maps.ravel(), want_maps.ravel())[0, 1] > 0.9
    assert np.corrcoef(got_scores, want_scores)[0, 1] > 0.8  # 8 scores: random ones would give about 0


def test_overlay_is_drawn_at_the_images_own_size_with_the_region_outlined():
    from dskd.deploy import overlay

    image = np.full((90, 150, 3), 128, np.uint8)  # wide, like many inspection frames
    amap = np.zeros((64, 64), np.float32)
    amap[20:40, 30:50] = 2.0
    for mode in ("stretch", "pad"):
        picture = np.asarray(overlay.render(image, amap, mode, threshold=1.0, score=2.0))
        assert picture.shape == (90, 150, 3)
        outlined = np.all(picture == overlay.OUTLINE, axis=-1)
        assert outlined.sum() > 20 and not outlined[75:, :].any()  # around the hot region only (rows 16 to 64)
    warm = amap.copy()
    warm[50:60, 0:10] = 0.5  # below the image threshold, above the pixel threshold
    passed = np.all(np.asarray(overlay.render(image, warm, "stretch", 1.0, 0.9, pixel_threshold=0.4))
                    == overlay.OUTLINE, axis=-1)
    assert not passed.any()  # the image is 'good': no outline, whatever its map (dskd.decision.outline)
    outlined = np.all(np.asarray(overlay.render(image, warm, "stretch", 1.0, 0.9, pixel_threshold=0.4,
                                                defective=True)) == overlay.OUTLINE, axis=-1)
    assert outlined[65:, :25].any() and outlined[20:65, 40:80].any()  # flagged: both regions outlined
    full = overlay.map_to_image(amap, 150, 90, "pad")
    assert full.shape == (90, 150) and full.max() == pytest.approx(2.0, abs=1e-3)


DEPLOYED = """
import sys
from dskd.cli import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")], "PyTorch was imported"
sys.exit(code)
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_predict_and_calibrate_an_exported_model_in_a_venv_without_torch(tmp_path, data_root):
    """A line-side PC: a fresh venv with only the [deploy] extra (no PyTorch), dskd's source, and the exported files:
    predict with them, and calibrate each on good images from the line."""
    import tomllib

    from dskd import fit
    from dskd.run.profiles import profile_config

    run = fit(profile_config("test", data_root=str(data_root), category="grid"), tmp_path / "run", quiet=True)
    model = export(run.path, "onnx", tmp_path / "line" / "model.onnx")
    ir = export(run.path, "openvino", tmp_path / "line" / "model.xml")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    deploy = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["deploy"]
    pip = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", *deploy], capture_output=True,
                         text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]

    def deployed(*argv):
        r = subprocess.run([str(venv / "bin/python"), "-c", DEPLOYED, *map(str, argv)], capture_output=True,
                           text=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin"})
        assert r.returncode == 0, r.stderr[-2000:]
        return r

    images = data_root / "synthetic" / "grid" / "test" / "hole"
    deployed("predict", "--model", model, images, "--out", tmp_path / "out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))
    assert len(rows) == 6 and all(row["decision"] in ("good", "defective") for row in rows)
    good = data_root / "synthetic" / "grid" / "test" / "good"
    for path, read in ((model, onnxruntime_predictor), (ir, openvino_predictor)):
        before = read(path).threshold
        deployed("calibrate", "--model", path, good, "--quiet")
        after = read(path).decision
        assert after.rule == "line_false_alarm" and after.n_images == 16 and after.threshold != before
        assert after.previous[0]["threshold"] == before
        deployed("predict", "--model", path, images, "--out", tmp_path / f"after_{path.suffix[1:]}", "--quiet")
        rows = list(csv.DictReader(open(tmp_path / f"after_{path.suffix[1:]}" / "scores.csv")))
        assert {float(row["threshold"]) for row in rows} == {after.threshold}
