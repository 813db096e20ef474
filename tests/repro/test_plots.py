"""Every chart function on real runs of the `test` profile: the files are written, and the axes carry the curves,
bars and labels the reader needs (not just that a call returned)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from dskd import suite
from dskd.run.metrics import image_auroc, roc_curve

pytestmark = pytest.mark.slow
METHODS = ("dskd", "se_only")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("plots")
    exp = suite.experiment(dataset="mvtec_ad", profile="test", seeds=(0, 1), out_dir=out)
    return exp, suite.run_grid(exp, METHODS), out


def _written(out, name):
    for ext in ("png", "pdf"):
        f = out / "figures" / f"{name}.{ext}"
        assert f.is_file() and f.stat().st_size > 1000, f


def _labels(ax):
    return [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_roc_curve_is_exact():
    labels, scores = np.array([0, 0, 1, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.9])
    fpr, tpr = roc_curve(labels, scores)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(image_auroc(labels, scores))


def test_curves_and_bars(grid):
    exp, runs, out = grid
    fig = suite.curves_figure(runs, exp)
    suite.save_figure(fig, "curves", out)
    _written(out, "curves")
    roc, pro = fig.axes[:2]
    assert [label.split(" (")[0] for label in _labels(roc)] == list(METHODS)
    assert [label.split(" (")[0] for label in _labels(pro)] == list(METHODS)
    assert pro.get_xlim() == (0, 0.3) and "PRO" in pro.get_title()
    for line in roc.get_lines()[:2]:  # mean ROC curves run from (0, 0) to (1, 1) and never fall
        y = line.get_ydata()
        assert y[0] == 0 and y[-1] == pytest.approx(1) and np.all(np.diff(y) >= -1e-9)
    assert "64 px" in fig._suptitle.get_text() and "seeds 0, 1" in fig._suptitle.get_text()

    fig = suite.bars_figure(runs, exp)
    suite.save_figure(fig, "bars", out)
    _written(out, "bars")
    assert len(fig.axes) == 3  # image AUROC, pixel AUROC, AUPRO
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == list(METHODS)
        assert len(ax.patches) >= len(METHODS) and len(ax.get_lines()) >= len(METHODS)  # bars and error bars


def test_ablation_training_and_cost_charts(grid):
    exp, runs, out = grid
    fig = suite.method_bars(runs, exp)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == list(METHODS)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["image AUROC (%)", "pixel AUROC (%)",
                                                                    "AUPRO (%)"]
    fig = suite.training_figure(runs, exp)
    suite.save_figure(fig, "training", out)
    _written(out, "training")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert {"dskd", "se_only", "Se", "Sd"} <= set(legend)
    assert fig.axes[0].get_xlabel() == "epoch"

    table = suite.multiscale_ablation(runs[runs["method"] == "dskd"], exp)
    fig = suite.multiscale_bars(table, exp)
    assert len(fig.axes) == 3 and len(fig.axes[0].patches) >= len(table)

    cost = suite.complexity_table(["efficientnet_lite0"], list(METHODS), image_size=64, repeats=1)
    fig = suite.cost_figure(cost, runs.assign(backbone="efficientnet_lite0"), exp)
    suite.save_figure(fig, "cost", out)
    _written(out, "cost")
    assert len(fig.axes) >= 6 and fig.axes[0].get_xlabel() == "GFLOPs per image"
    points = fig.axes[0].collections[0].get_offsets()
    assert len(points) == len(METHODS)
    assert sorted(points[:, 0]) == sorted(cost["gflops"])


def test_qualitative_rows_follow_the_stated_rule(grid):
    exp, runs, out = grid
    saved = suite.load_maps(runs.iloc[0]["run"])
    picks = suite.pick_samples(saved, 10)
    good = np.flatnonzero(saved.labels == 0)
    assert picks[-1] == (int(good[np.argmax(saved.scores[good])]), "top-scoring good")
    for i, why in picks[:-1]:
        kind = why.removeprefix("median ")
        same = [j for j in range(len(saved.labels)) if saved.defect_types[j] == kind and saved.labels[j] == 1]
        assert sorted(saved.scores[same])[(len(same) - 1) // 2] == saved.scores[i]
    fig = suite.qualitative_figure(runs, n_samples=10, title="test")
    assert "median-scoring" in fig._supxlabel.get_text()


def test_charts_of_nothing_say_so():
    empty = pd.DataFrame()
    for fn in (suite.curves_figure, suite.bars_figure, suite.method_bars, suite.training_figure):
        assert fn(empty).axes[0].texts[0].get_text() == "no runs"
