"""Evaluation: score the test split at the run's deployed decision (`dskd.run.set_decision`), which no test label set,
and, on request, keep every map (`dskd.run.archive`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_json
from ..data import AnomalyDataset, run_images
from ..decision import FALSE_ALARM_RULES, Decision, at_threshold, shift_test
from ..decision.outline import outlined_split
from ..errors import DskdError
from . import archive
from .batch_maps import all_maps, preload, valid_tensor
from .folder import LoadedRun, RunDir, load_run
from .metrics import all_metrics, pixel_metrics
from .set_decision import decide_on_held_out, from_labelled_folder

log = logging.getLogger(__name__)
PIXEL_METRICS = ("pixel_auroc", "aupro", "aupro_005", "pixel_f1_max")
# What a metrics.json must hold to be used as it is; an older or edited one is evaluated again.
METRICS_SCHEMA = ("image_auroc", *PIXEL_METRICS, "false_alarm_rate", "recall", "n_good", "good_flagged",
                  "bound_false_alarm", "decision", "shift", "pixel_f1_at_threshold", "good_outlined")


def evaluate(run_dir: str | Path | RunDir, data_root: str | Path | None = None, *, save_maps: bool = False,
             device: str = "auto", quiet: bool = True, threshold_from: str | Path | None = None) -> dict[str, Any]:
    """Score the test split: the threshold-free metrics (image AUROC, pixel AUROC, AUPRO, per-defect-type AUROC),
    the oracle F1-max, the decisions at the deployed threshold, which no test label ever set, and whether the
    test's good images score like the images that threshold was set on.

    `threshold_from` (a labelled folder) decides this evaluation at that folder's F1-max instead; the run's
    deployed decision and its `metrics.json` stay as they are (only `python -m dskd calibrate` changes a decision)."""
    t0 = time.perf_counter()
    loaded = load_run(run_dir, device)
    cfg, model = loaded.run.config, loaded.model
    decision = _decision(loaded, threshold_from, data_root, quiet)
    test_set = run_images(cfg, "test", data_root)
    images, masks = preload(test_set, desc="loading test images", quiet=quiet)
    valid = valid_tensor(test_set)
    maps, scores, per_student, per_scale, set_scores = all_maps(loaded, images, valid, save_maps, quiet)
    labels, valid_np = test_set.labels, None if valid is None else valid.numpy()
    masks_np = masks.numpy() if test_set.has_masks else None
    metrics = _metrics(test_set.where, labels, scores, masks_np, maps, test_set.defect_types, valid_np)
    flagged = decision.flags(scores, set_scores)
    outlined = outlined_split(maps, flagged, labels, decision.pixel_threshold,
                              masks_np if masks_np is not None and masks_np.any() else None, valid_np)
    result = {**metrics, **_decided(decision, labels, scores, set_scores, flagged, test_set, loaded), **outlined,
              "n_test": len(labels), "n_defective": int(labels.sum()), "seconds": round(time.perf_counter() - t0, 3),
              "dataset": cfg.dataset, "category": cfg.category, "backbone": cfg.model.backbone,
              "variant": cfg.model.variant, "df_source": cfg.model.df_source, "image_size": cfg.image_size,
              "epochs": cfg.epochs, "seed": cfg.seed, "precision": loaded.precision, "run": str(loaded.run.path)}
    if threshold_from is None:
        write_json(loaded.run.metrics_file, result)
    if save_maps:
        archive.save(loaded.run.maps_file, archive.SavedMaps(
            images=images.permute(0, 2, 3, 1).numpy(), masks=masks_np, labels=labels, scores=scores,
            maps=maps.astype(np.float16), paths=[str(p.path) for p in test_set.samples],
            defect_types=list(test_set.defect_types), threshold=decision.threshold,
            pixel_threshold=decision.pixel_threshold, per_student=per_student, per_scale=per_scale,
            norm=model.map_norm_stats.cpu().numpy(), fusion=archive.SavedMaps.fusion_of(cfg.model), valid=valid_np,
            flagged=flagged, set_scores=set_scores))
    return result


def _decision(loaded: LoadedRun, threshold_from: str | Path | None, data_root: str | Path | None,
              quiet: bool) -> Decision:
    """The decision this evaluation uses: the labelled folder's F1-max for this once, or the deployed one (set on
    the held-out images now if the run predates decisions)."""
    if threshold_from is not None:
        decision = from_labelled_folder(loaded, Path(threshold_from), loaded.run.config.target_false_alarm, quiet)
        log.info("this evaluation decides at %s's F1-max threshold %.4g; the run's deployed decision is unchanged "
                 "(python -m dskd calibrate changes it)", threshold_from, decision.threshold)
        return decision
    return loaded.decision() if loaded.run.decision_file.is_file() else decide_on_held_out(loaded, data_root, quiet)


def _decided(decision: Decision, labels: np.ndarray, scores: np.ndarray, set_scores: np.ndarray | None,
             flagged: np.ndarray, test_set: AnomalyDataset, loaded: LoadedRun) -> dict[str, Any]:
    """The decision, what it promised, and the test split as it decided (`flagged`): counts, rates, intervals, the
    shift test."""
    good = labels == 0
    shift = _shift(decision, scores[good], None if set_scores is None else set_scores[good], test_set.where,
                   loaded.run.path)
    return {**at_threshold(labels, flagged, test_set.defect_types, decision.bound_false_alarm),
            "decision_threshold": decision.threshold, "decision_rule": decision.rule,
            "decision_images": decision.n_images, "target_false_alarm": decision.target_false_alarm,
            "expected_false_alarm": decision.expected_false_alarm, "bound_false_alarm": decision.bound_false_alarm,
            "decision": {k: v for k, v in decision.to_dict().items()
                         if k not in ("calibration_scores", "out_of_fold_scores")},
            "decides_by": decision.decides_by(),
            "score_summary": score_summary(labels, scores, flagged), "shift": shift,
            "shifted": None if shift is None else shift["shifted"],
            "shift_p_value": None if shift is None else shift["p_value"]}


def _shift(decision: Decision, good_scores: np.ndarray, set_scores: np.ndarray | None, where: str,
           run: Path) -> dict[str, Any] | None:
    """The shift test on the test's good images, said in one warning line when they score higher than the
    calibration images (the promised rate does not hold for them)."""
    found = shift_test(decision, good_scores, set_scores=set_scores) if decision.rule in FALSE_ALARM_RULES else None
    if found and found["shifted"]:
        log.warning("%s: its %d good images score higher than the %d images the threshold was set on (one-sided "
                    "Mann-Whitney U on their conformal p-values, p = %.2g < %g), so the false-alarm rate promised "
                    "for those does not hold for these; set the threshold on good images like them: python -m dskd "
                    "calibrate --run %s GOOD_DIR", where, found["n_good"], found["n_calibration"], found["p_value"],
                    found["level"], run)
    return found


def _metrics(where: str, labels: np.ndarray, scores: np.ndarray, masks: np.ndarray | None, maps: np.ndarray,
             defect_types, valid: np.ndarray | None) -> dict[str, Any]:
    """The threshold-free metrics, each None where the test split cannot define it, said in one warning line: image
    metrics need good and defective images, pixel metrics masks that mark defect pixels."""
    out: dict[str, Any] = {**dict.fromkeys(("image_auroc", "image_f1_max", *PIXEL_METRICS)),
                           "per_defect_image_auroc": {}}
    reasons, n_defective = [], int(labels.sum())
    if 0 < n_defective < len(labels):
        out.update(all_metrics(labels, scores, defect_types=defect_types))
    else:
        kind = "defect-free" if n_defective == 0 else "defective"
        reasons.append(f"holds only {kind} images: image AUROC and F1-max are undefined (null; see score_summary "
                       "for the scores and the share at the decision threshold)")
    if masks is None:
        reasons.append("has no pixel masks: image-level metrics only (pixel AUROC, AUPRO and pixel F1 are null)")
    elif not masks.any():
        reasons.append("has no defect pixel in its masks: pixel AUROC, AUPRO and pixel F1 are null")
    else:
        out.update(pixel_metrics(masks, maps, valid))
    if reasons:
        log.warning("%s %s", where, "; it ".join(reasons))
    return out


def score_summary(labels: np.ndarray, scores: np.ndarray, flagged: np.ndarray) -> dict[str, dict[str, float]]:
    """What can be measured with one kind of image alone: each kind's score distribution and the share of its
    images the decision flags (the false-alarm rate of the good ones, the recall of the defective ones)."""
    out = {}
    for kind, chosen in (("good", ~labels.astype(bool)), ("defective", labels.astype(bool))):
        s = scores[chosen].astype(np.float64)
        if s.size:
            out[kind] = {"n": int(s.size), "min": float(s.min()), "median": float(np.median(s)),
                         "p95": float(np.percentile(s, 95)), "max": float(s.max()),
                         "flagged": float(flagged[chosen].mean())}
    return out


def evaluate_once(run: RunDir) -> dict[str, Any]:
    """Metrics of a run, evaluating it (and saving its maps) only when that was not done since training with
    the current archive schema."""
    if run.metrics_file.is_file() and run.maps_file.is_file() and \
            run.metrics_file.stat().st_mtime >= run.checkpoint.stat().st_mtime and \
            archive.version(run.maps_file) == archive.VERSION:
        try:
            metrics = run.metrics()
        except DskdError as exc:  # a cache, so a broken one is written anew
            log.warning("%s; evaluating the run again", exc)
        else:
            if isinstance(metrics, dict) and all(k in metrics for k in METRICS_SCHEMA):
                return metrics
            log.warning("%s lacks fields this version records; evaluating the run again", run.metrics_file)
    return evaluate(run, save_maps=True)
