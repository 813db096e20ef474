"""Setting a run's deployed decision (`dskd.decision`) on images that are not its test split: its held-out images,
every good image cross-fitted (each student set's out-of-fold scores), the training images where nothing was held
out, or a labelled folder for one evaluation. Re-scoring a cross-fitted run's out-of-fold scores lives here too."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

from ..atomic import read_json, write_json
from ..data import AnomalyDataset, held_out_images, labelled_samples, run_images
from ..decision import Decision
from ..decision.stored import read_out_of_fold, write_decision, write_out_of_fold
from .batch_maps import scored
from .config import RunConfig
from .folder import LoadedRun, RunDir, load_run
from .metrics import f1_max_threshold

log = logging.getLogger(__name__)


def decide_on_held_out(loaded: LoadedRun, data_root: str | Path | None = None, quiet: bool = True) -> Decision | None:
    """Set the run's deployed decision as training does: on its held-out images, on its student sets' out-of-fold
    scores (cross-fitted), else (nothing held out) on the training images. A student set stores its out-of-fold
    scores, not a decision (None)."""
    cfg = loaded.run.config
    if cfg.cross_fitted:
        return decide_on_folds(loaded.run)
    held_out = held_out_images(cfg, data_root)
    images = held_out if held_out is not None else run_images(cfg, "train", data_root)
    scores = scored(loaded, images, quiet)
    if cfg.fold is not None:
        write_out_of_fold(loaded.run.path, scores)
        return None
    if held_out is not None:
        decision = Decision.on_good_images(scores=scores, target=cfg.target_false_alarm,
                                           source=f"{len(images)} good images held out of training "
                                                  f"({cfg.dataset}/{cfg.category}, seed {cfg.seed})")
    else:
        note = (f"no validation split (val_fraction {cfg.val_fraction}): both thresholds come from the images "
                "the model was trained on, so expect more false alarms than on held-out images")
        log.warning("decision threshold: %s", note)
        decision = Decision.on_training_images(threshold=loaded.image_threshold, target=cfg.target_false_alarm,
                                               n_images=len(images),
                                               source=f"{len(images)} training images ({cfg.dataset}/{cfg.category})",
                                               note=note)
    write_decision(loaded.run.decision_file, decision)
    return decision


def decide_on_folds(run: RunDir) -> Decision:
    """Set a cross-fitted run's decision: the cross-conformal rule on each student set's scores of the fold it never
    trained on (stored by each set; no map is computed again)."""
    cfg = run.config
    sets = [read_out_of_fold(run.student_set(k).path, "training the run again") for k in range(cfg.folds)]
    decision = Decision.cross_conformal(
        out_of_fold_scores=sets, target=cfg.target_false_alarm, source=f"{sum(map(len, sets))} good training images "
        f"in {cfg.folds} folds, each scored by the set that never trained on it ({cfg.dataset}/{cfg.category}, seed "
        f"{cfg.seed})")
    write_decision(run.decision_file, decision)
    return decision


def score_folds_again(loaded: LoadedRun, data_root: str | Path | None = None, quiet: bool = True) -> Decision:
    """Set a cross-fitted run's decision with its sets' out-of-fold scores computed again by the run's present map
    settings (an image score changed after training, say): set k alone scores fold k, as in training (the shared
    teacher with that set's students, which is the cross-fitted model's score by set k), and nothing trains."""
    for k in range(loaded.run.config.folds):
        student_set = loaded.run.student_set(k)
        fold = run_images(student_set.config, "held_out", data_root)
        write_out_of_fold(student_set.path, scored(replace(loaded, run=student_set, model=loaded.model.sets[k]), fold,
                                                   quiet))
    return decide_on_folds(loaded.run)


def from_labelled_folder(loaded: LoadedRun, folder: Path, target: float, quiet: bool) -> Decision:
    """The F1-max threshold of a labelled folder (good/ and defect folders), for one evaluation only."""
    cfg = loaded.run.config
    images = AnomalyDataset(labelled_samples(folder), cfg.image_size, where=str(folder), fit_mode=cfg.fit_mode)
    scores = scored(loaded, images, quiet)
    good = int((images.labels == 0).sum())
    return Decision.on_labelled_folder(threshold=f1_max_threshold(images.labels, scores), target=target,
                                       n_images=len(images),
                                       source=f"{folder} ({good} good, {len(images) - good} defective images)")


def with_image_score(source: RunDir, target: Path, share: float) -> RunDir:
    """A trained run's copy at `target` whose image score is the mean of its map's largest `share` (0: the maximum):
    its weights linked, never trained again, its settings (and so its fingerprint) the new score's, and its decision
    set again on the same good images (a cross-fitted run's here, a one-model run's when it is evaluated). A copy
    left half-made by an interruption is made again."""
    cfg = source.config.with_overrides(score_share=share)
    copy = RunDir(Path(target), cfg)
    if copy.completed:
        return copy
    partial = copy.path.with_name(copy.path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    results = {"maps.npz", "metrics.json", "decision.json", "run.log", ".worker.pid"}  # the run's own, not its sets'
    shutil.copytree(source.path, partial, copy_function=_link,
                    ignore=lambda folder, names: results & set(names) if Path(folder) == source.path else set())
    for info_file in [partial / "config.json", *partial.glob("folds/*/config.json")]:
        info = read_json(info_file, "training the run again")
        own = RunConfig.from_dict(info["config"]).with_overrides(score_share=share)  # a set's has its fold
        write_json(info_file, {**info, "config": own.to_dict(), "fingerprint": own.fingerprint()})
    if cfg.cross_fitted:
        score_folds_again(load_run(partial, "cpu"))
    partial.rename(copy.path)
    return copy


def _link(src: str, dst: str) -> None:
    """The checkpoint hard-linked (hundreds of MB, never written again), anything else copied."""
    if Path(src).name == "checkpoint.pt":
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system
            pass
    shutil.copy2(src, dst)
