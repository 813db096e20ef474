"""Methods: the named rows of the paper's tables and ablations, each a small set of setting overrides.

The notebooks, `benchmarks.accuracy` and `benchmarks.gpu_sweep` all pick their rows from this one registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import DskdError
from .config import RD_ADAM


@dataclass(frozen=True)
class Method:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("dskd", {"variant": "dskd"}, "dual students; Sd decodes Se's pyramid through the DF embedding"),
    Method("se_only", {"variant": "se_only"}, "the forward student alone (~STFPM)"),
    Method("sd_only", {"variant": "sd_only"}, "the inverted student alone (~Reverse Distillation)"),
    Method("dskd_no_df", {"variant": "dskd_no_df"}, "dual students without the DF embedding"),
    Method("dual_se", {"variant": "dual_se"}, "control: two forward students (two initializations), fused as dskd"),
    Method("dual_sd", {"variant": "dual_sd"}, "control: two inverted students, each with its own DF embedding of the "
                                              "teacher, fused as dskd"),
    Method("dskd_df_teacher", {"variant": "dskd", "df_source": "teacher"}, "the DF embedding reads the teacher"),
    Method("dskd_df_both", {"variant": "dskd", "df_source": "both"}, "the DF embedding reads teacher and Se"),
    Method("dskd_df_detach", {"variant": "dskd", "df_detach": True}, "Sd reads Se without training it"),
    Method("dskd_df_predicted", {"variant": "dskd", "df_input": "predicted"},
           "the DF embedding reads Se's predictions of the teacher"),
    Method("dskd_se_adam", {"variant": "dskd", "se_optim": RD_ADAM}, "Se trained with Reverse Distillation's Adam"),
    Method("dskd_df_both_detach", {"variant": "dskd", "df_source": "both", "df_detach": True},
           "teacher and Se feed the DF embedding; Sd does not train Se"),
)}

# The rows of the paper's tables and of the benchmarks.
TABLE_METHODS = ("dskd", "se_only", "sd_only")
# dual_se and dual_sd tell an ensemble of two students from the inversion (docs/claims: claim 2).
ABLATION_STUDENTS = ("se_only", "sd_only", "dskd_no_df", "dual_se", "dual_sd", "dskd")
ABLATION_DF = ("dskd", "dskd_df_teacher", "dskd_no_df")


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise DskdError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    return METHODS[name]
