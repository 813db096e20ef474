"""Profiles: named starting points for a run's settings (`RunConfig`), each a small set of overrides.

`demo` and `test` use the synthetic textures offline, `quick` real data on a CPU, `paper` the paper's teacher.
A profile's image size and epochs may follow the dataset's kind of image (`BY_DATASET`, `DatasetSpec.quick`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import DskdError
from .config import RD_ADAM, RunConfig

BY_DATASET: Any = "by dataset"  # a profile's image size or epochs that follow the dataset (`DatasetSpec.quick`)
PROFILES: dict[str, dict[str, Any]] = {
    # The offline demo: synthetic textures, small images, a few epochs; every table within minutes on a CPU.
    "demo": dict(dataset="synthetic", backbone="efficientnet_lite0", image_size=128, epochs=3, batch_size=8),
    # Real data on a CPU, offline teacher: chosen across MT Defects, MPDD and bottle by the mean of their available
    # metrics, one MT run <= 10 min on 2 cores (results/benchmarks/quick_sweep.md, docs/findings.md section 15).
    # Image size and epochs: each dataset's own (`DatasetSpec.quick`: 128 px tiles, 256 px photographs).
    "quick": dict(backbone="efficientnet_lite0", image_size=BY_DATASET, epochs=BY_DATASET, batch_size=8),
    # The paper's teacher; the training recipe is Reverse Distillation's (the DSKD paper's own is not available).
    "paper": dict(backbone="resnet18", image_size=256, epochs=200, batch_size=16, se_optim=RD_ADAM, sd_optim=RD_ADAM),
    # For the test suite only: the smallest run that exercises every code path.
    "test": dict(dataset="synthetic", backbone="efficientnet_lite0", image_size=64, epochs=1, batch_size=8),
}


def profile_config(name: str, **overrides: Any) -> RunConfig:
    if name not in PROFILES:
        raise DskdError(f"unknown profile '{name}'; choose one of {', '.join(PROFILES)}")
    cfg = RunConfig(profile=name).with_overrides(**PROFILES[name]).with_overrides(**overrides)
    if BY_DATASET in (cfg.image_size, cfg.epochs):
        from ..data import get_dataset

        size, epochs, _ = get_dataset(cfg.dataset).quick
        given = cfg.image_size != BY_DATASET
        cfg = dataclasses.replace(cfg, image_size=cfg.image_size if given else size, size_from="given" if given
                                  else "dataset", epochs=epochs if cfg.epochs == BY_DATASET else cfg.epochs)
    return cfg
