"""Real BraTS-space segmentations: one BraTS 2020 algorithm's output scored against another's.

The files are outputs of segmentation algorithms, not ground truth; they serve as two real
label maps on the 240 x 240 x 155 BraTS grid (labels 0, 1, 2, 4).
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gliomaseg.evaluation import evaluate_folders

pytestmark = pytest.mark.realdata

SEGMENTATIONS = (
    Path(__file__).parents[1] / ".." / "shared" / "data" / "brainlesion_tutorials" / "TCGA-DU-7294_brats_space"
    / "segmentation"
)
REGION_VALUES = {"whole_tumor": (1, 2, 4), "tumor_core": (1, 4), "enhancing_tumor": (4,)}


def _numpy_dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """A prediction folder (isen-20) and a flat reference folder (hnfnetv1-20), as links."""
    prediction = SEGMENTATIONS / "isen-20.nii.gz"
    reference = SEGMENTATIONS / "hnfnetv1-20.nii.gz"
    if not (prediction.is_file() and reference.is_file()):
        pytest.skip(f"real segmentations not available under {SEGMENTATIONS}")
    root = tmp_path_factory.mktemp("realdata")
    (root / "pred").mkdir()
    (root / "ref").mkdir()
    os.symlink(prediction.resolve(), root / "pred" / "TCGA-DU-7294.nii.gz")
    os.symlink(reference.resolve(), root / "ref" / "TCGA-DU-7294_seg.nii.gz")
    return root / "pred", root / "ref"


def test_dice_matches_numpy_on_real_segmentations(folders):
    prediction_folder, reference_folder = folders
    results, _ = evaluate_folders(prediction_folder, reference_folder, progress=False)
    assert len(results) == 1
    result = results[0]
    assert result.status == "ok"

    prediction = np.asarray(nib.load(str(SEGMENTATIONS / "isen-20.nii.gz")).dataobj)
    reference = np.asarray(nib.load(str(SEGMENTATIONS / "hnfnetv1-20.nii.gz")).dataobj)
    for region, values in REGION_VALUES.items():
        expected = _numpy_dice(np.isin(prediction, values), np.isin(reference, values))
        assert result.scores[region]["dice"] == pytest.approx(expected, abs=1e-12), region


def test_hd95_finite_and_positive_on_real_segmentations(folders):
    prediction_folder, reference_folder = folders
    results, _ = evaluate_folders(prediction_folder, reference_folder, progress=False)
    whole_tumor = results[0].scores["whole_tumor"]
    assert 0.0 < whole_tumor["hd95"] < 50.0
    assert whole_tumor["volume_pred_ml"] == pytest.approx(
        np.count_nonzero(np.asarray(nib.load(str(SEGMENTATIONS / "isen-20.nii.gz")).dataobj)) / 1000.0
    )
