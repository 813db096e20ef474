"""The outline a line operator sees is a picture of the decision: none on a part it passes, never empty on a part it
flags, and on a labelled split the share of good parts outlined is the false-alarm rate."""

import numpy as np

from dskd.decision.outline import outline, outlined_split
from dskd.deploy import overlay


def test_an_outline_only_where_the_decision_flags_and_never_empty_there():
    amap = np.array([[0.1, 0.5], [0.9, 0.3]], np.float32)
    assert not outline(amap, False, 0.2).any()  # above the threshold, but passed: no outline
    assert outline(amap, True, 0.4).tolist() == [[False, True], [True, False]]
    assert outline(amap, True, 5.0).tolist() == [[False, False], [True, False]]  # flagged by p-value: its peak


def test_on_a_labelled_split_good_parts_are_outlined_exactly_when_flagged():
    rng = np.random.default_rng(0)
    maps = rng.random((6, 8, 8)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1])
    flagged = np.array([True, False, False, True, True, False])
    masks = np.zeros((6, 8, 8), bool)
    masks[3:, 2:5, 2:5] = True
    maps[3:, 2:5, 2:5] += 2.0  # the defects stand out
    got = outlined_split(maps, flagged, labels, 1.5, masks)
    assert got["good_outlined"] == 1 / 3 and got["good_outlined_count"] == 1
    low, high = got["good_outlined_interval"]
    assert low < 1 / 3 < high
    # outlined: image 0 (its peak, below 1.5) and the 9 defect pixels of images 3 and 4; image 5 passed
    tp, fp, fn = 18, int((maps[0] >= maps[0].max()).sum()), 9
    assert got["pixel_f1_at_threshold"] == 2 * tp / (2 * tp + fp + fn)
    assert outlined_split(maps, flagged, labels, 1.5, None)["pixel_f1_at_threshold"] is None


def test_the_overlay_draws_the_decision_s_outline():
    image = np.full((64, 64, 3), 128, np.uint8)
    amap = np.zeros((32, 32), np.float32)
    amap[10:20, 10:20] = 5.0
    passed = np.asarray(overlay.render(image, amap, "stretch", 10.0, 5.0, pixel_threshold=1.0, defective=False))
    flagged = np.asarray(overlay.render(image, amap, "stretch", 10.0, 5.0, pixel_threshold=1.0, defective=True))
    magenta = np.all(flagged == overlay.OUTLINE, axis=2)
    assert not np.all(passed == overlay.OUTLINE, axis=2).any() and magenta.any()


def test_a_tall_overlay_blended_in_blocks_equals_one_blended_whole():
    """A 24-megapixel frame is blended in row blocks (memory); the blocks must meet without a seam."""
    rng = np.random.default_rng(1)
    image = (rng.random((3 * overlay.BLOCK_ROWS + 17, 300, 3)) * 255).astype(np.uint8)
    amap = rng.random((32, 32)).astype(np.float32)
    got = np.asarray(overlay.render(image, amap, "stretch", 2.0, 0.5, defective=False))
    full = overlay.map_to_image(amap, 300, image.shape[0], "stretch")
    spread = max(2.0 - float(full.min()), 1e-6)
    level = np.clip(np.rint((0.5 + 0.5 * (full - 2.0) / spread) * 255), 0, 255).astype(np.uint8)
    whole = (0.55 * image + 0.45 * overlay._JET_LUT[level]).astype(np.uint8)
    below_label = slice(60, None)  # the decision's label is drawn in the top-left corner
    assert np.array_equal(got[below_label], whole[below_label])
