import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import dskd
from dskd.cli import main
from dskd.config import profile_config
from dskd.engine import fit, load_run

from .conftest import REPO


def _cfg(data_root, **kw):
    return profile_config("test", data_root=str(data_root), **kw)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dskd", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


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
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0.0 <= result[key] <= 1.0
    assert result["n_test"] == 40 and result["seconds"] > 0
    assert json.loads((run / "metrics.json").read_text())["aupro"] == result["aupro"]
    saved = np.load(run / "maps.npz")
    assert saved["maps"].shape == (40, 64, 64) and saved["masks"].shape == (40, 64, 64)
    assert saved["scale0_se"].shape == (40, 16, 16) and saved["scale2_sd"].shape == (40, 4, 4)

    images = data_root / "synthetic" / "grid" / "test" / "hole"
    r = _cli("predict", "--run", run, images, "--out", tmp_path / "pred", "--device", "cpu", cwd=REPO)
    assert r.returncode == 0, r.stderr
    rows = (tmp_path / "pred" / "scores.csv").read_text().splitlines()
    assert rows[0] == "path,score,is_anomalous,overlay" and len(rows) == 1 + 6
    assert len(list((tmp_path / "pred").glob("*_overlay.png"))) == 6


def test_resume_gives_the_same_weights(data_root, tmp_path, monkeypatch):
    # The cosine schedule is the case that could go wrong: its rate must continue where it stopped.
    cfg = _cfg(data_root, epochs=2, variant="dskd", lr_schedule="cosine")
    whole = fit(cfg, tmp_path / "whole", quiet=True)

    import dskd.engine as engine
    real = engine._write_log

    def interrupt_after_first_epoch(path, rows):
        real(path, rows)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_write_log", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "parts", quiet=True)
    monkeypatch.setattr(engine, "_write_log", real)
    assert torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    with pytest.raises(dskd.DskdError, match="--resume"):
        fit(cfg, tmp_path / "parts", resume=False, quiet=True)
    parts = fit(cfg, tmp_path / "parts", resume=True, quiet=True)
    a = torch.load(whole.checkpoint, weights_only=False)["model"]
    b = torch.load(parts.checkpoint, weights_only=False)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_finished_run_is_cached(data_root, tmp_path):
    cfg = _cfg(data_root, variant="se_only")
    run = fit(cfg, runs_root=tmp_path, quiet=True)
    stamp = run.checkpoint.stat().st_mtime_ns
    again = fit(cfg, runs_root=tmp_path, quiet=True)
    assert again.path == run.path and again.checkpoint.stat().st_mtime_ns == stamp
    with pytest.raises(dskd.DskdError, match="other settings"):
        fit(_cfg(data_root, variant="se_only", seed=1), run.path, quiet=True)


KILL_DURING_SAVE = """
import os, sys, torch
import dskd.engine as engine
from dskd.config import profile_config
calls = 0
real_save = torch.save
def dying_save(obj, f, *a, **k):
    global calls
    calls += 1
    if calls == 2:  # the second epoch's checkpoint: write half of it, then die like a killed process
        import io
        buf = io.BytesIO(); real_save(obj, buf)
        with open(f, "wb") as h:
            h.write(buf.getvalue()[: len(buf.getvalue()) // 2]); h.flush()
        os._exit(9)
    return real_save(obj, f, *a, **k)
torch.save = dying_save
engine.fit(profile_config("test", data_root=sys.argv[1], epochs=3, variant="se_only"), sys.argv[2], quiet=True)
"""


def test_checkpoint_is_never_half_written(data_root, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(data_root), str(out)], capture_output=True,
                       text=True, timeout=300, cwd=REPO)
    assert r.returncode == 9, r.stderr
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)  # loads: the old, complete file
    assert ckpt["epoch"] == 1
    run = fit(profile_config("test", data_root=str(data_root), epochs=3, variant="se_only"), out, quiet=True)
    assert torch.load(run.checkpoint, weights_only=False)["epoch"] == 3


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    import dskd.model as model_module
    real = model_module.pyramid_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        value = real(*a, **k)
        return value * float("nan") if calls["n"] > 8 else value  # 60 images, batch 8: 8 steps an epoch

    monkeypatch.setattr(model_module, "pyramid_loss", poisoned)
    with pytest.raises(dskd.DskdError, match="non-finite.*epoch 2"):
        fit(_cfg(data_root, epochs=3, variant="se_only"), tmp_path / "run", quiet=True)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


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


def test_cosine_schedule_runs_from_base_rate_to_zero():
    from dskd.config import STFPM_SGD
    from dskd.engine import _set_cosine_lr

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    seen = []
    for progress in (0.0, 0.5, 1.0):
        _set_cosine_lr({"se": opt}, {"se": STFPM_SGD}, progress)
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.4, 0.2, 0.0])


@pytest.mark.parametrize("variant", ["dskd", "sd_only"])
def test_bn_recalibration_gives_exact_statistics_of_final_weights(variant):
    from dskd.engine import recalibrate_batchnorm

    torch.manual_seed(0)
    model = dskd.build_model(variant=variant, pretrained=False)
    model.train()
    for _ in range(2):  # running statistics that trail the weights, as after training
        model(torch.rand(4, 3, 64, 64))
    teacher_stats = [b.clone() for b in model.teacher.buffers()]
    images = (torch.rand(16, 3, 64, 64) * 255).to(torch.uint8)
    recalibrate_batchnorm(model, images, torch.device("cpu"), batch_size=8)
    assert not model.training
    # The first norm of each trained module sees inputs that no other norm shaped: its mean is exact.
    first = model.se.stem[0][1] if variant == "dskd" else model.embed.down1[0][1]
    seen = []
    hook = first.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        model(images.float() / 255.0)
    hook.remove()
    # two equal batches of 8: the cumulative average of batch means is the mean over all 16 images
    torch.testing.assert_close(first.running_mean, seen[0].mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert first.momentum == 0.1 and first.num_batches_tracked == 2
    for a, b in zip(teacher_stats, model.teacher.buffers(), strict=True):
        assert torch.equal(a, b)  # the frozen teacher is never touched


def test_fields_added_later_keep_earlier_run_names():
    from dskd.config import RunConfig

    # the settings of the second session's quick profile, spelled out so that a later profile change cannot move them
    cfg = RunConfig().with_overrides(
        dataset="mt_defects", category="mt_defects", data_root="../shared/data", backbone="efficientnet_lite0",
        split_file="../shared/data/mt_defects/splits/differnet_train_free.txt", image_size=64, epochs=6, batch_size=8,
    ).validate()
    old = cfg.with_overrides(recalibrate_bn=False, lr_schedule="constant", df_input="raw")
    # the name the 3-seed quick benchmark's seed-0 dskd run had before these fields existed (session 2)
    assert old.fingerprint() == "20e493b2cb24"
    assert cfg.fingerprint() != old.fingerprint()  # recalibrated runs are other runs
    assert RunConfig.from_dict(old.to_dict()).fingerprint() == old.fingerprint()


def test_map_statistics_and_threshold_leave_padding_out():
    """Normalization statistics weigh each map cell by how much of it shows the image; with the bottom half
    padded they are those of the top half's cells, and the training scores ignore the padded half."""
    from dskd.engine import _fit_map_statistics

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
    from dskd.engine import evaluate
    from dskd.metrics import all_metrics

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
