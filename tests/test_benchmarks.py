"""The benchmark harnesses run end to end at toy sizes (their numbers are meaningless here, their plumbing is not)."""

import pandas as pd

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
