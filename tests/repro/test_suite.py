from pathlib import Path

import pandas as pd
import pytest

from dskd import DskdError, suite


def test_quick_profile_skips_an_absent_benchmark_and_paper_refuses(tmp_path):
    exp = suite.experiment(dataset="mvtec_ad", profile="quick", data_root=str(tmp_path), out_dir=tmp_path)
    assert exp.skipped and "dataset not found at" in exp.skipped and not exp.categories
    runs = suite.run_grid(exp, ["dskd"])
    assert runs.empty
    for table in (suite.benchmark_table(exp, runs), suite.method_table(runs, exp),
                  suite.multiscale_ablation(runs, exp), suite.per_defect_table(runs, exp)):
        assert table["note"].iloc[0].startswith("skipped: dataset not found at")
    with pytest.raises(DskdError, match="download"):
        suite.experiment(dataset="mvtec_ad", profile="paper", data_root=str(tmp_path))


def test_mt_defects_uses_differnets_list_when_it_lies_beside_the_data(mt):
    exp = suite.experiment(dataset="mt_defects", profile="quick", data_root=str(mt), out_dir=mt)
    assert "split_file" not in exp.overrides  # no list beside the data: the documented seeded split
    split = mt / "mt_defects" / "splits" / "differnet_train_free.txt"
    split.parent.mkdir()
    split.write_text("f0.jpg\nf1.jpg\n")
    exp = suite.experiment(dataset="mt_defects", profile="quick", data_root=str(mt), out_dir=mt)
    cfg = exp.config("mt_defects", 0)
    assert cfg.split_file == str(split.resolve())
    from dskd.data import load_dataset
    train = load_dataset("mt_defects", cfg.data_root, "mt_defects", "train", 32, split_file=cfg.split_file)
    assert sorted(Path(s.path).name for s in train.samples) == ["f0.jpg", "f1.jpg"]
    other = suite.experiment(dataset="mt_defects", profile="quick", data_root=str(mt), split_file="mine.txt")
    assert other.config("mt_defects", 0).split_file == "mine.txt"  # an explicit list wins


def test_experiment_rejects_an_unknown_executor():
    with pytest.raises(DskdError, match="executor 'slurm' is not one of local, ray"):
        suite.experiment(dataset="mt_defects", profile="demo", executor="slurm")


def test_demo_profile_labels_the_stand_in():
    exp = suite.experiment(dataset="mt_defects", profile="demo")
    assert exp.stand_in and exp.data_name == "synthetic" and exp.categories == ["stripes", "grid", "noise"]
    assert "standing in for MT Defects" in exp.describe() and "3 epochs" in exp.describe()


def test_tables_average_categories_per_seed_then_report_std_over_seeds():
    rows = []
    for seed, (a, b) in enumerate(((0.90, 0.70), (0.80, 0.60))):
        for cat, v in (("carpet", a), ("bottle", b)):
            rows.append({"category": cat, "method": "dskd", "seed": seed, "image_auroc": v, "pixel_auroc": v,
                         "aupro": v, "train_minutes": 1.0, "per_defect_image_auroc": {}})
    runs = pd.DataFrame(rows)
    exp = suite.Experiment("mvtec_ad", "quick", "-", ["carpet", "bottle"], [0, 1], Path("."))
    table = suite.benchmark_table(exp, runs)
    assert table.loc["carpet", "image_auroc / dskd"] == "85.0 ± 5.0"
    assert table.loc["texture mean", "image_auroc / dskd"] == "85.0 ± 5.0"  # carpet is a texture
    assert table.loc["object mean", "image_auroc / dskd"] == "65.0 ± 5.0"
    assert table.loc["mean", "image_auroc / dskd"] == "75.0 ± 5.0"  # per seed: 0.80 and 0.70
    assert suite.method_table(runs, exp).loc["dskd", "aupro"] == "75.0 ± 5.0"
    md = suite.markdown(table)
    assert md.splitlines()[0].startswith("|  | image_auroc / dskd") and "| texture mean | 85.0 ± 5.0" in md


def test_a_planning_pass_writes_no_tables_or_figures(tmp_path, monkeypatch):
    """`./run_all.sh --executor ray` first runs the notebooks only to record their runs: the empty tables of that
    pass must not overwrite the results (the notebooks' real run writes them afterwards)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.DataFrame({"image_auroc": [99.0]}, index=["dskd"])
    fig = plt.figure()
    monkeypatch.setenv("DSKD_PLAN", str(tmp_path / "plan.jsonl"))
    suite.save_table(table, "planned", out_dir=tmp_path)
    suite.save_figure(fig, "planned", out_dir=tmp_path)
    assert not (tmp_path / "tables").exists() and not (tmp_path / "figures").exists()
    monkeypatch.delenv("DSKD_PLAN")
    suite.save_table(table, "planned", out_dir=tmp_path)
    suite.save_figure(fig, "planned", out_dir=tmp_path)
    assert {p.name for p in tmp_path.rglob("planned.*")} == {"planned.csv", "planned.md", "planned.png", "planned.pdf"}
    plt.close(fig)


def test_markdown_shows_a_missing_number_as_a_dash():
    """A spread over one seed, or a pixel metric without masks, reads "—" in every Markdown table, never "nan"."""
    table = pd.DataFrame({"mean": [97.6, 99.3], "spread": [float("nan"), 0.2]}, index=["one seed", "three seeds"])
    lines = suite.markdown(table).splitlines()
    assert lines[2] == "| one seed | 97.6 | — |" and lines[3] == "| three seeds | 99.3 | 0.2 |"
