"""Image AUROC, pixel AUROC, AUPRO and F1-max, computed exactly and leanly.

All curves are exact (every distinct score is a threshold, ties handled as one threshold). The pixel-level
metrics never sort all pixels at once where they don't need to: AUROC compares sorted negatives against the
positives, and AUPRO only sorts the pixels above the threshold at which the false-positive rate reaches its
limit, which is what keeps 500 maps of 256 x 256 within seconds and about twice the maps' memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _as_arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64 if np.asarray(scores).dtype == np.float64 else np.float32).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels ({labels.size}) and scores ({scores.size}) differ in size")
    return labels, scores


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(equal): the Mann-Whitney form of the area under the ROC curve."""
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    neg.sort()  # callers pass fresh copies (boolean indexing), so sorting in place saves a copy of the maps
    below = np.searchsorted(neg, pos, side="left").astype(np.float64)
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (pos.size * neg.size))


def image_auroc(labels, scores) -> float:
    labels, scores = _as_arrays(labels, scores)
    return _auroc(scores[labels], scores[~labels])


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """The exact image-level ROC curve (false- and true-positive rates, one corner per distinct score)."""
    labels, scores = _as_arrays(labels, scores)
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], labels[order]
    corners = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    tp, fp = np.cumsum(hits)[corners], np.cumsum(~hits)[corners]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def _within(masks, maps, valid) -> tuple[np.ndarray, np.ndarray]:
    """Flat masks and maps, restricted to the `valid` pixels (None: all of them)."""
    masks, maps = _as_arrays(masks, maps)
    if valid is None:
        return masks, maps
    valid = np.asarray(valid, dtype=bool).ravel()
    if valid.shape != masks.shape:
        raise ValueError(f"valid ({valid.size}) and maps ({maps.size}) differ in size")
    return masks[valid], maps[valid]


def pixel_auroc(masks, maps, valid=None) -> float:
    """Over the `valid` pixels only, where given (padding is not part of the image)."""
    masks, maps = _within(masks, maps, valid)
    return _auroc(maps[masks], maps[~masks])


def _f1_best(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """(best F1 over thresholds, its threshold); the best threshold is always one of the positives' scores and
    a score at or above it counts as positive."""
    if pos.size == 0:
        return float("nan"), float("nan")
    pos.sort()  # fresh copies from the callers, sorted in place
    neg.sort()
    thresholds = np.unique(pos)
    tp = pos.size - np.searchsorted(pos, thresholds, side="left")
    fp = neg.size - np.searchsorted(neg, thresholds, side="left")
    f1 = 2 * tp / (2 * tp + fp + (pos.size - tp))
    return float(f1.max()), float(thresholds[int(np.argmax(f1))])


def _f1_max(pos: np.ndarray, neg: np.ndarray) -> float:
    return _f1_best(pos, neg)[0]


def f1_max(labels, scores) -> float:
    labels, scores = _as_arrays(labels, scores)
    return _f1_max(scores[labels], scores[~labels])


def f1_max_threshold(labels, scores) -> float:
    """The image-score threshold of the best F1: decide 'defective' when a score is at or above it."""
    labels, scores = _as_arrays(labels, scores)
    return _f1_best(scores[labels], scores[~labels])[1]


@dataclass
class ProCurve:
    fpr: np.ndarray  # false-positive rate over all defect-free pixels, increasing from 0
    pro: np.ndarray  # mean over ground-truth regions of the fraction of the region above the threshold
    thresholds: np.ndarray


def _regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Weight of each defect pixel, 1 / (n_regions * size of its 8-connected region), and the region count."""
    weights, counts = [], []
    for mask in masks:
        if not mask.any():
            continue
        labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
        sizes = np.bincount(labels.ravel())
        weights.append(1.0 / sizes[labels[mask]])
        counts.append(n)
    n_regions = int(sum(counts))
    w = np.concatenate(weights) / n_regions if n_regions else np.zeros(0)
    return w, n_regions


def _pro_inputs(masks, maps, fpr_limit: float, valid=None):
    """Sorted defect scores with the prefix sums of their region weights, and the defect-free scores that can
    matter below `fpr_limit`, sorted descending (with how many defect-free pixels there are in all)."""
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float32)
    masks, maps = masks.reshape(-1, *masks.shape[-2:]), maps.reshape(-1, *maps.shape[-2:])
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    weights, n_regions = _regions(masks)
    if n_regions == 0:
        raise ValueError("AUPRO needs at least one defect region in the masks")
    defect = maps[masks]
    order = np.argsort(defect, kind="stable")
    defect, cum_w = defect[order], np.r_[0.0, np.cumsum(weights[order])]
    del order, weights
    normal = maps[~masks] if valid is None else maps[~masks & np.asarray(valid, bool).reshape(masks.shape)]
    n_normal = normal.size
    if n_normal == 0:
        raise ValueError("AUPRO needs defect-free pixels to measure false positives")
    k = min(n_normal, max(1, int(np.ceil(fpr_limit * n_normal))))
    normal.partition(n_normal - k)
    normal = normal[normal >= normal[n_normal - k]]
    normal[::-1].sort()  # descending, in place
    return defect, cum_w, normal, n_normal


def _pro_segments(masks, maps, fpr_limit: float, chunk: int = 1 << 20, valid=None):
    """Yield the exact PRO curve as consecutive (fpr, pro, threshold) arrays, thresholds decreasing.

    Only defect-free pixels move the FPR, so the curve's corners sit at their distinct scores u: there it
    steps from (FPR(> u), PRO(> u)) to (FPR(>= u), PRO(>= u)); the PRO side comes from a prefix sum over the
    sorted defect pixels. Pixels below the score where the FPR reaches `fpr_limit` are never sorted, and
    the corners are produced a chunk at a time, so memory stays near twice the maps'. Pixels outside `valid`
    (padding) are neither defect-free nor defective: they do not count.
    """
    defect, cum_w, normal, n_normal = _pro_inputs(masks, maps, fpr_limit, valid)
    yield np.zeros(1), np.zeros(1), np.full(1, np.inf)
    n_gt_carry = 0
    for start in range(0, normal.size, chunk):
        seg = normal[start: start + chunk + 1]
        is_end = np.r_[seg[:-1] != seg[1:], True] if start + chunk >= normal.size else seg[:-1] != seg[1:]
        ends = np.flatnonzero(is_end)
        u = seg[ends]
        n_ge = start + ends + 1
        n_gt = np.r_[n_gt_carry, n_ge[:-1]]
        if n_ge.size:
            n_gt_carry = n_ge[-1]
        pro_ge = cum_w[-1] - cum_w[np.searchsorted(defect, u, side="left")]
        pro_gt = cum_w[-1] - cum_w[np.searchsorted(defect, u, side="right")]
        yield (np.stack([n_gt, n_ge], 1).ravel() / n_normal, np.stack([pro_gt, pro_ge], 1).ravel(),
               np.repeat(u, 2))
    last = n_gt_carry / n_normal
    yield np.full(1, last), np.full(1, cum_w[-1]), np.full(1, -np.inf)  # defect pixels below every threshold


def pro_curve(masks, maps, fpr_limit: float = 1.0, valid=None) -> ProCurve:
    """The exact PRO curve up to (at least) `fpr_limit` (its corners; straight lines between them)."""
    segments = _pro_segments(masks, maps, fpr_limit, valid=valid)
    fpr, pro, thr = (np.concatenate(a) for a in zip(*segments, strict=True))
    return ProCurve(fpr=fpr, pro=pro, thresholds=thr)


def aupro(masks, maps, fpr_limit: float = 0.3, valid=None) -> float:
    """Area under the PRO curve from FPR 0 to `fpr_limit`, divided by the limit (MVTec AD's definition)."""
    area, prev_x, prev_y = 0.0, 0.0, 0.0
    for fpr, pro, _ in _pro_segments(masks, maps, fpr_limit, valid=valid):
        x, y = np.r_[prev_x, fpr], np.r_[prev_y, pro]
        past = np.flatnonzero(x >= fpr_limit)
        if past.size:  # cut at the limit, interpolating linearly
            i = past[0]
            if i == 0:
                break
            x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
            y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0) if x1 > x0 else y1
            x, y = np.r_[x[:i], fpr_limit], np.r_[y[:i], y_lim]
            area += float(np.trapezoid(y, x))
            return area / fpr_limit
        area += float(np.trapezoid(y, x))
        prev_x, prev_y = x[-1], y[-1]
    return area / fpr_limit


def per_type_image_auroc(labels, scores, defect_types) -> dict[str, float]:
    """Image AUROC of the good images against each defect type alone."""
    labels, scores = _as_arrays(labels, scores)
    types = np.asarray(defect_types)
    good = scores[~labels]
    return {t: _auroc(scores[types == t], good) for t in sorted(set(types[labels]))}


def pixel_metrics(masks, maps, valid=None) -> dict[str, float]:
    """Pixel AUROC, AUPRO (integrated to a false-positive rate of 0.30, and of 0.05 as MVTec AD 2 reports it) and
    pixel F1-max over the `valid` pixels (masks with defect and defect-free pixels)."""
    return {"pixel_auroc": pixel_auroc(masks, maps, valid), "pixel_f1_max": f1_max(*_within(masks, maps, valid)),
            "aupro": aupro(masks, maps, valid=valid), "aupro_005": aupro(masks, maps, 0.05, valid=valid)}


def all_metrics(labels, scores, masks=None, maps=None, defect_types=None, valid=None) -> dict[str, float | dict]:
    """`valid` (like `masks`, True where the input shows the image): pixel metrics ignore everything else."""
    out: dict[str, float | dict] = {"image_auroc": image_auroc(labels, scores), "image_f1_max": f1_max(labels, scores)}
    if masks is not None and maps is not None:
        out.update(pixel_metrics(masks, maps, valid))
    if defect_types is not None:
        out["per_defect_image_auroc"] = per_type_image_auroc(labels, scores, defect_types)
    return out
