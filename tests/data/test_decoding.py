"""The one image decoder: one picture saved in every format a camera or an editor writes reaches the network as the
same [0, 1] picture and scores the same; masks read alike in every mode; what cannot be read is one line."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from dskd import DskdError
from dskd.data.images import DECODING, read_image, read_mask, read_picture

from ..conftest import BOTTLE, needs_bottle


def _picture(h=48, w=64) -> np.ndarray:
    """A gray picture (so that a 256-colour palette holds it exactly) with structure, in 8-bit steps."""
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 4 + yy * 2 + (xx // 8 + yy // 8) % 2 * 60) % 256).astype(np.uint8)


def save_every_format(folder, g: np.ndarray) -> list:
    """The picture `g` as 8-bit L / RGB / RGBA (opaque and with a varying alpha) / LA / palette PNG, 16-bit PNG,
    16-bit gray and RGB TIFF, float32 gray and RGB TIFF in [0, 1], a planar RGB TIFF, CMYK TIFF, and PNGs stored
    turned with an EXIF orientation."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.dstack([g, g, g])
    alpha = np.random.default_rng(0).integers(0, 256, g.shape, dtype=np.uint8)
    Image.fromarray(g).save(folder / "l8.png")
    Image.fromarray(rgb).save(folder / "rgb8.png")
    Image.fromarray(np.dstack([rgb, np.full_like(g, 255)])).save(folder / "rgba_opaque.png")
    Image.fromarray(np.dstack([rgb, alpha])).save(folder / "rgba_alpha.png")
    Image.fromarray(np.dstack([g, alpha]), "LA").save(folder / "la.png")
    Image.fromarray(g).convert("P").save(folder / "palette.png")
    Image.fromarray(g.astype(np.uint16) * 257).save(folder / "l16.png")
    tifffile.imwrite(folder / "l16.tif", g.astype(np.uint16) * 257)
    tifffile.imwrite(folder / "rgb16.tif", rgb.astype(np.uint16) * 257)
    tifffile.imwrite(folder / "f32.tif", (g / 255).astype(np.float32))
    tifffile.imwrite(folder / "rgbf32.tif", (rgb / 255).astype(np.float32))
    tifffile.imwrite(folder / "planar.tif", np.moveaxis(rgb, -1, 0), planarconfig="separate")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.tif")
    for orientation, stored in ((6, np.rot90(rgb, 1)), (3, rgb[::-1, ::-1]), (8, np.rot90(rgb, -1))):
        im = Image.fromarray(np.ascontiguousarray(stored))
        exif = im.getexif()
        exif[0x0112] = orientation
        im.save(folder / f"exif{orientation}.png", exif=exif)
    return sorted(folder.iterdir())


def test_every_format_decodes_to_the_same_picture(tmp_path):
    g = _picture()
    files = save_every_format(tmp_path, g)
    want = np.dstack([g, g, g]).astype(np.float32) / 255
    for f in files:
        assert np.abs(read_picture(f) - want).max() < 1e-6, f.name
        assert np.array_equal(read_image(f), np.dstack([g, g, g])), f.name
    assert "alpha" in DECODING and "16-bit" in DECODING and "float" in DECODING


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_format_scores_the_same(tmp_path, data_root):
    """Through a trained model and predict (the path a user's images take): equal scores to 1e-5."""
    from dskd import fit
    from dskd.deploy.prediction import predict
    from dskd.run.profiles import profile_config

    run = fit(profile_config("test", data_root=str(data_root), category="grid"), tmp_path / "run", quiet=True)
    save_every_format(tmp_path / "formats", _picture(96, 128))
    rows = predict(run.path, [tmp_path / "formats"], tmp_path / "out", device="cpu")
    scores = {r["path"].rsplit("/", 1)[-1]: r["score"] for r in rows}
    assert len(scores) == 16 and not any(r["error"] for r in rows)
    first = scores["rgb8.png"]
    for name, score in scores.items():
        assert score == pytest.approx(first, rel=1e-5, abs=1e-5), name


@pytest.mark.parametrize("bad, words", [
    (np.full((8, 8), 200.0, np.float32), "values from 200 to 200"),
    (np.array([[0.5, np.nan], [0.1, 0.2]], np.float32), "1 NaN or infinite"),
    (np.full((8, 8), -0.5, np.float32), "scaled to [0, 1]"),
])
def test_floats_outside_zero_one_are_refused_with_one_line(tmp_path, bad, words):
    tifffile.imwrite(tmp_path / "f.tif", bad)
    with pytest.raises(DskdError, match=r".*f\.tif: a float image with .*") as err:
        read_image(tmp_path / "f.tif")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_stack_that_is_not_a_picture_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((16, 16, 5), np.uint8), photometric="rgb", extrasamples=[0, 0])
    with pytest.raises(DskdError, match="not a picture's"):
        read_image(tmp_path / "stack.tif")


@needs_bottle
def test_masks_of_any_mode_read_alike(tmp_path):
    """The official bottle masks saved as L, RGB, opaque RGBA (alpha 255 everywhere, as editors write them), RGBA
    with the mask in its alpha over black, palette, 16-bit and 1-bit: one and the same mask."""
    for path in sorted((BOTTLE / "ground_truth").rglob("*_mask.png"))[::20]:
        truth = np.asarray(Image.open(path).convert("L")) > 0
        m = truth.astype(np.uint8) * 255
        cases = {
            "l.png": Image.fromarray(m), "rgb.png": Image.fromarray(np.dstack([m, m, m])),
            "opaque.png": Image.fromarray(np.dstack([m, m, m, np.full_like(m, 255)])),
            "alpha.png": Image.fromarray(np.dstack([np.zeros_like(m)] * 3 + [m])),
            "palette.png": Image.fromarray(np.dstack([m, np.zeros_like(m), np.zeros_like(m)])).convert("P"),
            "sixteen.png": Image.fromarray(truth.astype(np.uint16) * 65535), "bits.png": Image.fromarray(truth),
        }
        for name, im in cases.items():
            im.save(tmp_path / name)
            assert np.array_equal(read_mask(tmp_path / name), truth), (path.name, name)
        assert truth.any()
