"""dskd: a reproducibility suite for Dual-Student Knowledge Distillation (Yao & Gao, 2024) anomaly detection."""

from __future__ import annotations

import logging

from .backbones import list_backbones
from .config import PROFILES, VARIANTS, ModelConfig, RunConfig, profile_config
from .errors import DskdError
from .maps import AnomalyOutput
from .model import DSKD, build_model, count_parameters

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str):
    # Training and evaluation pull in the data and metrics stacks; load it only when asked for.
    lazy = {"fit": "training", "evaluate": "evaluation", "predict": "prediction", "load_run": "runs",
            "RunDir": "runs"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(f".{lazy[name]}", __name__), name)
    raise AttributeError(f"module 'dskd' has no attribute '{name}'")


__all__ = [
    "DSKD", "PROFILES", "VARIANTS", "AnomalyOutput", "DskdError", "ModelConfig", "RunConfig", "RunDir",
    "build_model", "count_parameters", "evaluate", "fit", "list_backbones", "load_run", "predict",
    "profile_config",
]
