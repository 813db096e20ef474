"""Setting a run's deployed decision on images that are not its test split: its held-out images, every good image
cross-fitted, the training images where there is nothing else, or a labelled folder for one evaluation."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ..atomic import write_json
from ..data import AnomalyDataset, NoValidationSplit, labelled_samples, load_dataset
from .batch_maps import scored
from .config import RunConfig
from .decision import Decision, false_alarm_threshold, from_folds, from_good_images
from .folder import LoadedRun, RunDir
from .metrics import f1_max_threshold

log = logging.getLogger(__name__)


def decide_on_held_out(loaded: LoadedRun, data_root: str | Path | None = None, quiet: bool = True) -> Decision:
    """Set the run's deployed decision (`decision.json`) as training does: on its validation split, on its folds
    (cross-fitted), else (val_fraction 0) on the training images."""
    cfg = loaded.run.config
    if cfg.ensemble:
        return decide_on_folds(loaded.run)
    images, held_out = _good_images(cfg, data_root or cfg.data_root)
    scores, pixels = scored(loaded, images, quiet)
    if held_out:
        decision = from_good_images(scores, pixels, cfg.max_false_alarm,
                                    f"{len(images)} good images held out of training "
                                    f"({cfg.dataset}/{cfg.category}, seed {cfg.seed})", announce=cfg.fold is None)
    else:
        note = (f"no validation split (val_fraction {cfg.val_fraction}): both thresholds come from the images "
                "the model was trained on, so expect more false alarms than on held-out images")
        log.warning("decision threshold: %s", note)
        decision = Decision(loaded.image_threshold, false_alarm_threshold(pixels, cfg.max_false_alarm)[0],
                            "train_mean_plus_3std", f"{len(images)} training images "
                            f"({cfg.dataset}/{cfg.category})", len(images),
                            cfg.max_false_alarm, None, note)
    write_json(loaded.run.decision_file, decision.to_dict())
    return decision


def decide_on_folds(run: RunDir) -> Decision:
    """Set a cross-fitted run's decision: the cross-conformal rule on each set's scores of the fold it never trained
    on (each set's own decision holds them; no map is computed again); the outline is the mean of the sets'."""
    cfg = run.config
    sets = [m.recorded_decision("training the run again") for m in map(run.member, range(cfg.folds))]
    decision = from_folds([d.calibration_scores for d in sets], sum(d.pixel_threshold for d in sets) / len(sets),
                          cfg.max_false_alarm, f"{sum(d.n_images for d in sets)} good training images in "
                          f"{cfg.folds} folds, each scored by the set that never trained on it "
                          f"({cfg.dataset}/{cfg.category}, seed {cfg.seed})")
    write_json(run.decision_file, decision.to_dict())
    return decision


def score_folds_again(loaded: LoadedRun, data_root: str | Path | None = None, quiet: bool = True) -> Decision:
    """Set a cross-fitted run's decision with its sets' out-of-fold scores computed again by the run's present map
    settings (an image score changed after training, say): set k alone scores fold k, as in training (the shared
    teacher with that set's students, which is the ensemble's score by set k), and nothing trains."""
    for k in range(loaded.run.config.folds):
        member = loaded.run.member(k)
        fold, _ = _good_images(member.config, data_root or member.config.data_root)
        scores = scored(replace(loaded, run=member, model=loaded.model.members[k]), fold, quiet)[0]
        before = member.recorded_decision("training the run again")
        write_json(member.decision_file, replace(before, calibration_scores=sorted(float(s) for s in scores)).to_dict())
    return decide_on_folds(loaded.run)


def _good_images(cfg: RunConfig, root: str | Path) -> tuple[AnomalyDataset, bool]:
    """(the validation split, True), or (the training images, False) where the run has none."""
    def split(name: str) -> AnomalyDataset:
        return load_dataset(cfg.dataset, root, cfg.category, name, cfg.image_size, split_file=cfg.split_file,
                            fit_mode=cfg.fit_mode, val_fraction=cfg.val_fraction, seed=cfg.seed, folds=cfg.folds,
                            fold=cfg.fold)
    try:
        return split("val"), True
    except NoValidationSplit:
        return split("train"), False


def from_labelled_folder(loaded: LoadedRun, folder: Path, rate: float, quiet: bool) -> Decision:
    cfg = loaded.run.config
    images = AnomalyDataset(labelled_samples(folder), cfg.image_size, where=str(folder), fit_mode=cfg.fit_mode)
    scores, pixels = scored(loaded, images, quiet, good_pixels_only=True)
    good = int((images.labels == 0).sum())
    return Decision(f1_max_threshold(images.labels, scores), false_alarm_threshold(pixels, rate)[0],
                    "f1_max_on_folder", f"{folder} ({good} good, {len(images) - good} defective images)",
                    len(images), rate, None)
