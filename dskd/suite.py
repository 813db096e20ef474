"""What the notebooks call, in one namespace: experiments, tables, figures, charts, ablations and saved maps.

Each piece lives in its own module of the reproduction layer (`dskd.repro`: experiments, tables, figures, plots,
ablations, claims) or of a run's (`dskd.run.archive`); a notebook imports this one and calls two or three of these
functions.
"""

from __future__ import annotations

from .repro.ablations import SCALE_SUBSETS, complexity_table, fuse_saved, multiscale_ablation, teacher_weights_available
from .repro.claims import CLAIMS, claims_summary, claims_tables, ledger
from .repro.experiment_config import Experiment, ExperimentConfig, from_parameters
from .repro.experiments import claims_runs, experiment, run_grid
from .repro.figures import pick_samples, qualitative_figure, save_figure, show_samples
from .repro.plots import bars_figure, cost_figure, curves_figure, method_bars, multiscale_bars, training_figure
from .repro.tables import (
    AT_THRESHOLD,
    METRICS,
    benchmark_table,
    decision_table,
    markdown,
    method_table,
    per_defect_table,
    reference,
    save_table,
    summarize,
)
from .run.archive import SavedMaps
from .run.archive import load as load_maps
from .run.evaluation import evaluate_once
from .run.methods import ABLATION_DF, ABLATION_STUDENTS, METHODS, TABLE_METHODS

__all__ = [
    "ABLATION_DF", "ABLATION_STUDENTS", "AT_THRESHOLD", "CLAIMS", "METHODS", "METRICS", "SCALE_SUBSETS",
    "TABLE_METHODS", "Experiment", "ExperimentConfig", "SavedMaps", "bars_figure", "benchmark_table", "claims_runs",
    "claims_summary", "claims_tables", "complexity_table", "cost_figure", "curves_figure", "decision_table",
    "evaluate_once", "experiment", "from_parameters", "fuse_saved", "ledger", "load_maps", "markdown", "method_bars",
    "method_table", "multiscale_ablation", "multiscale_bars", "per_defect_table", "pick_samples",
    "qualitative_figure", "reference", "run_grid", "save_figure", "save_table", "show_samples", "summarize",
    "teacher_weights_available", "training_figure",
]
