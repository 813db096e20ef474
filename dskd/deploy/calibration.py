"""Calibrate on the line: reset a deployed decision from good images taken on the line, in a run folder (PyTorch)
or inside an exported ONNX / OpenVINO file (no PyTorch), by the rule training uses (`dskd.decision`), with the
same stated bound. The decision it replaces stays in the record (`Decision.previous`); `predict` and `export` use
the new one from then on."""

from __future__ import annotations

import logging
from contextlib import closing
from pathlib import Path

import numpy as np

from ..data.images import content_mask
from ..decision import Decision
from ..decision.stored import write_decision, write_file_decision
from ..errors import DskdError
from ..run.config import RunConfig
from ..settings import check_value, field_named
from .prediction import collect_images, scored
from .predictors import open_predictor

log = logging.getLogger(__name__)
TARGET = field_named(RunConfig, "target_false_alarm")  # described once, with its range


def calibrate(inputs: list[str | Path], *, run: str | Path | None = None, model: str | Path | None = None,
              engine: str | None = None, device: str = "auto", target_false_alarm: float | None = None,
              quiet: bool = True) -> Decision:
    """Set the deployed thresholds of `run` (a run folder) or `model` (an exported file) on the good images in
    `inputs`, at `target_false_alarm` (default: the target the current decision was set for). Every image must be
    readable: a calibration set with a hole in it is not the set the user meant."""
    if model is not None and Path(model).suffix.lower() not in (".onnx", ".xml"):
        raise DskdError(f"{model}: calibrate works on .onnx and OpenVINO .xml files; for a TorchScript export, "
                        "calibrate its run (--run RUN) and export it again")
    predictor = open_predictor(run, model, engine, device)
    old = predictor.decision
    target = target_false_alarm if target_false_alarm is not None else (old.target_false_alarm or 0.01)
    check_value(TARGET, target, float)  # the training setting's own range
    paths = [p for p, _ in collect_images(inputs)]
    scores, pixels = [], []
    with closing(scored(predictor, paths, "calibrate", quiet)) as outcomes:
        for _, image, amap, score, _ in outcomes:
            if isinstance(score, DskdError):
                raise DskdError(f"{score} (calibration stops: every good image must be readable)")
            scores.append(score)
            inside = content_mask(image.shape[1], image.shape[0], predictor.image_size, predictor.fit_mode)
            pixels.append(amap[inside])  # padding is not part of the image (pad mode)
    where = ", ".join(str(Path(i)) for i in inputs)
    decision = Decision.on_good_images(scores=np.asarray(scores, np.float32), pixels=np.concatenate(pixels),
                                       target=target, source=f"{len(scores)} good images from the line ({where})",
                                       rule="line_false_alarm")
    decision = decision.replacing(old)
    target = _store(decision, run, model)
    log.warning("deployed threshold of %s is now %.4g (was %.4g, %s); %s from now on", target,
                decision.threshold, old.threshold, old.rule, "predict and export use it" if run else "predict uses it")
    return decision


def _store(decision: Decision, run: str | Path | None, model: str | Path | None) -> Path:
    if run is not None:
        from ..run.folder import open_run

        path = open_run(run).decision_file
        write_decision(path, decision)
        return path
    write_file_decision(Path(model), decision)
    return Path(model)
