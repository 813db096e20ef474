"""The charts readers of this field look for, drawn from the runs a notebook already has: image ROC and PRO
curves, per-category bars with seed error bars, training curves, ablation bars and accuracy against cost.

One seaborn theme and one colour-blind-safe palette for every chart; a method keeps its colour in every figure;
titles name the data, teacher, image size, epochs and seeds (`Experiment.describe`).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from ..run import archive
from ..run.methods import METHODS
from ..run.metrics import pro_curve, roc_curve
from .experiment_config import Experiment
from .tables import METRICS

FPR_LIMIT = 0.3  # PRO curves are drawn, and AUPRO integrated, up to this false-positive rate
LABELS = {"image_auroc": "image AUROC (%)", "pixel_auroc": "pixel AUROC (%)", "aupro": "AUPRO (%)"}


def _theme():
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", palette="colorblind", font_scale=0.85)
    return plt, sns


def colors() -> dict[str, tuple[float, float, float]]:
    """One colour per registered method, the same in every figure."""
    import seaborn as sns

    return dict(zip(METHODS, sns.color_palette("colorblind", len(METHODS)), strict=False))


def _title(fig, what: str, exp: Experiment | None) -> None:
    text = what if exp is None else f"{what}: {exp.describe()}"
    fig.suptitle("\n".join(textwrap.wrap(text, 110)), fontsize=9)


def _nothing(text: str = "no runs"):
    plt, _ = _theme()
    fig, ax = plt.subplots(figsize=(4, 1))
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig


def _numeric(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.assign(**{m: 100 * pd.to_numeric(runs[m], errors="coerce") if m in runs else np.nan
                          for m in METRICS})


def curves_figure(runs: pd.DataFrame, exp: Experiment | None = None):
    """Image ROC and PRO (to FPR 0.3) per method, each the vertical mean over the method's runs (categories x
    seeds) on a common FPR grid; on the ROC, each run's deployed operating point (a dot) and the false-alarm bound
    its threshold promised (a dashed line), so a reader sees where the line will sit. Without masks the PRO panel
    says so."""
    if runs.empty:
        return _nothing()
    plt, _ = _theme()
    fig, (roc_ax, pro_ax) = plt.subplots(1, 2, figsize=(9, 4), layout="constrained")
    grid = np.linspace(0, 1, 201)
    has_masks = False
    for method, sub in runs.groupby("method", sort=False):
        tprs, pros = [], []
        for path in sub["run"]:
            saved = archive.load(path)
            fpr, tpr = roc_curve(saved.labels, saved.scores)
            tprs.append(np.interp(grid, fpr, tpr))
            if saved.masks is not None and saved.masks.any():
                curve = pro_curve(saved.masks, saved.maps.astype(np.float32), FPR_LIMIT, valid=saved.valid)
                pros.append(np.interp(grid * FPR_LIMIT, curve.fpr, curve.pro))
        score = _numeric(sub)["image_auroc"].mean()
        roc_ax.plot(np.r_[0, grid], np.r_[0, np.mean(tprs, axis=0)], color=colors().get(method),
                    label=f"{method} ({score:.1f})")
        _operating_points(roc_ax, sub, colors().get(method))
        if pros:
            has_masks = True
            au = _numeric(sub)["aupro"].mean()
            pro_ax.plot(grid * FPR_LIMIT, np.mean(pros, axis=0), color=colors().get(method),
                        label=f"{method} ({au:.1f})")
    _reference_lines(roc_ax, runs)
    roc_ax.set(xlabel="false-positive rate (images)", ylabel="true-positive rate", title="image ROC (AUROC %)")
    pro_ax.set(xlabel="false-positive rate (pixels)", ylabel="per-region overlap", xlim=(0, FPR_LIMIT), ylim=(0, 1),
               title=f"PRO up to FPR {FPR_LIMIT} (AUPRO %)")
    roc_ax.legend(loc="lower right")
    if has_masks:
        pro_ax.legend(loc="lower right")
    else:
        pro_ax.text(0.5, 0.5, "no pixel masks in this data", ha="center", va="center", transform=pro_ax.transAxes)
    _title(fig, "ROC and PRO curves", exp)
    return fig


def _reference_lines(ax, runs: pd.DataFrame) -> None:
    """Chance (dotted), and the false-alarm bound each run's threshold promised (95 % confidence; dashed)."""
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
    for bound in sorted(set(pd.to_numeric(runs.get("bound_false_alarm", pd.Series(dtype=float))).dropna())):
        ax.axvline(bound, color="0.35", linestyle="--", linewidth=0.8)
        ax.annotate(f"promised ≤ {100 * bound:.1f} %", (bound, 0.02), rotation=90, fontsize=7, color="0.35",
                    xytext=(2, 0), textcoords="offset points")


def _operating_points(ax, runs: pd.DataFrame, color) -> None:
    """Each run's deployed operating point: the test's false-alarm rate and recall at its threshold."""
    if "false_alarm_rate" not in runs:
        return
    fa, rec = pd.to_numeric(runs["false_alarm_rate"]), pd.to_numeric(runs["recall"])
    keep = fa.notna() & rec.notna()
    if keep.any():
        ax.scatter(fa[keep], rec[keep], color=color, edgecolor="black", linewidth=0.6, s=28, zorder=3,
                   marker="o")


def bars_figure(runs: pd.DataFrame, exp: Experiment | None = None, metrics=METRICS):
    """Per-category grouped bars (hue: method); the error bars are the standard deviation over seeds."""
    if runs.empty:
        return _nothing()
    plt, sns = _theme()
    data = _numeric(runs)
    shown = [m for m in metrics if data[m].notna().any()]
    n_cats = data["category"].nunique()
    fig, axes = plt.subplots(1, len(shown), figsize=(max(4.0, 1.1 * n_cats + 2) * len(shown), 3.6), squeeze=False,
                             layout="constrained")
    for ax, m in zip(axes[0], shown, strict=True):
        sns.barplot(data=data, x="category", y=m, hue="method", errorbar="sd", palette=colors(), ax=ax,
                    capsize=0.1, err_kws={"linewidth": 1})
        low = np.nanmin(data[m])
        ax.set(ylabel=LABELS[m], xlabel="", ylim=(max(0.0, low - 10), 100))
        ax.tick_params(axis="x", rotation=30 if n_cats > 4 else 0)
        ax.legend(fontsize=7, loc="lower left")
    _title(fig, "per category, error bars: std over seeds", exp)
    return fig


def method_bars(runs: pd.DataFrame, exp: Experiment | None = None, metrics=METRICS):
    """An ablation as bars: each method's mean over categories (per seed), error bars the std over seeds."""
    if runs.empty:
        return _nothing()
    plt, sns = _theme()
    data = _numeric(runs)
    per_seed = data.groupby(["method", "seed"], sort=False)[list(metrics)].mean().reset_index()
    long = per_seed.melt(id_vars=["method", "seed"], var_name="metric", value_name="percent").dropna()
    long["metric"] = long["metric"].map(LABELS)
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * long["metric"].nunique(), 3.6), layout="constrained")
    sns.barplot(data=long, x="metric", y="percent", hue="method", errorbar="sd", palette=colors(), ax=ax,
                capsize=0.1, err_kws={"linewidth": 1})
    ax.set(xlabel="", ylabel="percent", ylim=(max(0.0, long["percent"].min() - 10), 100))
    ax.legend(fontsize=7, loc="lower left")
    _title(fig, "ablation, error bars: std over seeds", exp)
    return fig


def multiscale_bars(table: pd.DataFrame, exp: Experiment | None = None):
    """The multi-scale ablation (`ablations.multiscale_ablation`'s table, percent) as bars per scale subset."""
    if "note" in table or table.empty:
        return _nothing()
    plt, sns = _theme()
    long = table.reset_index().melt(id_vars=["scales", "fusion"], var_name="metric", value_name="percent").dropna()
    metrics = list(dict.fromkeys(long["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False, layout="constrained")
    for ax, m in zip(axes[0], metrics, strict=True):
        sub = long[long["metric"] == m]
        sns.barplot(data=sub, x="scales", y="percent", hue="fusion", ax=ax)
        ax.set(xlabel="scales fused", ylabel=LABELS.get(m, m), ylim=(max(0.0, sub["percent"].min() - 10), 100))
        ax.legend(fontsize=7, loc="lower left", title="fusion")
    _title(fig, "multi-scale fusion, re-fused from saved maps (mean over runs)", exp)
    return fig


def training_figure(runs: pd.DataFrame, exp: Experiment | None = None):
    """Each student's distillation loss per epoch, mean over categories and seeds (no band: categories differ in
    scale far more than seeds do, so a spread over both would hide the curves)."""
    if runs.empty:
        return _nothing()
    plt, sns = _theme()
    frames = []
    for _, r in runs.iterrows():
        log = pd.read_csv(Path(r["run"]) / "train_log.csv")
        for student in [c.removeprefix("loss_") for c in log if c.startswith("loss_") and c != "loss_total"]:
            if log[f"loss_{student}"].notna().any():
                frames.append(pd.DataFrame({"epoch": log["epoch"], "loss": log[f"loss_{student}"],
                                            "method": r["method"], "student": student.capitalize()}))
    data = pd.concat(frames, ignore_index=True)
    fig, ax = plt.subplots(figsize=(6.5, 3.8), layout="constrained")
    sns.lineplot(data=data, x="epoch", y="loss", hue="method", style="student", errorbar=None, palette=colors(),
                 markers=True, markersize=5, ax=ax)
    ax.set(ylabel="distillation loss (training images)", yscale="log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    _title(fig, "training curves", exp)
    return fig


def cost_figure(cost: pd.DataFrame, runs: pd.DataFrame, exp: Experiment | None = None):
    """Accuracy against cost: image AUROC and AUPRO against GFLOPs, parameters and time per image, one point per
    trained teacher x method (`ablations.complexity_table` gives the cost; runs need a `backbone` column)."""
    if runs.empty:
        return _nothing()
    plt, sns = _theme()
    acc = _numeric(runs).groupby(["backbone", "method"])[list(METRICS)].mean()
    data = cost.rename_axis(["backbone", "method"]).join(acc, how="inner").reset_index()
    data["parameters (M)"] = data["trainable_M"] + data["frozen_M"]
    data["ms per image"] = 1000 / data["infer_img_s"]
    costs = ("gflops", "parameters (M)", "ms per image")
    shown = [m for m in ("image_auroc", "aupro") if data[m].notna().any()]
    fig, axes = plt.subplots(len(shown), len(costs), figsize=(11, 3.2 * len(shown)), squeeze=False,
                             layout="constrained")
    for row, m in enumerate(shown):
        for ax, c in zip(axes[row], costs, strict=True):
            sns.scatterplot(data=data, x=c, y=m, hue="method", style="backbone", palette=colors(), s=70, ax=ax,
                            legend=row == 0 and c == costs[-1])
            ax.set(xlabel="GFLOPs per image" if c == "gflops" else c, ylabel=LABELS[m])
    if axes[0, -1].get_legend():
        axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    _title(fig, "accuracy against cost (time: this machine's CPU, batch 4)", exp)
    return fig
