"""Ablations that need no retraining (re-fusing a run's saved maps), and the cost of each backbone x variant."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import DskdError
from ..model.maps import fuse, upsample_scales
from ..run import archive
from ..run.archive import SavedMaps
from ..run.metrics import all_metrics
from .experiment_config import Experiment
from .tables import METRICS, skipped_table

SCALE_SUBSETS = ((0,), (1,), (2,), (0, 1), (1, 2), (0, 1, 2))


def fuse_saved(saved: SavedMaps, *, scales: Sequence[int] | None = None, students: Sequence[str] | None = None,
           normalize: bool = True, **fusion) -> tuple[np.ndarray, np.ndarray]:
    """Fuse a run's saved native per-scale maps again (no network involved): by default exactly as the run did
    (its recorded fusion settings and normalization); `fusion` overrides any of scale_fusion, student_fusion,
    sigma and score_share; `scales` and `students` take subsets; `normalize=False` drops the fitted normalization.
    Scores ignore padding as in evaluation (pass `valid=saved.valid` to the pixel metrics as well)."""
    allowed = [k for k in archive.FUSION_FIELDS if k != "map_norm"]
    if set(fusion) - set(allowed):
        raise DskdError(f"fuse_saved() cannot change {sorted(set(fusion) - set(allowed))}; it takes "
                        f"{', '.join(allowed)}")
    settings = {k: v for k, v in {**saved.fusion, **fusion}.items() if k in allowed}
    size = saved.maps.shape[-2:]
    norm = {n: torch.from_numpy(saved.norm[i]).float() for i, n in enumerate(saved.students)}
    maps, scores = [], []
    for start in range(0, len(saved.maps), 32):
        sl = slice(start, start + 32)
        per_scale = {name: upsample_scales([torch.from_numpy(m[sl]).float()[:, None] for m in saved.per_scale[name]],
                                           size) for name in (students or saved.students)}
        valid = torch.from_numpy(saved.valid[sl]) if saved.valid is not None else None
        use_norm = norm if normalize and saved.fusion.get("map_norm", "zscore") != "none" else None
        out = fuse(per_scale, scales=None if scales is None else list(scales), norm=use_norm, valid=valid, **settings)
        maps.append(out.map[:, 0].numpy())
        scores.append(out.score.numpy())
    return np.concatenate(maps), np.concatenate(scores)


def multiscale_ablation(runs: pd.DataFrame, exp: Experiment | None = None,
                        fusions: Sequence[str] = ("sum", "product")) -> pd.DataFrame:
    """Scale subsets x scale fusion, re-fused from each run's saved maps; mean over runs, in percent."""
    if runs.empty:
        return skipped_table(exp)
    rows = []
    for _, r in runs.iterrows():
        saved = archive.load(r["run"])
        for subset in SCALE_SUBSETS:
            for how in fusions:
                maps, scores = fuse_saved(saved, scales=subset, scale_fusion=how)
                m = all_metrics(saved.labels, scores, saved.masks, maps, valid=saved.valid)
                rows.append({"scales": "{" + ",".join(str(s + 1) for s in subset) + "}", "fusion": how,
                             "category": r["category"], "seed": r["seed"], **{k: m.get(k) for k in METRICS}})
    df = pd.DataFrame(rows).astype({k: float for k in METRICS})
    return (100 * df.groupby(["scales", "fusion"], sort=False)[list(METRICS)].mean()).round(1)


def complexity_table(backbones: Sequence[str], variants: Sequence[str], image_size: int = 256,
                     batch: int = 4, repeats: int = 2) -> pd.DataFrame:
    """Trainable / frozen parameters, GFLOPs per image and inference images/s for every backbone x variant."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..model.network import build_model, count_parameters

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
    """Whether the teacher's ImageNet weights can be had here; quiet (torch's download notice names a cache folder
    of this machine, which would land in the executed notebook)."""
    from ..model.backbones import build_teacher

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            build_teacher(backbone, pretrained=True)
    except DskdError:
        return False
    return True

