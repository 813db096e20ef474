"""Calibrate on the line: reset a deployed decision from good images taken on the line, in a run folder (PyTorch)
or inside an exported ONNX / OpenVINO file (no PyTorch), by the rule training uses (`dskd.decision`), with the
same stated bound. The decision it replaces stays in the record (`Decision.previous`); `predict` and `export` use
the new one from then on."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from contextlib import closing
from pathlib import Path

import numpy as np

from ..data import run_images
from ..decision import Decision, shift_test
from ..decision.stored import DECISION_FILE, write_decision, write_file_decision
from ..errors import DskdError
from ..run.config import RunConfig
from ..settings import check_value, field_named
from .prediction import collect_images
from .predictors import open_predictor, scored

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
    _check_writable(run, model)
    paths = distinct([p for p, _ in collect_images(inputs)])
    if run is not None:
        never_trained_on(paths, Path(run))
    scores, per_set = [], []
    with closing(scored(predictor, paths, "calibrate", quiet)) as outcomes:
        for _, _, _, score, set_scores in outcomes:
            if isinstance(score, DskdError):
                raise DskdError(f"{score} (calibration stops: every good image must be readable)")
            scores.append(score)
            per_set.append(set_scores)
    all_good(old, paths, np.asarray(scores), None if per_set[0] is None else np.stack(per_set))
    where = ", ".join(str(Path(i)) for i in inputs)
    decision = Decision.on_good_images(scores=np.asarray(scores, np.float32), target=target, rule="line_false_alarm",
                                       source=f"{len(scores)} good images from the line ({where})")
    decision = decision.replacing(old)
    target = _store(decision, run, model)
    log.warning("deployed threshold of %s is now %.4g (was %.4g, %s); %s from now on", target,
                decision.threshold, old.threshold, old.rule, "predict and export use it" if run else "predict uses it")
    return decision


def distinct(paths: list[Path]) -> list[Path]:
    """The images, each content once (a folder given twice, a copy under another name), said in one line."""
    seen: dict[str, Path] = {}
    for path in paths:
        seen.setdefault(_digest(path), path)
    if len(seen) < len(paths):
        log.warning("calibrate: %d of the %d images given repeat another one's content and count once (%d images "
                    "calibrate)", len(paths) - len(seen), len(paths), len(seen))
    return list(seen.values())


def never_trained_on(paths: list[Path], run: Path) -> None:
    """Refuse images the run trained on (by content): they score lower than new parts, so a threshold set on them
    would flag good parts more often than it promises."""
    from ..run.folder import open_run

    try:
        trained = {_digest(s.path) for s in run_images(open_run(run).config, "train").samples}
    except DskdError as exc:  # the training data moved: nothing to compare with
        log.info("calibrate: the run's training images could not be read (%s); not checked against them", exc)
        return
    seen = [p for p in paths if _digest(p) in trained]
    if seen:
        raise DskdError(f"{len(seen)} of the {len(paths)} images are images the run trained on (by content: "
                        f"{', '.join(p.name for p in seen[:3])}{', ...' if len(seen) > 3 else ''}); they score lower "
                        "than new parts, so the threshold would promise too little: calibrate on good images from the "
                        "line that the model never saw")


def all_good(old: Decision, paths: list[Path], scores: np.ndarray, set_scores: np.ndarray | None) -> None:
    """One warning when these images score clearly higher than the good images the current decision was set on
    (the shift test, `dskd.decision.shift_test`, at its level): a defective part among them would raise the
    threshold until the line passes defects."""
    found = shift_test(old, scores, set_scores=set_scores)
    if found and found["shifted"]:
        top = [f"{paths[i].name} ({scores[i]:.4g})" for i in np.argsort(-scores)[:3]]
        log.warning("calibrate: these %d images score higher than the %d good images the model was checked on "
                    "(%s: p = %.2g < %g): are these all good? A defective part among them raises the threshold "
                    "until defects pass; the highest: %s. If the line changed and they are all good, this is "
                    "expected", len(scores), found["n_calibration"], found["test"], found["p_value"], found["level"],
                    ", ".join(top))


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_writable(run: str | Path | None, model: str | Path | None) -> None:
    """A read-only model file (or run decision) is refused, not replaced behind its mode."""
    path = Path(model) if model is not None else Path(run) / DECISION_FILE
    if path.exists() and (not os.access(path, os.W_OK) or not path.stat().st_mode & stat.S_IWUSR):  # root too
        raise DskdError(f"{path} is read-only; calibrate a writable copy, or make it writable (chmod u+w) if the "
                        "deployed decision should change")


def _store(decision: Decision, run: str | Path | None, model: str | Path | None) -> Path:
    if run is not None:
        from ..run.folder import open_run

        path = open_run(run).decision_file
        write_decision(path, decision)
        return path
    write_file_decision(Path(model), decision)
    return Path(model)
