import subprocess
import sys

import pytest
import torch

import dskd
from dskd.run.profiles import profile_config
from dskd.run.training import fit

from ..conftest import REPO


def _cfg(data_root, **kw):
    return profile_config("test", data_root=str(data_root), **kw)



@pytest.mark.slow
def test_resume_gives_the_same_weights(data_root, tmp_path, monkeypatch):
    # The cosine schedule is the case that could go wrong: its rate must continue where it stopped.
    cfg = _cfg(data_root, epochs=2, variant="dskd", lr_schedule="cosine")
    whole = fit(cfg, tmp_path / "whole", quiet=True)

    import dskd.run.trainer as engine
    real = engine.write_log

    def interrupt_after_first_epoch(path, rows):
        real(path, rows)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "write_log", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "parts", quiet=True)
    monkeypatch.setattr(engine, "write_log", real)
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
import os, pathlib, sys
import dskd.run.training as engine
from dskd.run.profiles import profile_config
calls = 0
real_write = pathlib.Path.write_bytes
def dying_write(self, data):
    global calls
    if "checkpoint.pt" in self.name:
        calls += 1
        if calls == 2:  # the second epoch's checkpoint: write half of it, then die like a killed process
            with open(self, "wb") as h:
                h.write(bytes(data)[: len(data) // 2]); h.flush()
            os._exit(9)
    return real_write(self, data)
pathlib.Path.write_bytes = dying_write
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
    import dskd.model.network as model_module
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



def test_cosine_schedule_runs_from_base_rate_to_zero():
    from dskd.run.config import STFPM_SGD

    assert [STFPM_SGD.cosine_rate(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([0.4, 0.2, 0.0])
    opt = STFPM_SGD.build([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.4


@pytest.mark.parametrize("variant", ["dskd", "sd_only"])
def test_bn_recalibration_gives_exact_statistics_of_final_weights(variant):
    from dskd.run.map_stats import recalibrate_batchnorm

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




def test_stop_reason_counts_epochs_since_the_last_real_improvement():
    from dskd.run.stopping import stop_reason

    assert stop_reason([1.0, 0.9, 0.8], 2, 0.01, 10) is None
    # 0.895 is not 1 % below 0.9: epochs 3 and 4 do not improve, so two epochs without one stop at patience 2
    assert "for 2 epochs" in stop_reason([1.0, 0.9, 0.895, 0.899], 2, 0.01, 10)
    # a slow fall counts once it adds up to the tolerance: 0.9 -> 0.895 -> 0.889 is 1.2 % below 0.9
    assert stop_reason([1.0, 0.9, 0.895, 0.889], 2, 0.01, 10) is None
    assert "most epochs allowed (4)" in stop_reason([1.0, 0.9, 0.8, 0.7], 2, 0.01, 4)


@pytest.mark.slow
def test_the_stopping_rule_stops_on_the_held_out_loss_and_epochs_stays_exact(data_root, tmp_path):
    # A tolerance no fall can meet stops the run after `patience` epochs past the first; the log keeps the held-out
    # loss of each epoch, and --epochs N (which turns the rule off) still trains exactly N, held-out loss logged too.
    rule = _cfg(data_root, variant="se_only", max_epochs=6, stop_patience=2, stop_min_improvement=0.99,
                val_fraction=0.25)
    run = fit(rule, tmp_path / "rule", quiet=True)
    log = (run.path / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 3 and "held_out_total" in log[0] and "held_out_se" in log[0]
    info = run.info()
    assert info["epochs_trained"] == 3 and "not fallen 99.0% below its best" in info["stopped"]
    assert torch.load(run.checkpoint, weights_only=False)["epoch"] == 3
    assert "emax6" in rule.run_name()

    fixed = rule.with_overrides(epochs=4)
    assert fixed.max_epochs == 0 and "-e4-" in fixed.run_name()
    run = fit(fixed, tmp_path / "fixed", quiet=True)
    assert run.info()["epochs_trained"] == 4 and len((run.path / "train_log.csv").read_text().splitlines()) == 5

    with pytest.raises(dskd.DskdError, match="needs good images held out"):
        fit(rule.with_overrides(max_epochs=3, val_fraction=0.0), tmp_path / "none", quiet=True)


def test_the_stopping_rule_leaves_earlier_run_names_alone():
    cfg = profile_config("quick", dataset="mt_defects", category="mt_defects")
    assert cfg.with_overrides(stop_patience=9).fingerprint() == cfg.fingerprint()  # the rule is off
    ruled = cfg.with_overrides(max_epochs=40)
    assert ruled.with_overrides(max_epochs=40, epochs=3).max_epochs == 40
    assert ruled.fingerprint() != ruled.with_overrides(max_epochs=40, stop_patience=9).fingerprint()
