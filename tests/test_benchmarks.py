"""The benchmark harnesses run end to end at toy sizes (their numbers are meaningless here, their plumbing is not)."""

import pandas as pd
import pytest

from benchmarks import speed


def test_speed_harness_writes_rows_ratios_and_before_after(tmp_path):
    rc = speed.main(["--image-size", "64", "--batch", "2", "--repeats", "1", "--steps", "1", "--skip-memory",
                     "--models", "dskd", speed.BEFORE, "se_only", "--out", str(tmp_path)])
    assert rc == 0
    table = pd.read_csv(tmp_path / "speed.csv", index_col="model")
    assert list(table.index) == ["dskd", speed.BEFORE, "se_only"]
    for col in ("train_img_s", "infer_img_s", "latency_ms", "trainable_params", "frozen_params", "gflops",
                "train_gflops"):
        assert (table[col] > 0).all(), col
    # The shipped inference path changes speed, not work: the same FLOPs and parameters as before.
    assert table.loc["dskd", "gflops"] == table.loc[speed.BEFORE, "gflops"]
    assert table.loc["dskd", "trainable_params"] == table.loc[speed.BEFORE, "trainable_params"]
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
