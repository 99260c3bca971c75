"""Shared fixtures: paths to the real data and small synthetic cases."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BRATS2018 = SHARED_DATA / "deepbrainseg_brats2018" / "brats"


def require_data(path: Path) -> Path:
    """Return `path`, or skip the test when the real data folder is absent."""
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent")
    return path


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """Four small BraTS 2017-layout synthetic cases (64x64x40 voxels)."""
    from gliomaseg.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), 4, seed=1)
