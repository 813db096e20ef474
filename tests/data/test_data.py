import numpy as np
import pytest
from PIL import Image

from dskd.data import categories, load_dataset
from dskd.data.download import safe_extract
from dskd.data.synthetic import CATEGORIES, ensure_synthetic

from ..conftest import MT_ROOT, MT_SPLIT, SHARED_DATA, needs_mt


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _img(h=40, w=40, value=100):
    return np.full((h, w, 3), value, np.uint8)


def _mask(h=40, w=40):
    m = np.zeros((h, w), np.uint8)
    m[10:20, 5:15] = 255
    return m


@pytest.fixture
def mvtec_ad(tmp_path):
    root = tmp_path / "mvtec_ad"
    _png(root / "bottle/train/good/000.png", _img())
    _png(root / "bottle/train/good/001.png", np.full((40, 40), 50, np.uint8))  # grayscale
    _png(root / "bottle/test/good/000.png", _img())
    _png(root / "bottle/test/broken/000.png", _img())
    _png(root / "bottle/ground_truth/broken/000_mask.png", _mask())
    return tmp_path


@pytest.fixture
def mvtec3d(tmp_path):
    root = tmp_path / "mvtec3d"
    _png(root / "bagel/train/good/rgb/000.png", _img())
    _png(root / "bagel/validation/good/rgb/000.png", _img())
    _png(root / "bagel/test/good/rgb/000.png", _img())
    _png(root / "bagel/test/crack/rgb/000.png", _img())
    _png(root / "bagel/test/crack/gt/000.png", _mask())
    return tmp_path


def test_mvtec_ad_layout(mvtec_ad):
    assert categories("mvtec_ad", mvtec_ad) == ["bottle"]
    train = load_dataset("mvtec_ad", mvtec_ad, "bottle", "train", 64)
    test = load_dataset("mvtec_ad", mvtec_ad, "bottle", "test", 64)
    assert len(train) == 2 and len(test) == 2
    item = train[1]
    assert item["image"].shape == (3, 64, 64) and item["image"].max() <= 1.0
    assert item["image"][0, 0, 0].item() == pytest.approx(50 / 255)  # grayscale became RGB
    bad = [test[i] for i in range(2) if test[i]["label"] == 1][0]
    assert bad["defect_type"] == "broken" and bad["mask"].shape == (1, 64, 64)
    assert set(bad["mask"].unique().tolist()) == {0.0, 1.0}
    assert bad["mask"].sum().item() == pytest.approx(16 * 16, rel=0.1)  # 10x10 of 40x40, nearest-resized


def test_mvtec3d_layout_ignores_validation(mvtec3d):
    train = load_dataset("mvtec3d", mvtec3d, "bagel", "train", 32)
    test = load_dataset("mvtec3d", mvtec3d, "bagel", "test", 32)
    assert len(train) == 1 and len(test) == 2
    assert sorted(test.defect_types) == ["crack", "good"]
    assert test[[s.label for s in test.samples].index(1)]["mask"].sum() > 0


def test_mt_layout_and_split(mt, tmp_path):
    train = load_dataset("mt_defects", mt, "mt_defects", "train", 32)
    test = load_dataset("mt_defects", mt, "mt_defects", "test", 32)
    assert len(train) == 8 and len(test) == 3 and sum(test.labels) == 1
    split = tmp_path / "split.txt"
    split.write_text("f1.jpg\nf2\n")
    assert len(load_dataset("mt_defects", mt, "mt_defects", "train", 32, split_file=split)) == 2
    split.write_text("nope.jpg\n")
    with pytest.raises(ValueError, match="nope"):
        load_dataset("mt_defects", mt, "mt_defects", "train", 32, split_file=split)


def test_mt_pad_mode_keeps_aspect(mt):
    test = load_dataset("mt_defects", mt, "mt_defects", "test", 50, fit_mode="pad")
    img = test[0]["image"]
    assert img[:, 0, :].abs().sum() == 0  # padded rows above the 30x50 image
    assert img[:, 25, :].min() > 0


def test_valid_masks_mark_the_image_and_not_the_padding(mt):
    padded = load_dataset("mt_defects", mt, "mt_defects", "test", 64, fit_mode="pad")
    valid = padded.valid_masks()
    shown = np.stack([padded[i]["image"].amax(0).numpy() > 0 for i in range(len(padded))])  # images are grey 90
    assert valid.shape == (3, 64, 64) and np.array_equal(valid, shown)
    assert 0.5 < valid.mean() < 0.7  # a 30 x 50 image fills 38 of 64 rows
    assert load_dataset("mt_defects", mt, "mt_defects", "test", 64).valid_masks() is None  # stretch: no padding


def test_sixteen_bit_and_rgba(tmp_path):
    root = tmp_path / "mvtec_ad"
    _png(root / "c/train/good/000.png", np.full((40, 40, 4), 200, np.uint8))
    p = root / "c/train/good/001.png"
    Image.fromarray(np.full((40, 40), 65535, np.uint16)).save(p)
    train = load_dataset("mvtec_ad", root, "c", "train", 32)
    assert train[0]["image"].shape == (3, 32, 32)
    assert train[1]["image"].min().item() == pytest.approx(1.0)


def test_bad_inputs_give_one_line_errors(mvtec_ad, tmp_path):
    def one_line(exc_info, *words):
        msg = str(exc_info.value)
        assert "\n" not in msg and all(w in msg for w in words), msg

    with pytest.raises(ValueError) as e:
        load_dataset("mvtec_ad", tmp_path / "missing", "bottle", "train", 64)
    one_line(e, "missing", "--data-root")
    with pytest.raises(ValueError) as e:
        load_dataset("mvtec_ad", mvtec_ad, "cable", "train", 64)
    one_line(e, "cable", "bottle")
    (mvtec_ad / "mvtec_ad/bottle/ground_truth/broken/000_mask.png").rename(mvtec_ad / "moved.png")
    with pytest.raises(ValueError) as e:
        load_dataset("mvtec_ad", mvtec_ad, "bottle", "test", 64)
    one_line(e, "000_mask.png", "require_masks=False")
    test = load_dataset("mvtec_ad", mvtec_ad, "bottle", "test", 64, require_masks=False)
    assert len(test) == 2 and test[1]["mask"].sum() == 0
    _png(mvtec_ad / "mvtec_ad/bottle/ground_truth/broken/000_mask.png", _mask(20, 20))
    with pytest.raises(ValueError) as e:
        load_dataset("mvtec_ad", mvtec_ad, "bottle", "test", 64)
    one_line(e, "000_mask.png", "20x20", "40x40")
    good = mvtec_ad / "mvtec_ad/bottle/train/good/000.png"
    good.write_bytes(good.read_bytes()[:60])
    train = load_dataset("mvtec_ad", mvtec_ad, "bottle", "train", 64)
    with pytest.raises(ValueError) as e:
        train[0]
    one_line(e, "000.png", "truncated")
    (mvtec_ad / "mvtec_ad/empty/train/good").mkdir(parents=True)
    with pytest.raises(ValueError) as e:
        load_dataset("mvtec_ad", mvtec_ad, "empty", "train", 64)
    one_line(e, "no images")
    with pytest.raises(ValueError, match="synthetic"):
        load_dataset("imagenet", mvtec_ad, "x", "train", 64)


def test_synthetic_is_deterministic_with_exact_masks(tmp_path):
    assert categories("synthetic") == list(CATEGORIES)
    a, b = ensure_synthetic(tmp_path / "a", ("grid",)), ensure_synthetic(tmp_path / "b", ("grid",), seed=0)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 60 + 16 + 4 * 6 * 2
    for rel in files[::7]:
        assert np.array_equal(np.asarray(Image.open(a / rel)), np.asarray(Image.open(b / rel)))
    c = ensure_synthetic(tmp_path / "c", ("grid",), seed=1)
    assert not np.array_equal(np.asarray(Image.open(a / files[0])), np.asarray(Image.open(c / files[0])))
    # The mask is exactly where the painted defect changed the image.
    from dskd.data.synthetic import _rng, paint_defect, texture
    for defect in ("scratch", "spot", "hole", "stain"):
        rng = _rng(0, "grid", defect, 0)
        clean = texture("grid", rng)
        rng = _rng(0, "grid", defect, 0)
        img, mask = paint_defect(texture("grid", rng), defect, rng)
        changed = np.abs(img - clean).max(axis=2) > 0
        assert mask.any() and np.array_equal(changed, mask), defect


def test_synthetic_loads_through_load_dataset(data_root):
    test = load_dataset("synthetic", data_root, "stripes", "test", 64)
    assert len(test) == 40 and sum(test.labels) == 24
    assert (data_root / "synthetic" / "stripes" / "ground_truth").is_dir()


def test_safe_extract_refuses_escaping_members(tmp_path):
    import io
    import tarfile
    import zipfile
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../escape.txt", "x")
    with pytest.raises(ValueError, match="escape.txt"):
        safe_extract(evil, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    evil_tar = tmp_path / "evil.tar"
    with tarfile.open(evil_tar, "w") as t:
        info = tarfile.TarInfo("/abs/f.txt")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="abs"):
        safe_extract(evil_tar, tmp_path / "out2")
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("data/a.txt", "x")
    safe_extract(good, tmp_path / "out3")
    assert (tmp_path / "out3/data/a.txt").read_text() == "x"


def test_download_offline_fails_at_once_with_one_line(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    from dskd.data.__main__ import main

    def no_network(*a, **k):
        raise urllib.error.URLError("network disabled by the test")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert main(["download", "mt_defects", "--root", str(tmp_path)]) == 2


@needs_mt
def test_real_mt_defects_counts_and_splits():
    free = load_dataset("mt_defects", MT_ROOT, "mt_defects", "train", 64)
    test = load_dataset("mt_defects", MT_ROOT, "mt_defects", "test", 64)
    assert len(free) + (len(test) - sum(test.labels)) == 952 and sum(test.labels) == 392
    assert len(free) == round(0.8 * 952)
    listed_train = load_dataset("mt_defects", MT_ROOT, "mt_defects", "train", 64, split_file=MT_SPLIT)
    listed_test = load_dataset("mt_defects", MT_ROOT, "mt_defects", "test", 64, split_file=MT_SPLIT)
    assert len(listed_train) == 761 and len(listed_test) == 191 + 392
    assert categories("mt_defects", MT_ROOT.parent) == ["mt_defects"]


def test_mpdd_without_a_direct_link_says_where_to_get_it(tmp_path, capsys):
    from dskd.data.__main__ import main

    assert main(["download", "mpdd", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "github.com/stepanje/MPDD" in err and str(tmp_path / "MPDD.zip") in err


@pytest.mark.skipif(not (SHARED_DATA / "mpdd" / "metal_plate").is_dir(), reason="shared MPDD data absent")
def test_real_mpdd_loads_with_masks():
    assert categories("mpdd", SHARED_DATA) == ["metal_plate"]
    train = load_dataset("mpdd", SHARED_DATA, "metal_plate", "train", 64)
    test = load_dataset("mpdd", SHARED_DATA, "metal_plate", "test", 64)
    assert len(train) == 50 and len(test) == 111 and sum(test.labels) == 81 and test.has_masks
    assert sum(test[i]["mask"].sum() > 0 for i in range(len(test)) if test.samples[i].label) == 81


@pytest.mark.skipif(not (SHARED_DATA / "mvtec_ad" / "bottle").is_dir(), reason="shared bottle data absent")
def test_real_bottle_loads_its_official_masks():
    test = load_dataset("mvtec_ad", SHARED_DATA, "bottle", "test", 64)
    assert len(test) == 83 and sum(test.labels) == 63 and test.has_masks
    assert sum(test[i]["mask"].sum() > 0 for i in range(len(test)) if test.samples[i].label) == 63


@pytest.mark.skipif(not (SHARED_DATA / "mvtec_ad" / "bottle").is_dir(), reason="shared bottle data absent")
def test_real_bottle_without_ground_truth_is_image_level_only(tmp_path):
    """Many users' own data has no masks: a copy of bottle that links train/ and test/ but not ground_truth/."""
    copy = tmp_path / "mvtec_ad" / "bottle"
    copy.mkdir(parents=True)
    for sub in ("train", "test"):
        (copy / sub).symlink_to(SHARED_DATA / "mvtec_ad" / "bottle" / sub, target_is_directory=True)
    test = load_dataset("mvtec_ad", tmp_path, "bottle", "test", 64)
    assert len(test) == 83 and sum(test.labels) == 63 and not test.has_masks
    assert set(test.defect_types) == {"good", "broken_large", "broken_small", "contamination"}


def test_own_folder_dataset(tmp_path):
    root = tmp_path / "parts" / "washer"
    for sub, n in (("good", 10), ("scratch", 2), ("dent", 1)):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((40, 40, 3), 100 + i, np.uint8)).save(root / sub / f"{sub}{i}.png")
    assert categories("folder", tmp_path / "parts") == ["washer"]
    train = load_dataset("folder", tmp_path / "parts", "washer", "train", 32)
    test = load_dataset("folder", tmp_path / "parts", "washer", "test", 32)
    assert len(train) == 8 and len(test) == 2 + 3 and not test.has_masks  # seeded 80/20 of good/
    assert {s.path.name for s in train.samples}.isdisjoint(s.path.name for s in test.samples)
    (root / "ground_truth" / "scratch").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((40, 40), 255, np.uint8)).save(root / "ground_truth/scratch" / f"scratch{i}_mask.png")
    (root / "ground_truth" / "dent").mkdir()
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(root / "ground_truth/dent/dent0_mask.png")
    assert load_dataset("folder", tmp_path / "parts", "washer", "test", 32).has_masks
