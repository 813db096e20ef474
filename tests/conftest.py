from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MT_ROOT = SHARED_DATA / "mt_defects"
MT_SPLIT = MT_ROOT / "splits" / "differnet_train_free.txt"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root shared by the session; the synthetic data is generated into it on first use."""
    return tmp_path_factory.mktemp("data")


needs_mt = pytest.mark.skipif(not (MT_ROOT / "MT_Free").is_dir(), reason=f"MT Defects not found at {MT_ROOT}")
