"""The data layer on the real cases under ../shared/data (skipped where absent)."""

import nibabel as nib
import numpy as np
import pytest

from conftest import BRATS2018, SHARED_DATA, require_data
from gliomaseg.data.cases import discover_cases
from gliomaseg.data.io import load_volume, save_label_map
from gliomaseg.data.labels import to_model_classes
from gliomaseg.data.preprocessing import preprocess_case
from gliomaseg.data.validate import validate_path

BRATS_LAYOUT_FOLDERS = [
    BRATS2018,
    SHARED_DATA / "brainlesion_tutorials" / "BraTS-GLI-00001-000",
    SHARED_DATA / "brainlesion_tutorials" / "TCGA-DU-7294_brats_space" / "raw_bet",
    SHARED_DATA / "brainlesion_tutorials" / "OtherEXampleFromTCIA_brats_space" / "raw_bet",
]


@pytest.mark.realdata
@pytest.mark.parametrize("folder", BRATS_LAYOUT_FOLDERS, ids=lambda p: p.parent.name + "/" + p.name)
def test_real_brats_layout_cases_validate(folder):
    reports = validate_path(require_data(folder))
    assert reports
    for report in reports:
        assert report.usable, report.problems
        assert report.shape == (240, 240, 155)
        assert report.orientation == "LPS"
    if folder == BRATS2018:
        assert len(reports) == 14
        assert all(r.label_values == (0, 1, 2, 4) for r in reports)


@pytest.mark.realdata
def test_real_geometry_round_trips(tmp_path):
    case = discover_cases(require_data(BRATS2018))[0]
    reference = load_volume(case.images["flair"].path)
    out = save_label_map(np.zeros(reference.shape, np.uint8), reference, tmp_path / "seg.nii.gz")
    written, original = nib.load(out), nib.load(case.images["flair"].path)
    assert np.array_equal(written.affine, original.affine)
    assert np.array_equal(written.get_qform(), original.get_qform())
    assert np.array_equal(written.get_sform(), original.get_sform())
    assert written.header["qform_code"] == original.header["qform_code"]
    assert written.header["sform_code"] == original.header["sform_code"]


@pytest.mark.realdata
def test_real_preprocessing_inverse_voxel_for_voxel():
    case = discover_cases(require_data(BRATS2018))[1]
    result = preprocess_case(case)
    restored = result.geometry.restore(result.label)
    original = to_model_classes(np.asanyarray(nib.load(case.label_path).dataobj), "brats2017")
    assert restored.shape == original.shape
    assert np.array_equal(restored, original)
    flair = np.asanyarray(nib.load(case.images["flair"].path).dataobj)
    brain_restored = result.geometry.restore(result.brain_mask)
    assert np.array_equal(brain_restored[flair != 0], np.ones(int((flair != 0).sum()), bool))
