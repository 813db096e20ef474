"""The benchmark harnesses run end to end at toy sizes (their numbers are meaningless here, their plumbing is not)."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from benchmarks import recall_spread, speed

from .conftest import tiny_saved_maps


def test_speed_harness_writes_rows_ratios_and_before_after(tmp_path):
    rc = speed.main(["--image-size", "64", "--batch", "2", "--repeats", "1", "--steps", "1", "--skip-memory",
                     "--models", "dskd", speed.PLAIN, "se_only", "--out", str(tmp_path)])
    assert rc == 0
    table = pd.read_csv(tmp_path / "speed.csv", index_col="model")
    assert list(table.index) == ["dskd", speed.PLAIN, "se_only"]
    for col in ("train_img_s", "infer_img_s", "latency_ms", "trainable_params", "frozen_params", "gflops",
                "train_gflops"):
        assert (table[col] > 0).all(), col
    # The shipped inference path changes speed, not the networks' work: the same parameters, and FLOPs lower only
    # by the trimmed map path (fewer upsamplings, one smoothed channel: under 1 % of the total).
    assert 0.99 * table.loc[speed.PLAIN, "gflops"] < table.loc["dskd", "gflops"] < table.loc[speed.PLAIN, "gflops"]
    assert table.loc["dskd", "trainable_params"] == table.loc[speed.PLAIN, "trainable_params"]
    assert table.loc["dskd", "train_gflops"] > table.loc["se_only", "train_gflops"]
    text = (tmp_path / "speed.md").read_text()
    assert "Metrics (image AUROC, pixel AUROC, AUPRO) over 500 maps" in text


def test_gpu_sweep_summary_averages_three_seeds_and_prefers_the_later_record(tmp_path):
    import json

    from benchmarks import gpu_sweep

    def record(method, seed, image, **extra):
        return {"name": f"{method}_{seed}", "method": method, "size": 64, "epochs": 20, "fit": "stretch",
                "seed": seed, "train_minutes": 1.0, "default": [image, 0.8, 0.4], "per_type": {"Crack": image},
                **extra}

    first = tmp_path / "a.jsonl"
    later = tmp_path / "b.jsonl"
    first.write_text("\n".join(json.dumps(r) for r in [
        record("dskd", 0, 0.10),  # replaced by b.jsonl's seed 0
        record("se_only", 0, 0.5),  # one seed only: no mean of three, left out
        {"job": ["dskd", 64, 20, "stretch", 2], "error": "boom"},
    ]))
    later.write_text("\n".join(json.dumps(record("dskd", s, v)) for s, v in [(0, 0.90), (1, 0.92), (2, 0.94)]))
    gpu_sweep.summarize([first, later], tmp_path)
    table = pd.read_csv(tmp_path / "accuracy_mt_gpu_long.csv")
    assert list(table["config"]) == ["dskd"]
    row = table.iloc[0]
    assert row["seeds"] == 3 and row["train_minutes"] == 3.0
    assert abs(row["image_auroc_mean"] - 0.92) < 1e-9
    assert abs(row["image_auroc_std"] - (0.0008 / 3) ** 0.5) < 1e-4  # population std of 0.90, 0.92, 0.94
    assert "92.0 ± 1.6" in (tmp_path / "accuracy_mt_gpu_long.md").read_text()


@pytest.mark.slow
def test_gpu_sweep_trains_its_grid_through_the_executor(mt, tmp_path):
    """The smoke grid on the CPU with the local executor: one JSON record per run, re-fused analyses included."""
    import json

    from benchmarks import gpu_sweep

    split = tmp_path / "split.txt"
    split.write_text("\n".join(f"f{i}.jpg" for i in range(8)))
    out = tmp_path / "out"
    assert gpu_sweep.main(["--data-root", str(mt), "--split-file", str(split), "--grid", "smoke", "--device", "cpu",
                           "--executor", "local", "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert [(r["method"], r["fit"]) for r in records] == [("dskd", "stretch"), ("se_only", "pad")]
    assert all(len(r["default"]) == 3 and "nonorm" in r["analysis"] for r in records)
    assert "only_se" in records[0]["analysis"] and "only_se" not in records[1]["analysis"]


def test_accuracy_table_takes_the_median_time_and_compares_dskd_with_the_better_single_student():
    from benchmarks.accuracy import accuracy_table, markdown_report

    rows = []
    for dataset, masks in (("mt_defects", True), ("mvtec_ad", False)):
        for method, image, pixel in (("dskd", 0.96, 0.80), ("se_only", 0.94, 0.78), ("sd_only", 0.98, 0.75)):
            for seed, minutes in enumerate((7.0, 30.0, 8.0)):  # one run slowed by another job
                rows.append({"dataset": dataset, "category": dataset, "method": method, "seed": seed,
                             "image_auroc": image, "pixel_auroc": pixel if masks else None,
                             "aupro": pixel - 0.2 if masks else None, "per_defect_image_auroc": {"crack": image},
                             "train_minutes": minutes})
    table = accuracy_table(pd.DataFrame(rows))
    assert (table["train_minutes_per_run"] == 8.0).all()
    assert table.loc[table.dataset == "mvtec_ad", "pixel_auroc_mean"].isna().all()
    text = markdown_report(table, {"mt_defects": "MT", "mvtec_ad": "bottle"}, 1.0)
    assert "- image_auroc: dskd 96.00, sd_only 98.00: dskd is worse by 2.00." in text
    assert "- pixel_auroc: dskd 80.00, se_only 78.00: dskd is better by 2.00." in text
    assert "| mvtec_ad / mvtec_ad / dskd | 3 | 96.0 ± 0.0 | — | — | 8.0 |" in text


def test_the_benchmark_writes_its_runs_and_the_claims_ledger_read_from_them(tmp_path):
    """Runs without saved maps at hand: the per-run table, and a ledger whose dual-student rows read it."""
    from benchmarks.accuracy import write_claims

    rows = [{"dataset": "mpdd", "category": "metal_plate", "method": method, "seed": seed, "image_auroc": value,
             "pixel_auroc": value, "aupro": value, "false_alarm_rate": 0.1, "recall": 0.9, "f1_at_threshold": 0.9,
             "image_f1_max": 0.95, "train_minutes": 1.0, "run": str(tmp_path / "absent")}
            for seed in (0, 1, 2) for method, value in (("dskd", 0.95 + seed / 1000), ("se_only", 0.90),
                                                          ("sd_only", 0.92))]
    write_claims(tmp_path, "acc", pd.DataFrame(rows), {"mpdd": "MPDD at quick"})
    runs = pd.read_csv(tmp_path / "acc_runs.csv")
    assert len(runs) == 9 and "run" not in runs  # no machine's folders in a committed table
    ledger = pd.read_csv(tmp_path / "acc_claims.csv").set_index(["claim", "metric"])
    assert ledger.loc[("dual_vs_single", "aupro"), "verdict"] == "holds"
    assert ledger.loc[("dual_vs_single", "aupro"), "against"] == "sd_only"
    assert ledger.loc[("pyramid", "aupro"), "verdict"] == "no evidence"  # no saved maps to re-fuse
    assert "MPDD at quick" in (tmp_path / "acc_claims.md").read_text()


def test_ceiling_counts_the_flops_torch_counts_and_charges_them_at_the_chain_rate(monkeypatch):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks import ceiling

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 7, stride=2, padding=3), torch.nn.Conv2d(8, 16, 3, groups=2),
                              torch.nn.ConvTranspose2d(16, 8, 2, stride=2), torch.nn.Conv2d(8, 8, 1, stride=2))
    groups = ceiling.conv_gflops(net, 32)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.rand(1, 3, 32, 32))
    assert sum(groups.values()) == pytest.approx(counter.get_total_flops() / 1e9)
    assert set(groups) == {(8, 16), (16, 14), (8, 28), (8, 14)}
    assert ceiling.chain_rate(8, 8, repeats=1) > 0  # OpenVINO really runs the chain
    monkeypatch.setattr(ceiling, "chain_rate", lambda channels, side: 100.0 * channels)
    ips, table = ceiling.ceiling(net, 32)
    assert ips == pytest.approx(1 / sum(g / (100.0 * c) for (c, _), g in groups.items()))
    assert len(table) == 4


def test_fusion_choice_scores_each_student_of_the_dual_student_alone(monkeypatch):
    import numpy as np

    from benchmarks import fusion_choice
    from dskd import suite
    from dskd.run.metrics import all_metrics

    saved = tiny_saved_maps(n=8)
    saved.per_scale["sd"] = [np.ascontiguousarray(m[::-1]) for m in saved.per_scale["sd"]]  # a student of its own
    monkeypatch.setattr(suite, "load_maps", lambda run: saved)
    rows = fusion_choice.rescore("run", fusion_choice.GRIDS["students"])
    assert [r["students"] for r in rows] == ["se + sd", "se", "sd"]
    for row, students in zip(rows, (None, ["se"], ["sd"]), strict=True):
        maps, scores = suite.fuse_saved(saved, students=students)
        expected = all_metrics(saved.labels, scores, saved.masks, maps)
        assert row["image_auroc"] == pytest.approx(expected["image_auroc"])
        assert row["aupro"] == pytest.approx(expected["aupro"])
    assert rows[1]["image_auroc"] != rows[2]["image_auroc"] or rows[1]["aupro"] != rows[2]["aupro"]


def test_fusion_choice_scales_grid_fuses_each_subset_of_the_pyramid(monkeypatch):
    from benchmarks import fusion_choice
    from dskd import suite
    from dskd.run.metrics import all_metrics

    saved = tiny_saved_maps(n=8)
    monkeypatch.setattr(suite, "load_maps", lambda run: saved)
    grid = fusion_choice.GRIDS["scales"]
    assert grid["scales"][0] == (0, 1, 2)  # the first combination is the default: every level
    rows = fusion_choice.rescore("run", grid)
    assert [r["scales"] for r in rows] == ["0 + 1 + 2", "1 + 2", "0 + 1", "0 + 2", "0", "1", "2"]
    for row, subset in zip(rows, grid["scales"], strict=True):
        maps, scores = suite.fuse_saved(saved, scales=subset)
        expected = all_metrics(saved.labels, scores, saved.masks, maps)
        assert row["pixel_auroc"] == pytest.approx(expected["pixel_auroc"])
        assert row["aupro"] == pytest.approx(expected["aupro"])
    assert len({round(r["pixel_auroc"], 9) for r in rows}) > 1  # the subsets really differ


@pytest.mark.slow
def test_decisions_benchmark_tabulates_each_run_and_its_oracle_recall(tmp_path, data_root):
    """Under the test profile (synthetic stand-ins): one row per run, and for the one-fold run the ranking's recall at
    the measured false-alarm rate is never below the deployed threshold's (that threshold is one point of the same
    ROC; the cross-fitted run's p-value rule is not a threshold on its averaged score, so it may beat that ROC)."""
    from benchmarks import decisions

    assert decisions.main(["--data-root", str(data_root), "--profile", "test", "--datasets", "mvtec_ad",
                           "--seeds", "0", "--folds", "1", "2", "--score-shares", "0.05", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "benchmarks" / "decisions.csv")
    assert list(table["config"]) == ["dskd", "dskd, 2 folds", "dskd, top 5 %", "dskd, 2 folds, top 5 %"]
    _rescored_runs_share_weights_and_score_again(tmp_path / "test" / "runs")
    assert {"promised", "false alarms", "consistent", "shift p", "image AUROC"} <= set(table.columns)
    single_fold = table.iloc[0]
    deployed = float(single_fold["recall"].split(": ")[1].split(" ")[0])
    assert float(single_fold["oracle recall at that false-alarm rate"]) >= deployed
    single, crossed, *_ = table["calibration images"]
    assert crossed > single  # every good training image calibrates the cross-fitted run
    text = (tmp_path / "benchmarks" / "decisions.md").read_text()
    assert "Clopper–Pearson" in text and "images/s, openvino" in text
    assert "ranking's recall at one false alarm" in text and "three draws of the good images" in text
    low, high = (float(v) for v in single_fold["recall, good images drawn again"].split(" to "))
    assert 0 <= low <= high <= 100


def _rescored_runs_share_weights_and_score_again(runs_root):
    """A re-scored copy links its original's weights; scoring the folds again by the original's own score gives back
    the out-of-fold scores training recorded, and by the share other ones."""
    from dskd.run.folder import load_run, open_run
    from dskd.run.set_decision import score_folds_again

    crossed = sorted(p for p in runs_root.iterdir() if p.is_dir() and "-k2-" in p.name)
    assert len(crossed) == 2
    runs = {open_run(p).config.model.score_share: p for p in crossed}
    original, share = runs[0.0], runs[0.05]
    assert (original / "checkpoint.pt").stat().st_ino == (share / "checkpoint.pt").stat().st_ino
    recorded = json.loads((original / "decision.json").read_text())["out_of_fold_scores"]
    again = score_folds_again(load_run(original, "cpu")).out_of_fold_scores
    shared = json.loads((share / "decision.json").read_text())["out_of_fold_scores"]
    for fold, by_max, by_share in zip(recorded, again, shared, strict=True):
        assert by_max == pytest.approx(fold, rel=1e-5) and by_share != pytest.approx(fold, rel=1e-3)


def _decided_by_draws(labels, scores, decision, members=None):
    saved = replace(tiny_saved_maps(), labels=np.asarray(labels), scores=np.asarray(scores, np.float32),
                    set_scores=members)
    return recall_spread.recall_over_draws(saved, decision, draws=300)


def test_recall_over_draws_moves_only_where_the_draw_moves_the_threshold():
    """A decision set again on draws of its good images: defects far above every calibration score are found in every
    draw; defects among the calibration tail are found in some draws and not others; a fold whose scores are all equal
    gives the same decision in every draw, since each fold is drawn from itself."""
    from dskd.decision import Decision

    good = np.linspace(0.0, 1.0, 200)
    labels = [0] * 5 + [1] * 10
    decision = Decision.on_good_images(scores=good, target=0.01, source="test", announce=False)
    far = _decided_by_draws(labels, [0.5] * 5 + [5.0] * 10, decision)
    assert (far == 1).all()
    near = _decided_by_draws(labels, [0.5] * 5 + list(np.linspace(0.95, 1.0, 10)), decision)
    assert near.min() < near.max()
    assert recall_spread.expected_range(near) > 0 and recall_spread.expected_range(far) == 0
    folds = Decision.cross_conformal(out_of_fold_scores=[[0.2] * 100, [0.3] * 100], target=0.01,
                                     source="test")
    members = np.array([[0.1, 0.1]] * 5 + [[0.25, 0.25]] * 5 + [[0.25, 0.35]] * 5)
    steady = _decided_by_draws(labels, np.zeros(15), folds, members)
    assert (steady == 0.5).all()  # the five above both folds' scores; the five above fold 0's only stay below


def test_expected_range_of_three_draws_of_two_values():
    """Three picks from two equally likely values differ unless all three agree: 1 - 2 / 8."""
    assert recall_spread.expected_range(np.array([0.0, 1.0])) == pytest.approx(0.75, abs=0.02)


@pytest.mark.slow
def test_stopping_trajectories_score_every_epoch_and_the_rules_replay_them(data_root, tmp_path, monkeypatch):
    """A trajectory scores a finished copy after every epoch without changing the run (its weights are those of a
    plain run of the same settings), resumes without scoring an epoch twice, and the rules replay on it."""
    import torch

    from benchmarks import stopping, stopping_rules
    from dskd.run.profiles import profile_config
    from dskd.run.training import fit

    monkeypatch.setattr(stopping, "RUNS", tmp_path / "runs")
    cfg = profile_config("test", data_root=str(data_root), epochs=3, val_fraction=0.25)
    out = tmp_path / "stopping" / "stripes-efficientnet_lite0-dskd-s0.csv"
    stopping.trajectory(cfg, out, torch.device("cpu"))
    rows = pd.read_csv(out)
    assert rows["epoch"].tolist() == [1, 2, 3]
    assert rows[["held_out_total", "image_auroc", "pixel_auroc", "aupro"]].notna().all().all()
    assert rows["held_out_total"].nunique() == 3 and (rows["aupro"] > 0).all()
    plain = fit(cfg, tmp_path / "plain", quiet=True)
    watched = torch.load(next((tmp_path / "runs").iterdir()) / "checkpoint.pt", weights_only=False)["model"]
    for k, v in torch.load(plain.checkpoint, weights_only=False)["model"].items():
        assert torch.equal(v, watched[k]), k
    stopping.trajectory(cfg, out, torch.device("cpu"))  # finished: nothing scored again
    assert len(pd.read_csv(out)) == 3
    text = stopping_rules.write_rules(out.parent).read_text()
    assert "patience 2, 0 %" in text and "best epoch (test-fitted)" in text and "Chosen by" in text
    assert stopping_rules.stop_epoch([1.0, 0.9, 0.95, 0.96], 2, 0.0, 10) == 4
    assert stopping_rules.stop_epoch([1.0, 0.9, 0.8], 2, 0.0, 10) is None  # the trajectory ends first
