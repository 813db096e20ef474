"""The outline a line operator sees, and what it does on a labelled split.

A part the decision passes carries no outline; a part it flags is outlined around its pixels at or above the
decision's pixel threshold, which since decision schema 5 is the image threshold itself. With the map's maximum as
the image score a flagged part's highest pixel reaches the threshold by definition; with the mean of the map's
largest share (`--score-share`) that mean reaches it, so some pixel does too; under cross-fitting (flagged by
p-values) the threshold is lowered to the map's maximum where it would leave a flagged part bare. So every flagged
part shows where, no passed part shows anything, and the share of good parts carrying an outline is the image
decision's false-alarm rate, under the same bound. The outline is a picture of the decision, not a second one."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..stats import clopper_pearson


def outline(amap: np.ndarray, flagged: bool, pixel_threshold: float) -> np.ndarray:
    """H x W bool: the pixels outlined on one part."""
    if not flagged:
        return np.zeros(amap.shape, bool)
    return amap >= min(float(pixel_threshold), float(amap.max()))


def outlined_split(maps: np.ndarray, flagged: np.ndarray, labels: np.ndarray, pixel_threshold: float,
                   masks: np.ndarray | None, valid: np.ndarray | None = None) -> dict[str, Any]:
    """A labelled split under the deployed outline: `pixel_f1_at_threshold` (the segmentation F1 over every pixel of
    the split, MVTec AD 2's SegF1 at a threshold no defect set; None without masks) and `good_outlined` (the share
    of good images with any outlined pixel, with its Clopper–Pearson interval)."""
    good_outlined, tp, fp, fn = 0, 0, 0, 0
    for i in range(len(maps)):
        region = outline(maps[i], bool(flagged[i]), pixel_threshold)
        if valid is not None:
            region &= valid[i]
        good_outlined += int(labels[i] == 0 and region.any())
        if masks is not None:
            truth = masks[i] if valid is None else masks[i] & valid[i]
            tp += int((region & truth).sum())
            fp += int((region & ~truth).sum())
            fn += int((~region & truth).sum())
    n_good = int((labels == 0).sum())
    f1 = None if masks is None or tp + fn == 0 else 2 * tp / max(1, 2 * tp + fp + fn)
    return {"pixel_f1_at_threshold": f1, "good_outlined": good_outlined / n_good if n_good else None,
            "good_outlined_count": good_outlined,
            "good_outlined_interval": list(clopper_pearson(good_outlined, n_good)) if n_good else None}
