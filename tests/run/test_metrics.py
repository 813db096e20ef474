import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import f1_score, roc_auc_score

from dskd.run.metrics import aupro, f1_max, image_auroc, per_type_image_auroc, pixel_auroc, pro_curve


def reference_aupro(masks, maps, limit=0.3):
    """An independent, slow implementation straight from MVTec AD's definition."""
    regions = []
    for m, a in zip(masks, maps, strict=True):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [a[lab == r] for r in range(1, n + 1)]
    normal = maps[~masks]
    fpr, pro = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fpr.append((normal >= t).mean())
        pro.append(np.mean([(r >= t).mean() for r in regions]))
    fpr, pro = np.array(fpr), np.array(pro)
    i = np.searchsorted(fpr, limit)
    y = pro[i - 1] + (pro[i] - pro[i - 1]) * (limit - fpr[i - 1]) / (fpr[i] - fpr[i - 1])
    return np.trapezoid(np.r_[pro[:i], y], np.r_[fpr[:i], limit]) / limit


def _case(seed, decimals):
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 24, 24), bool)
    for i in range(3):
        y, x = rng.integers(0, 18, 2)
        masks[i, y:y + rng.integers(1, 6), x:x + rng.integers(1, 6)] = True
    masks[3, 2, 2] = masks[3, 3, 3] = True  # diagonal neighbours: one 8-connected region
    maps = np.round(rng.random((4, 24, 24)) + masks * rng.uniform(0.1, 0.8), decimals).astype(np.float32)
    return masks, maps


@pytest.mark.parametrize("seed", range(6))
def test_aupro_matches_independent_definition(seed):
    masks, maps = _case(seed, decimals=1 if seed % 2 else 4)  # coarse rounding: many ties
    for limit in (0.05, 0.3, 1.0):
        assert aupro(masks, maps, limit) == pytest.approx(reference_aupro(masks, maps, limit), abs=1e-3)


def test_perfect_inverted_random():
    masks, maps = _case(0, 4)
    perfect = masks.astype(np.float32)
    assert pixel_auroc(masks, perfect) == 1.0 and aupro(masks, perfect) == pytest.approx(1.0)
    assert pixel_auroc(masks, -perfect) == 0.0 and aupro(masks, -perfect) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    big = rng.random((8, 64, 64)) < 0.1
    assert pixel_auroc(big, rng.random(big.shape)) == pytest.approx(0.5, abs=0.02)
    labels = np.r_[np.zeros(50), np.ones(50)]
    assert image_auroc(labels, labels) == 1.0 and image_auroc(labels, -labels) == 0.0
    assert image_auroc(labels, np.zeros(100)) == 0.5


def test_auroc_and_f1_match_sklearn():
    rng = np.random.default_rng(3)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + labels * 0.3, 2)
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    best = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert f1_max(labels, scores) == pytest.approx(best)


def test_region_size_makes_aupro_and_pixel_auroc_differ():
    # One large region found perfectly, one small region missed: pixel AUROC (pixel-weighted) stays high,
    # AUPRO (region-weighted) drops to about half.
    masks = np.zeros((1, 64, 64), bool)
    masks[0, 0:30, 0:30] = True
    masks[0, 50:52, 50:52] = True
    rng = np.random.default_rng(0)
    maps = rng.random((1, 64, 64)).astype(np.float32) * 0.5
    maps[0, 0:30, 0:30] += 1.0
    assert pixel_auroc(masks, maps) > 0.95
    assert aupro(masks, maps) < 0.7
    assert aupro(masks, maps) < pixel_auroc(masks, maps)


def test_pro_curve_is_monotone_and_per_type():
    masks, maps = _case(2, 4)
    c = pro_curve(masks, maps)
    assert c.fpr[0] == 0 and c.fpr[-1] == pytest.approx(1.0) and c.pro[-1] == pytest.approx(1.0)
    assert np.all(np.diff(c.fpr) >= 0) and np.all(np.diff(c.pro) >= -1e-12)
    per = per_type_image_auroc([0, 0, 1, 1], [0.1, 0.2, 0.9, 0.15], ["good", "good", "a", "b"])
    assert per == {"a": 1.0, "b": 0.5}


def test_padding_outside_valid_is_ignored_by_pixel_metrics():
    """Metrics over padded maps with `valid` equal the metrics of the maps cropped to the image, whatever
    values the padding holds (it would otherwise count as easy defect-free pixels)."""
    masks, maps = _case(3, 2)
    rows = masks.shape[1]
    padded_masks = np.zeros((len(masks), rows + 10, masks.shape[2]), bool)
    padded_masks[:, 4: 4 + rows] = masks
    padded_maps = np.random.default_rng(0).uniform(-5, 5, padded_masks.shape).astype(np.float32)
    padded_maps[:, 4: 4 + rows] = maps
    valid = np.zeros_like(padded_masks)
    valid[:, 4: 4 + rows] = True
    assert pixel_auroc(padded_masks, padded_maps, valid) == pixel_auroc(masks, maps)
    assert aupro(padded_masks, padded_maps, valid=valid) == pytest.approx(aupro(masks, maps), abs=1e-12)
    assert aupro(padded_masks, padded_maps) != pytest.approx(aupro(masks, maps), abs=1e-3)  # padding counted
