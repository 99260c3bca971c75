"""Conversion of real clinical scans: a skull-on TCGA exam on four grids and a sagittal DICOM MPRAGE."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from gliomaseg.clinical import convert_case, read_nifti, reorient_to_brats, write_nifti
from gliomaseg.clinical.masks import onto_grid
from gliomaseg.clinical.registration import evaluate_metric
from gliomaseg.data.cases import discover_cases

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
TCGA = DATA / "brats_toolkit" / "TCGA-FG-6692"
TCGA_TAGS = {"t1": "t1", "t1c": "t1c", "t2": "t2", "flair": "fla"}

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def tcga_half_resolution(tmp_path_factory) -> dict[str, Path]:
    """The raw skull-on scans and their brain masks, shrunk 2x in-plane to keep the test fast."""
    if not (TCGA / "raw_native").is_dir():
        pytest.skip("brats_toolkit/TCGA-FG-6692/raw_native not found under ../shared/data")
    folder = tmp_path_factory.mktemp("tcga")
    paths = {}
    for modality, tag in TCGA_TAGS.items():
        image = read_nifti(next((TCGA / "raw_native").glob(f"*_{tag}.nii.gz")))
        mask = onto_grid(read_nifti(next((TCGA / "masks_hdbet_native-space").glob(f"*_{tag}.nii.gz"))), image, tag)
        paths[modality] = write_nifti(sitk.Shrink(image, [2, 2, 1]), folder / f"{modality}.nii.gz")
        shrunk_mask = sitk.Resample(mask, sitk.Shrink(image, [2, 2, 1]), sitk.Transform(), sitk.sitkNearestNeighbor)
        paths[f"{modality}_mask"] = write_nifti(shrunk_mask, folder / f"{modality}_mask.nii.gz")
    return paths


@pytest.fixture(scope="module")
def tcga_case(tcga_half_resolution, tmp_path_factory):
    paths = tcga_half_resolution
    output = tmp_path_factory.mktemp("converted") / "TCGA-FG-6692"
    result = convert_case({m: paths[m] for m in TCGA_TAGS}, output, masks={m: paths[f"{m}_mask"] for m in TCGA_TAGS},
                          spacing=2.0)
    return result


def test_tcga_case_is_co_registered_and_skull_stripped(tcga_case):
    cases = discover_cases(tcga_case.output_dir)
    assert cases[0].modalities == ("t1", "t1c", "t2", "flair")
    assert tcga_case.manifest["skull_stripped"] is True
    assert nib.aff2axcodes(nib.load(tcga_case.files["t2"]).affine) == ("L", "P", "S")
    assert nib.load(tcga_case.files["t2"]).header.get_zooms() == pytest.approx((2.0, 2.0, 2.0))
    assert tcga_case.warnings == []


def test_tcga_mutual_information_improves(tcga_case):
    for modality in ("t1", "t2", "flair"):
        registration = tcga_case.registrations[modality]
        assert registration.metric_after < registration.metric_before - 0.1, modality


def test_tcga_brain_masks_overlap_after_registration(tcga_case, tcga_half_resolution):
    paths = tcga_half_resolution
    reference_mask = reorient_to_brats(read_nifti(paths["t1c_mask"]))
    for modality in ("t1", "t2", "flair"):
        mask = reorient_to_brats(read_nifti(paths[f"{modality}_mask"]))
        before = sitk.Resample(mask, reference_mask, sitk.Transform(), sitk.sitkNearestNeighbor)
        after = sitk.Resample(mask, reference_mask, tcga_case.registrations[modality].transform,
                              sitk.sitkNearestNeighbor)
        ref = sitk.GetArrayFromImage(reference_mask) > 0
        dice_before = dice(sitk.GetArrayFromImage(before) > 0, ref)
        dice_after = dice(sitk.GetArrayFromImage(after) > 0, ref)
        assert dice_after > 0.95, modality
        assert dice_after > dice_before, modality


def test_tcga_metric_helper_agrees_with_result(tcga_case, tcga_half_resolution):
    paths = tcga_half_resolution
    fixed = reorient_to_brats(read_nifti(paths["t1c"]))
    moving = reorient_to_brats(read_nifti(paths["t2"]))
    registration = tcga_case.registrations["t2"]
    fixed = sitk.Mask(fixed, sitk.Cast(onto_grid(reorient_to_brats(read_nifti(paths["t1c_mask"])), fixed, "m"), sitk.sitkUInt8))
    moving = sitk.Mask(moving, sitk.Cast(onto_grid(reorient_to_brats(read_nifti(paths["t2_mask"])), moving, "m"), sitk.sitkUInt8))
    assert evaluate_metric(fixed, moving, registration.transform) == pytest.approx(registration.metric_after, abs=1e-6)


def test_dicom_mprage_converts_to_1mm_axial(tmp_path):
    folder = DATA / "dicom_nichart_trio_b17"
    if not folder.is_dir():
        pytest.skip("dicom_nichart_trio_b17 not found under ../shared/data")
    result = convert_case({"t1c": folder}, tmp_path / "mprage", missing="substitute",
                          substitutions={"t1": "t1c", "t2": "t1c", "flair": "t1c"})
    nifti = nib.load(result.files["t1c"])
    assert nifti.shape == (176, 256, 256)
    assert nifti.header.get_zooms() == pytest.approx((1.0, 1.0, 1.0))
    assert nib.aff2axcodes(nifti.affine) == ("L", "P", "S")
    assert result.manifest["modalities"]["t1c"]["source"]["slices"] == 176
    assert result.manifest["modalities"]["t1c"]["converted_grid"]["orientation"] == "PIR"
