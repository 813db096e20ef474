from __future__ import annotations

import os
import shutil
from pathlib import Path

# Tests side by side (run_tests.sh runs pytest-xdist, one worker per logical core) share the cores: each worker, and
# every process it starts (the command line, notebook kernels, Ray), computes on its share, never oversubscribing them.
if (_workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    for _name in ("DSKD_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_name, str(max(1, (os.cpu_count() or 1) // _workers)))

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MT_ROOT = SHARED_DATA / "mt_defects"
MT_SPLIT = MT_ROOT / "splits" / "differnet_train_free.txt"
BOTTLE = SHARED_DATA / "mvtec_ad" / "bottle"  # real MVTec AD images, with the official masks


if "DSKD_NUM_THREADS" in os.environ:
    torch.set_num_threads(int(os.environ["DSKD_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root shared by the whole test run; the synthetic data is generated into it on first use."""
    return tmp_path_factory.mktemp("data")


needs_bottle = pytest.mark.skipif(not (BOTTLE / "train" / "good").is_dir(), reason=f"{BOTTLE} not found")
needs_mt = pytest.mark.skipif(not (MT_ROOT / "MT_Free").is_dir(), reason=f"MT Defects not found at {MT_ROOT}")


@pytest.fixture
def mt(tmp_path) -> Path:
    """A tiny MT Defects layout: ten defect-free 30 x 50 images and one with a crack (masks beside them)."""
    imgs = tmp_path / "mt_defects" / "MT_Free" / "Imgs"
    imgs.mkdir(parents=True)
    for i in range(10):
        Image.fromarray(np.full((30, 50), 90, np.uint8)).save(imgs / f"f{i}.jpg")
        Image.fromarray(np.zeros((30, 50), np.uint8)).save(imgs / f"f{i}.png")
    crack = tmp_path / "mt_defects" / "MT_Crack" / "Imgs"
    crack.mkdir(parents=True)
    Image.fromarray(np.full((30, 50), 90, np.uint8)).save(crack / "c0.jpg")
    mask = np.zeros((30, 50), np.uint8)
    mask[10:20, 5:15] = 255
    Image.fromarray(mask).save(crack / "c0.png")
    return tmp_path


@pytest.fixture
def bottle(tmp_path) -> Path:
    """A small copy of the real bottle category without its masks: 24 training images, 4 good and 4 broken test
    images (no ground_truth/, like many users' own data)."""
    root = tmp_path / "mvtec_ad" / "bottle"
    picks = {"train/good": 24, "test/good": 4, "test/broken_large": 4}
    for sub, n in picks.items():
        (root / sub).mkdir(parents=True)
        for p in sorted((BOTTLE / sub).glob("*.png"))[:n]:
            shutil.copy(p, root / sub / p.name)
    return tmp_path / "mvtec_ad"


def tiny_saved_maps(n=4, s=32, masks=True, students=("se", "sd")):
    """A small saved-maps archive with random maps, for tests that fuse or read archives."""
    from dskd.model.config import ModelConfig
    from dskd.run import archive

    rng = np.random.default_rng(0)
    maps = rng.random((n, s, s)).astype(np.float32)
    return archive.SavedMaps(
        images=rng.integers(0, 255, (n, s, s, 3), dtype=np.uint8),
        masks=(rng.random((n, s, s)) > 0.9) if masks else None, labels=np.array([0, 1] * (n // 2)),
        scores=maps.reshape(n, -1).max(1), maps=maps.astype(np.float16), paths=[f"{i}.png" for i in range(n)],
        defect_types=["good", "hole"] * (n // 2), threshold=0.25,
        per_student={k: maps.astype(np.float16) for k in students},
        per_scale={k: [maps[:, ::f, ::f] for f in (4, 8, 16)] for k in students},
        norm=np.ones((len(students), 2, 3), np.float32),
        fusion=archive.SavedMaps.fusion_of(ModelConfig(student_fusion="max", sigma=2.0)))
