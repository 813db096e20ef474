"""What the notebooks call: experiments over categories x methods x seeds, tables, figures and references.

A notebook says which dataset and methods it wants; this module decides what that means under a profile
(`demo` swaps every benchmark for the synthetic textures and says so), trains only the runs it lacks,
and writes every table with the backbone, image size, epochs and seeds that produced it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import PROFILES, RunConfig, profile_config
from .data import OFFICIAL_CATEGORIES
from .data import categories as present_categories
from .data.datasets import MVTEC_AD_TEXTURES
from .engine import RunDir, evaluate, fit
from .errors import DskdError
from .files import atomic_write, write_text

log = logging.getLogger(__name__)

METRICS = ("image_auroc", "pixel_auroc", "aupro")
DATASET_NAMES = {"mvtec_ad": "MVTec AD", "mvtec3d": "MVTec 3D-AD (RGB)", "mt_defects": "MT Defects",
                 "synthetic": "synthetic textures"}
REFERENCE_DIR = Path(__file__).resolve().parents[1] / "results" / "reference"

# A method is a named set of model overrides; these are the rows of the paper's tables and ablations.
METHODS: dict[str, dict[str, Any]] = {
    "dskd": {"variant": "dskd"},
    "se_only": {"variant": "se_only"},
    "sd_only": {"variant": "sd_only"},
    "dskd_no_df": {"variant": "dskd_no_df"},
    "dskd_df_teacher": {"variant": "dskd", "df_source": "teacher"},
    "dskd_df_both": {"variant": "dskd", "df_source": "both"},
    "dskd_df_detach": {"variant": "dskd", "df_detach": True},
    "dskd_df_predicted": {"variant": "dskd", "df_input": "predicted"},
}


@dataclass
class Experiment:
    """One dataset under one profile: which categories, which settings, where results go."""

    dataset: str  # the benchmark the notebook is about
    profile: str
    data_root: str
    categories: list[str]
    seeds: list[int]
    out_dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    stand_in: bool = False  # True when the synthetic textures stand in for the benchmark (demo profile)
    skipped: str | None = None  # why nothing was run (quick profile, data absent)

    @property
    def data_name(self) -> str:
        return "synthetic" if self.stand_in else self.dataset

    @property
    def label(self) -> str:
        if self.stand_in:
            return f"synthetic textures standing in for {DATASET_NAMES[self.dataset]} ({self.profile} profile)"
        return DATASET_NAMES[self.dataset]

    def config(self, category: str, seed: int, **method: Any) -> RunConfig:
        return profile_config(self.profile, dataset=self.data_name, category=category, data_root=self.data_root,
                              seed=seed, **{**self.overrides, **method})

    def only(self, *categories: str) -> Experiment:
        return dataclasses.replace(self, categories=list(categories))

    def describe(self) -> str:
        cfg = self.config(self.categories[0] if self.categories else "-", self.seeds[0])
        return (f"{self.label}; backbone {cfg.model.backbone}, {cfg.image_size} px, {cfg.epochs} epochs, "
                f"batch {cfg.batch_size}, seeds {', '.join(map(str, self.seeds))}, profile '{self.profile}'")


def experiment(dataset: str, profile: str = "demo", data_root: str | None = None,
               categories: Sequence[str] | None = None, backbone: str | None = None, image_size: int | None = None,
               epochs: int | None = None, seeds: Sequence[int] = (0,), out_dir: str | Path = "results",
               **overrides: Any) -> Experiment:
    """Resolve a notebook's parameters. Under `demo` and `test` the synthetic textures stand in for the
    benchmark; under `quick` an absent benchmark is skipped (and said so); under `paper` it is an error."""
    out_dir = Path(out_dir)
    extra = {k: v for k, v in dict(backbone=backbone, image_size=image_size, epochs=epochs, **overrides).items()
             if v is not None}
    if profile not in PROFILES:
        raise DskdError(f"unknown profile '{profile}'; choose one of {', '.join(PROFILES)}")
    synthetic = PROFILES[profile].get("dataset") == "synthetic" or dataset == "synthetic"
    root = data_root or str(out_dir / "data")
    if synthetic:
        cats = list(categories or OFFICIAL_CATEGORIES["synthetic"])
        if profile == "test":
            cats = cats[:1]
        return Experiment(dataset, profile, root, cats, list(seeds), out_dir, extra, stand_in=dataset != "synthetic")
    try:
        found = present_categories(dataset, root)
    except DskdError:
        found = []
    wanted = list(categories or OFFICIAL_CATEGORIES[dataset])
    missing = [c for c in wanted if c not in found]
    if missing:
        where = f"{root} (looked for {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''})"
        if profile == "paper":
            raise DskdError(f"{DATASET_NAMES[dataset]} not found at {where}; download it with "
                            f"'python -m dskd.data download {dataset} --root {root}'")
        reason = f"dataset not found at {where}"
        log.warning("%s: %s", DATASET_NAMES[dataset], reason)
        if not set(wanted) & set(found):
            return Experiment(dataset, profile, root, [], list(seeds), out_dir, extra, skipped=reason)
        wanted = [c for c in wanted if c in found]
    return Experiment(dataset, profile, root, wanted, list(seeds), out_dir, extra)


def _evaluated(run: RunDir) -> dict[str, Any]:
    """Metrics of a run, evaluating it (and saving its maps) only when that was not done since training."""
    if run.metrics_file.is_file() and run.maps_file.is_file() and \
            run.metrics_file.stat().st_mtime >= run.checkpoint.stat().st_mtime:
        return run.metrics()
    return evaluate(run, save_maps=True)


def run_grid(exp: Experiment, methods: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("dskd",),
             quiet: bool = True) -> pd.DataFrame:
    """Train (if needed) and evaluate every category x method x seed; one row per run."""
    if not isinstance(methods, Mapping):
        methods = {m: METHODS[m] for m in methods}
    rows = []
    for category in exp.categories:
        for name, method in methods.items():
            for seed in exp.seeds:
                cfg = exp.config(category, seed, **method)
                t0 = time.perf_counter()
                run = fit(cfg, runs_root=exp.out_dir / "runs", quiet=quiet)
                metrics = _evaluated(run)
                info = run.info()
                rows.append({
                    "category": category, "method": name, "seed": seed,
                    **{k: v for k, v in metrics.items() if not isinstance(v, dict)},
                    "per_defect_image_auroc": metrics.get("per_defect_image_auroc", {}),
                    "train_minutes": info.get("train_minutes"), "run": str(run.path),
                    "wall_seconds": round(time.perf_counter() - t0, 1),
                })
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame, metrics: Sequence[str] = METRICS, by: Sequence[str] = ("category", "method"),
              ) -> pd.DataFrame:
    """Mean and standard deviation over seeds (std is 0 with a single seed)."""
    g = runs.groupby(list(by), sort=False)[list(metrics)]
    mean, std = g.mean(), g.std(ddof=0).fillna(0.0)
    out = pd.concat({"mean": mean, "std": std}, axis=1).swaplevel(0, 1, axis=1).sort_index(axis=1, level=0)
    out[("seeds", "n")] = g.size()
    return out


def _fmt(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.1f}" if n <= 1 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def benchmark_table(exp: Experiment, runs: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Per category (then texture / object / overall means for MVTec AD, overall mean elsewhere):
    one column per metric x method, values in percent, 'mean ± std' over seeds."""
    if runs.empty:
        return _skipped(exp)
    per_seed = runs.pivot_table(index=["category", "seed"], columns="method", values=list(metrics))
    groups: list[tuple[str, list[str]]] = [(c, [c]) for c in exp.categories]
    if exp.dataset == "mvtec_ad" and not exp.stand_in:
        tex = [c for c in exp.categories if c in MVTEC_AD_TEXTURES]
        obj = [c for c in exp.categories if c not in MVTEC_AD_TEXTURES]
        groups += [("texture mean", tex), ("object mean", obj)]
    if len(exp.categories) > 1:
        groups.append(("mean", list(exp.categories)))
    methods = list(dict.fromkeys(runs["method"]))
    table = {}
    for label, cats in groups:
        if not cats:
            continue
        # Means over categories are taken per seed first, so the std is over seeds, not over categories.
        sub = per_seed[per_seed.index.get_level_values("category").isin(cats)].groupby(level="seed").mean()
        table[label] = {f"{m} / {meth}": _fmt(sub[(m, meth)].mean(), sub[(m, meth)].std(ddof=0), len(sub))
                        for m in metrics for meth in methods if (m, meth) in sub}
    return pd.DataFrame.from_dict(table, orient="index")


def _skipped(exp: Experiment | None) -> pd.DataFrame:
    return pd.DataFrame({"note": [f"skipped: {exp.skipped if exp and exp.skipped else 'no runs'}"]})


def method_table(runs: pd.DataFrame, exp: Experiment | None = None, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """One row per method: the mean over categories (per seed), then 'mean ± std' over seeds, in percent."""
    if runs.empty:
        return _skipped(exp)
    per_seed = runs.groupby(["method", "seed"], sort=False)[list(metrics)].mean()
    rows = {}
    for method, sub in per_seed.groupby(level="method", sort=False):
        rows[method] = {m: _fmt(sub[m].mean(), sub[m].std(ddof=0), len(sub)) for m in metrics}
        rows[method]["train_minutes"] = round(float(runs[runs["method"] == method]["train_minutes"].mean()), 2)
    return pd.DataFrame.from_dict(rows, orient="index")


def per_defect_table(runs: pd.DataFrame, exp: Experiment | None = None) -> pd.DataFrame:
    """Image AUROC (percent) of each defect type against the good images, per method, mean over seeds."""
    if runs.empty:
        return _skipped(exp)
    rows = []
    for _, r in runs.iterrows():
        for defect, value in (r["per_defect_image_auroc"] or {}).items():
            rows.append({"method": r["method"], "defect_type": defect, "seed": r["seed"], "image_auroc": value})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows).groupby(["defect_type", "method"])["image_auroc"].mean().unstack("method")
    return (100 * df).round(1)


def save_table(table: pd.DataFrame, name: str, exp: Experiment | None = None, note: str = "",
               out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """`tables/<name>.csv` and `.md`; the Markdown says what produced the numbers."""
    out = Path(out_dir or (exp.out_dir if exp else "results")) / "tables"
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    atomic_write(csv_path, lambda tmp: table.to_csv(tmp))
    header = [f"# {name}", ""]
    if exp is not None:
        header.append(f"Measured by this suite on {exp.describe()}.")
    if note:
        header.append(note)
    write_text(md_path, "\n".join(header) + "\n\n" + markdown(table) + "\n")
    return csv_path, md_path


def markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (index included; column levels joined with ' / ')."""
    cols = [" / ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in table.columns]
    index_name = " / ".join(str(n) for n in table.index.names if n) or ""
    lines = ["| " + " | ".join([index_name, *cols]) + " |", "|" + "---|" * (len(cols) + 1)]
    for idx, row in table.iterrows():
        key = " / ".join(map(str, idx)) if isinstance(idx, tuple) else str(idx)
        lines.append("| " + " | ".join([key, *(str(v) for v in row.tolist())]) + " |")
    return "\n".join(lines)


def save_figure(fig, name: str, out_dir: str | Path = "results") -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        target = Path(out_dir) / "figures" / f"{name}.{ext}"
        atomic_write(target, lambda tmp, e=ext: fig.savefig(tmp, format=e, dpi=150, bbox_inches="tight"))
        paths.append(target)
    return paths


def reference(dataset: str) -> pd.DataFrame:
    """Published peer numbers (never ours), each row with its source and backbone."""
    path = REFERENCE_DIR / f"{dataset}.csv"
    return pd.read_csv(path, comment="#") if path.is_file() else pd.DataFrame()


def load_maps(run: str | Path) -> dict[str, np.ndarray]:
    path = Path(run) / "maps.npz"
    if not path.is_file():
        raise DskdError(f"{path} not found; evaluate the run with --save-maps first")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def refuse(saved: Mapping[str, np.ndarray], scales: Sequence[int] = (0, 1, 2), scale_fusion: str = "sum",
           student_fusion: str = "sum", sigma: float = 4.0, *, students: Sequence[str] | None = None,
           score_topk: int = 0, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Fuse a run's saved native per-scale maps again with other settings (no network involved): other scales,
    fusions or score, a subset of its students, or without the map normalization fitted in training. Scores
    ignore padding as in evaluation (pass `valid=saved.get("valid")` to the pixel metrics as well)."""
    import torch

    from .maps import fuse, upsample_scales

    size = saved["maps"].shape[-2:]
    saved_students = [str(n) for n in saved["students"]]
    norm = {n: torch.from_numpy(saved["norm"][i]).float() for i, n in enumerate(saved_students)}
    maps, scores = [], []
    for start in range(0, len(saved["maps"]), 32):
        sl = slice(start, start + 32)
        per_scale = {
            name: upsample_scales([torch.from_numpy(saved[f"scale{j}_{name}"][sl]).float()[:, None]
                                   for j in range(3)], size)
            for name in (students or saved_students)
        }
        valid = torch.from_numpy(saved["valid"][sl]) if "valid" in saved else None
        out = fuse(per_scale, scale_fusion=scale_fusion, student_fusion=student_fusion, sigma=sigma,
                   scales=list(scales), score_topk=score_topk, norm=norm if normalize else None, valid=valid)
        maps.append(out.map[:, 0].numpy())
        scores.append(out.score.numpy())
    return np.concatenate(maps), np.concatenate(scores)


SCALE_SUBSETS = ((0,), (1,), (2,), (0, 1), (1, 2), (0, 1, 2))


def multiscale_ablation(runs: pd.DataFrame, exp: Experiment | None = None,
                        fusions: Sequence[str] = ("sum", "product")) -> pd.DataFrame:
    """Scale subsets x scale fusion, re-fused from each run's saved maps; mean over runs, in percent."""
    from .metrics import all_metrics

    if runs.empty:
        return _skipped(exp)
    rows = []
    for _, r in runs.iterrows():
        saved = load_maps(r["run"])
        for subset in SCALE_SUBSETS:
            for how in fusions:
                maps, scores = refuse(saved, subset, scale_fusion=how)
                m = all_metrics(saved["labels"], scores, saved["masks"], maps, valid=saved.get("valid"))
                rows.append({"scales": "{" + ",".join(str(s + 1) for s in subset) + "}", "fusion": how,
                             "category": r["category"], "seed": r["seed"], **{k: m[k] for k in METRICS}})
    df = pd.DataFrame(rows).groupby(["scales", "fusion"], sort=False)[list(METRICS)].mean()
    return (100 * df).round(1)


def complexity_table(backbones: Sequence[str], variants: Sequence[str], image_size: int = 256,
                     batch: int = 4, repeats: int = 2) -> pd.DataFrame:
    """Trainable / frozen parameters, GFLOPs per image and inference images/s for every backbone x variant."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .model import build_model, count_parameters

    rows = []
    x = torch.rand(batch, 3, image_size, image_size)
    for backbone in backbones:
        for variant in variants:
            model = build_model(backbone, variant, pretrained=False).eval()
            with torch.inference_mode():
                with FlopCounterMode(display=False) as counter:
                    model.anomaly_map(x[:1])
                model.anomaly_map(x)  # warm-up
                t0 = time.perf_counter()
                for _ in range(repeats):
                    model.anomaly_map(x)
                ips = batch * repeats / (time.perf_counter() - t0)
            params = count_parameters(model)
            rows.append({"backbone": backbone, "variant": variant,
                         "trainable_M": round(params["trainable"] / 1e6, 2),
                         "frozen_M": round(params["frozen"] / 1e6, 2),
                         "gflops": round(counter.get_total_flops() / 1e9, 2), "infer_img_s": round(ips, 1)})
    return pd.DataFrame(rows).set_index(["backbone", "variant"])


def teacher_weights_available(backbone: str) -> bool:
    from .backbones import build_teacher

    try:
        build_teacher(backbone, pretrained=True)
    except DskdError:
        return False
    return True


def qualitative_figure(runs: pd.DataFrame, n_samples: int = 4, title: str = ""):
    """Rows of test samples: image, ground truth, teacher-Se map, teacher-Sd map, fused map, overlay.

    The samples are fixed (the first defective images, in file order, spread over defect types); every map
    column shares one colour scale per row so that the students can be compared directly.
    """
    import matplotlib.pyplot as plt

    run = runs[runs["method"] == "dskd"].iloc[0]["run"] if (runs["method"] == "dskd").any() else runs.iloc[0]["run"]
    saved = load_maps(run)
    picks = pick_samples(saved, n_samples)
    cols = ["image", "ground truth", "teacher − Se", "teacher − Sd", "fused", "overlay"]
    fig, axes = plt.subplots(len(picks), len(cols), figsize=(2.3 * len(cols), 2.2 * len(picks)), squeeze=False,
                             layout="constrained")
    for row, i in enumerate(picks):
        img = saved["images"][i]
        student = {str(n): saved[f"student_{n}"][i].astype(np.float32) for n in saved["students"]}
        vmax = max(float(v.max()) for v in student.values())
        fused = saved["maps"][i].astype(np.float32)
        panels = [img, saved["masks"][i], student.get("se"), student.get("sd"), fused, None]
        for col, (ax, panel) in enumerate(zip(axes[row], panels, strict=True)):
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(cols[col], fontsize=10)
            if col == 0:
                ax.set_ylabel(f"{saved['defect_types'][i]}\n{Path(str(saved['paths'][i])).name}", fontsize=8)
            if col == 5:
                ax.imshow(img)
                ax.imshow(fused, cmap="jet", alpha=0.45, vmin=float(fused.min()), vmax=float(fused.max()))
            elif panel is None:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
            elif col in (2, 3):
                shown = ax.imshow(panel, cmap="jet", vmin=0, vmax=vmax)
                if col == 3:
                    fig.colorbar(shown, ax=axes[row, 2:4].tolist(), fraction=0.046, pad=0.02,
                                 label="discrepancy (row scale)")
            elif col == 4:
                ax.imshow(panel, cmap="jet")
            else:
                ax.imshow(panel, cmap="gray" if col == 1 else None)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def show_samples(dataset, n: int = 4):
    """The first n defective test images of a dataset above their ground-truth masks."""
    import matplotlib.pyplot as plt

    picks = [i for i, s in enumerate(dataset.samples) if s.label == 1][:n]
    fig, axes = plt.subplots(2, len(picks), figsize=(2.4 * len(picks), 5), squeeze=False)
    for col, i in enumerate(picks):
        item = dataset[i]
        axes[0, col].imshow(item["image"].permute(1, 2, 0).numpy())
        axes[0, col].set_title(item["defect_type"], fontsize=10)
        axes[1, col].imshow(item["mask"][0].numpy(), cmap="gray", vmin=0, vmax=1)
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("ground truth")
    fig.tight_layout()
    return fig


def pick_samples(saved: Mapping[str, np.ndarray], n: int) -> list[int]:
    """The first defective test image of each defect type, in file order, then more of them, up to n."""
    types = [str(t) for t in saved["defect_types"]]
    defective = [i for i in np.argsort(saved["paths"], kind="stable") if saved["labels"][i] == 1]
    firsts = list(dict.fromkeys(types[i] for i in defective))
    picks = [next(i for i in defective if types[i] == t) for t in firsts][:n]
    picks += [i for i in defective if i not in picks][: n - len(picks)]
    return picks
