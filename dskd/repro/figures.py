"""Figures: qualitative rows of test samples with each student's map, dataset samples, and saving as PNG + PDF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_write
from ..run import archive
from ..run.archive import SavedMaps
from .experiment_config import planning_pass

QUALITATIVE_COLUMNS = ("image", "ground truth", "teacher − Se", "teacher − Sd", "fused", "overlay")


IMAGE_DPI = 72  # grids of 128-256 px images are drawn near their own resolution: sharper would only be bigger


def save_figure(fig, name: str, out_dir: str | Path = "results") -> None:
    """`figures/<name>.png` and `.pdf`: charts at 150 dpi, image grids at their own (IMAGE_DPI), which keeps the
    committed results browsable; the notebook shows the figure itself. Nothing is written during a planning pass."""
    if planning_pass():
        return
    dpi = fig.dpi if any(ax.images for ax in fig.axes) else 150
    for ext in ("png", "pdf"):
        target = Path(out_dir) / "figures" / f"{name}.{ext}"
        atomic_write(target, lambda tmp, e=ext: fig.savefig(tmp, format=e, dpi=dpi, bbox_inches="tight"))


PICK_RULE = ("rows: the median-scoring defective image of each defect type, then the highest-scoring good image "
             "(the worst false-positive candidate); chosen by rule, not by hand")


def pick_samples(saved: SavedMaps, n: int) -> list[tuple[int, str]]:
    """(index, why) of up to n samples: the defective image with the median score of each defect type (types
    in name order), then the good image with the highest score."""
    types = np.asarray(saved.defect_types)
    picks = []
    for t in sorted(set(types[saved.labels == 1])):
        members = np.flatnonzero((types == t) & (saved.labels == 1))
        ranked = members[np.argsort(saved.scores[members], kind="stable")]
        picks.append((int(ranked[(len(ranked) - 1) // 2]), f"median {t}"))
    good = np.flatnonzero(saved.labels == 0)
    worst = [(int(good[np.argmax(saved.scores[good])]), "top-scoring good")] if good.size else []
    return picks[: max(0, n - len(worst))] + worst


def _blank(ax, text: str | None = None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if text:
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _qualitative_row(fig, axes, saved: SavedMaps, i: int, why: str) -> None:
    """One sample: the students' maps share one colour scale so that they can be compared directly."""
    img, fused = saved.images[i], saved.maps[i].astype(np.float32)
    student = {n: saved.per_student[n][i].astype(np.float32) for n in saved.students}
    vmax = max(float(v.max()) for v in student.values())
    for ax in axes:
        _blank(ax)
    axes[0].imshow(img)
    verdict = "flagged" if saved.verdicts()[i] else "passed"
    axes[0].set_ylabel(f"{why}\n{Path(saved.paths[i]).name}\nscore {saved.scores[i]:.2f} ({verdict})", fontsize=7)
    if saved.masks is None:
        _blank(axes[1], "no mask")
    else:
        axes[1].imshow(saved.masks[i], cmap="gray")
    for ax, name in ((axes[2], "se"), (axes[3], "sd")):
        if name not in student:
            _blank(ax, "n/a")
            continue
        shown = ax.imshow(student[name], cmap="jet", vmin=0, vmax=vmax)
    fig.colorbar(shown, ax=list(axes[2:4]), fraction=0.046, pad=0.02, label="discrepancy (row scale)")
    axes[4].imshow(fused, cmap="jet")
    axes[5].imshow(img)
    axes[5].imshow(fused, cmap="jet", alpha=0.45, vmin=float(fused.min()), vmax=float(fused.max()))


def qualitative_figure(runs: pd.DataFrame, n_samples: int = 4, title: str = ""):
    """Rows of test samples: image, ground truth, teacher-Se map, teacher-Sd map, fused map, overlay.

    The samples are fixed by a rule stated under the figure (`PICK_RULE`), never picked by hand; the dskd run
    of the table is shown when there is one."""
    import matplotlib.pyplot as plt

    if runs.empty:  # skipped data, or the planning pass of ./run_all.sh
        fig, ax = plt.subplots(figsize=(4, 1))
        _blank(ax, "no runs")
        return fig
    dskd_rows = runs[runs["method"] == "dskd"]
    saved = archive.load((dskd_rows if len(dskd_rows) else runs).iloc[0]["run"])
    picks = pick_samples(saved, n_samples)
    cols = QUALITATIVE_COLUMNS
    fig, axes = plt.subplots(len(picks), len(cols), figsize=(2.3 * len(cols), 2.2 * len(picks)), squeeze=False,
                             layout="constrained", dpi=IMAGE_DPI)
    for row, (i, why) in enumerate(picks):
        _qualitative_row(fig, axes[row], saved, i, why)
    for ax, name in zip(axes[0], cols, strict=True):
        ax.set_title(name, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    threshold = "; flagged: by the run's deployed decision" if saved.flagged is not None else "" if not \
        np.isfinite(saved.threshold) else f"; flagged: score >= the run's threshold {saved.threshold:.2f}"
    fig.supxlabel(PICK_RULE + threshold, fontsize=8)
    return fig


def show_samples(dataset, n: int = 4):
    """The first n defective test images of a dataset above their ground-truth masks."""
    import matplotlib.pyplot as plt

    picks = [i for i, s in enumerate(dataset.samples) if s.label == 1][:n]
    fig, axes = plt.subplots(2, len(picks), figsize=(2.4 * len(picks), 5), squeeze=False, dpi=IMAGE_DPI)
    for col, i in enumerate(picks):
        item = dataset[i]
        axes[0, col].imshow(item["image"].permute(1, 2, 0).numpy())
        axes[0, col].set_title(item["defect_type"], fontsize=10)
        axes[1, col].imshow(item["mask"][0].numpy(), cmap="gray", vmin=0, vmax=1)
        for ax in axes[:, col]:
            _blank(ax)
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("ground truth")
    fig.tight_layout()
    return fig
