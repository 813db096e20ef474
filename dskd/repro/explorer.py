"""An interactive explorer over saved anomaly maps (`maps.npz`), with no network and no retraining.

`MapExplorer` keeps its state in plain attributes and exposes one method per control, so tests (and
scripts) drive it exactly as the widgets do; `widget()` wires those methods to ipywidgets.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..decision.outline import outline
from ..model.config import N_SCALES
from ..run import archive
from ..run.archive import SavedMaps

VIEWS_FIXED = ("fused",)


class MapExplorer:
    def __init__(self, runs: Mapping[str, str | Path]) -> None:
        """`runs`: a label (e.g. 'synthetic / grid / dskd seed 0') -> run directory with maps.npz."""
        if not runs:
            raise ValueError("MapExplorer needs at least one run with saved maps")
        self.runs = {k: Path(v) for k, v in runs.items()}
        self._cache: dict[str, SavedMaps] = {}
        self.run = next(iter(self.runs))
        self.index = 0
        self.view = "fused"
        self.cmap = "jet"
        self.opacity = 0.5
        self.threshold = self.default_threshold()
        self._figure = None
        self._output = None

    @classmethod
    def from_table(cls, runs) -> MapExplorer:
        """From `suite.run_grid`'s table: one entry per category x method x seed."""
        return cls({f"{r.category} / {r.method} / seed {r.seed}": r.run for r in runs.itertuples()})

    # --- state -------------------------------------------------------------------------------------------
    @property
    def saved(self) -> SavedMaps:
        if self.run not in self._cache:
            self._cache[self.run] = archive.load(self.runs[self.run])
        return self._cache[self.run]

    @property
    def n_images(self) -> int:
        return len(self.saved.maps)

    @property
    def views(self) -> list[str]:
        students = self.saved.students
        return [*VIEWS_FIXED, *(f"student {s}" for s in students),
                *(f"scale {j + 1} of {s}" for s in students for j in range(N_SCALES))]

    def current_map(self) -> np.ndarray:
        s = self.saved
        if self.view == "fused":
            return s.maps[self.index].astype(np.float32)
        kind, *rest = self.view.split()
        if kind == "student":
            return s.per_student[rest[0]][self.index].astype(np.float32)
        j, name = int(rest[0]) - 1, rest[2]
        native = s.per_scale[name][j][self.index].astype(np.float32)
        reps = s.maps.shape[-1] // native.shape[-1]
        return np.kron(native, np.ones((reps, reps), np.float32))  # nearest upsampling: shows the true grid

    def default_threshold(self) -> float:
        """On the fused map, the run's deployed pixel threshold (the outline a line-side overlay draws; the image
        threshold for archives that lack it); on other views, the map's 99th percentile."""
        if self.view == "fused":
            s = self.saved
            return float(s.threshold if s.pixel_threshold is None else s.pixel_threshold)
        return float(np.percentile(self.current_map(), 99))

    def prediction(self) -> np.ndarray:
        """On the fused map, the outline a line-side overlay draws at this threshold (`dskd.decision.outline`:
        only on an image the decision flags); on other views, the pixels at or above it."""
        if self.view == "fused":
            return outline(self.current_map(), bool(self.saved.verdicts()[self.index]), self.threshold)
        return self.current_map() >= self.threshold

    def truth(self) -> np.ndarray | None:
        """The current image's ground-truth mask; None when the run's data has no masks."""
        masks = self.saved.masks
        return None if masks is None else masks[self.index].astype(bool)

    def iou(self) -> float | None:
        """Intersection over union of the thresholded map and the ground truth (1.0 when both are empty; None
        without masks)."""
        pred, truth = self.prediction(), self.truth()
        if truth is None:
            return None
        union = np.logical_or(pred, truth).sum()
        return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)

    def describe(self) -> str:
        s, iou = self.saved, self.iou()
        return (f"{self.run} | image {self.index + 1}/{self.n_images}: {Path(s.paths[self.index]).name} "
                f"({s.defect_types[self.index]}) | score {float(s.scores[self.index]):.4f} | "
                f"threshold {self.threshold:.4f} | IoU {'—' if iou is None else f'{iou:.3f}'}")

    # --- controls (what the widgets call) ----------------------------------------------------------------
    def select_run(self, label: str) -> None:
        if label not in self.runs:
            raise ValueError(f"unknown run '{label}'; choose one of {', '.join(self.runs)}")
        self.run = label
        self.index = min(self.index, self.n_images - 1)
        if self.view not in self.views:
            self.view = "fused"
        self.threshold = self.default_threshold()
        self.render()

    def set_image(self, index: int) -> None:
        if not 0 <= index < self.n_images:
            raise ValueError(f"image index {index} out of range 0..{self.n_images - 1}")
        self.index = int(index)
        self.render()

    def set_view(self, view: str) -> None:
        if view not in self.views:
            raise ValueError(f"unknown view '{view}'; choose one of {', '.join(self.views)}")
        self.view = view
        self.threshold = self.default_threshold()
        self.render()

    def set_threshold(self, value: float) -> None:
        self.threshold = float(value)
        self.render()

    def set_cmap(self, name: str) -> None:
        self.cmap = name
        self.render()

    def set_opacity(self, value: float) -> None:
        self.opacity = float(np.clip(value, 0.0, 1.0))
        self.render()

    # --- drawing -----------------------------------------------------------------------------------------
    def figure(self):
        import matplotlib.pyplot as plt

        s = self.saved
        amap = self.current_map()
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
        axes[0].imshow(s.images[self.index])
        im = axes[0].imshow(amap, cmap=self.cmap, alpha=self.opacity)
        axes[0].set_title(f"{self.view} map over image")
        fig.colorbar(im, ax=axes[0], fraction=0.046)
        truth, pred, iou = self.truth(), self.prediction(), self.iou()
        known = np.zeros_like(pred) if truth is None else truth
        axes[1].imshow(known, cmap="gray", vmin=0, vmax=1)
        axes[1].set_title("ground truth" if truth is not None else "no mask in this data")
        overlap = np.zeros((*pred.shape, 3))
        overlap[pred & known] = (0.1, 0.8, 0.1)  # green: hit
        overlap[pred & ~known] = (0.9, 0.2, 0.1)  # red: false alarm (every detection, without masks)
        overlap[~pred & known] = (0.2, 0.3, 0.9)  # blue: missed
        axes[2].imshow(overlap)
        axes[2].set_title(f"prediction >= {self.threshold:.3g}" + ("" if iou is None else f": IoU {iou:.3f}"))
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(self.describe(), fontsize=9)
        fig.tight_layout()
        return fig

    def render(self) -> None:
        """Replace the output area's content by setting its `outputs` from the kernel, never by capturing with
        `with output:`. A capture makes a headless client (nbclient, hence papermill) answer every captured output
        with a comm message on the shell channel it is reading the cell's reply from; docs/findings.md section 21
        traces the explorer's hang under papermill to that. Setting the trait sends nothing back."""
        if self._output is None:
            return
        import matplotlib.pyplot as plt

        fig = self.figure()
        try:
            self._output.outputs = (png_output(fig),)
        finally:
            plt.close(fig)

    def widget(self):
        import ipywidgets as w

        self._output = w.Output()
        run = w.Dropdown(options=list(self.runs), value=self.run, description="run")
        image = w.IntSlider(value=self.index, min=0, max=self.n_images - 1, description="image")
        view = w.Dropdown(options=self.views, value=self.view, description="view")
        maps = self.saved.maps
        threshold = w.FloatSlider(value=self.threshold, min=float(maps.min()), max=float(maps.max()),
                                  step=float(maps.max() - maps.min()) / 200 or 0.01, description="threshold",
                                  readout_format=".3g")
        cmap = w.Dropdown(options=["jet", "viridis", "magma", "inferno", "gray"], value=self.cmap,
                          description="colours")
        opacity = w.FloatSlider(value=self.opacity, min=0, max=1, step=0.05, description="opacity")

        def sync_threshold():
            amap = self.current_map()
            threshold.min, threshold.max = float(amap.min()), max(float(amap.max()), self.threshold)
            threshold.value = self.threshold

        def on_run(change):
            self.select_run(change["new"])
            image.max, view.options = self.n_images - 1, self.views
            sync_threshold()

        def on_view(change):
            self.set_view(change["new"])
            sync_threshold()

        run.observe(on_run, names="value")
        image.observe(lambda c: self.set_image(c["new"]), names="value")
        view.observe(on_view, names="value")
        threshold.observe(lambda c: self.set_threshold(c["new"]), names="value")
        cmap.observe(lambda c: self.set_cmap(c["new"]), names="value")
        opacity.observe(lambda c: self.set_opacity(c["new"]), names="value")
        self.render()
        return w.VBox([w.HBox([run, view]), w.HBox([image, threshold]), w.HBox([cmap, opacity]), self._output])


def png_output(fig) -> dict:
    """A figure as one notebook `display_data` output: a PNG, and the text a front end without images shows."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": repr(fig)}}
