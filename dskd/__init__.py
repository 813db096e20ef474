"""dskd: a reproducibility suite for Dual-Student Knowledge Distillation (Yao & Gao, 2024) anomaly detection.

Importing the package loads nothing heavy: the network, training and evaluation (PyTorch) load when first asked
for, so that a line-side PC can predict with an exported model and ONNX Runtime or OpenVINO, without PyTorch.
"""

from __future__ import annotations

import importlib
import logging

from .errors import DskdError
from .model.config import VARIANTS, ModelConfig
from .run.config import RunConfig
from .run.profiles import PROFILES, profile_config
from .version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {"list_backbones": "model.backbones", "AnomalyOutput": "model.maps", "DSKD": "model.network",
         "build_model": "model.network", "count_parameters": "model.network", "fit": "run.training",
         "evaluate": "run.evaluation", "predict": "deploy.prediction", "load_run": "run.folder",
         "RunDir": "run.folder", "export": "deploy.export", "suite": "suite"}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return module if _LAZY[name].rpartition(".")[2] == name else getattr(module, name)
    raise AttributeError(f"module 'dskd' has no attribute '{name}'")


__all__ = [
    "DSKD", "PROFILES", "VARIANTS", "AnomalyOutput", "DskdError", "ModelConfig", "RunConfig", "RunDir",
    "build_model", "count_parameters", "evaluate", "fit", "list_backbones", "load_run", "predict",
    "profile_config", "__version__",
]
