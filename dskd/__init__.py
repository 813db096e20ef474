"""dskd: a reproducibility suite for Dual-Student Knowledge Distillation (Yao & Gao, 2024) anomaly detection.

Importing the package loads nothing heavy: the network, training and evaluation (PyTorch) load when first asked
for, so that a line-side PC can predict with an exported model and ONNX Runtime or OpenVINO, without PyTorch.
"""

from __future__ import annotations

import importlib
import logging

from .config import VARIANTS, ModelConfig, RunConfig
from .errors import DskdError
from .profiles import PROFILES, profile_config

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {"list_backbones": "backbones", "AnomalyOutput": "maps", "DSKD": "model", "build_model": "model",
         "count_parameters": "model", "fit": "training", "evaluate": "evaluation", "predict": "prediction",
         "load_run": "runs", "RunDir": "runs", "export": "export"}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return module if name == _LAZY[name] else getattr(module, name)
    raise AttributeError(f"module 'dskd' has no attribute '{name}'")


__all__ = [
    "DSKD", "PROFILES", "VARIANTS", "AnomalyOutput", "DskdError", "ModelConfig", "RunConfig", "RunDir",
    "build_model", "count_parameters", "evaluate", "fit", "list_backbones", "load_run", "predict",
    "profile_config",
]
