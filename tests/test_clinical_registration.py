"""Rigid registration, plausibility flags and isotropic resampling."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from gliomaseg.clinical import isotropic_grid, read_nifti, register_rigid, resample
from gliomaseg.clinical.registration import (
    MAX_ROTATION_DEG, MAX_TRANSLATION_MM, RegistrationResult, flag_weak_metrics, plausibility_warnings,
)

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"


def euler(angles_deg=(0.0, 0.0, 0.0), translation=(0.0, 0.0, 0.0), center=(0.0, 0.0, 0.0)) -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetCenter(center)
    transform.SetRotation(*(math.radians(a) for a in angles_deg))
    transform.SetTranslation(translation)
    return transform


def result_with(transform, before=-0.3, after=-0.6) -> RegistrationResult:
    return RegistrationResult(transform, before, after, after, 10, "test")


def test_plausible_transform_has_no_warning():
    assert plausibility_warnings(result_with(euler((3.0, 0.0, 2.0), (4.0, 1.0, 0.0)))) == []


def test_large_rotation_flagged():
    warnings = plausibility_warnings(result_with(euler((0.0, 0.0, MAX_ROTATION_DEG + 5.0))))
    assert any("rotation" in w for w in warnings)


def test_large_translation_flagged():
    warnings = plausibility_warnings(result_with(euler(translation=(0.0, MAX_TRANSLATION_MM + 1.0, 0.0))))
    assert any("translation" in w for w in warnings)


def test_worse_metric_flagged():
    warnings = plausibility_warnings(result_with(euler(), before=-0.5, after=-0.2))
    assert any("worse" in w for w in warnings)


def test_weak_metric_among_modalities_flagged():
    results = {"t1": result_with(euler(), after=-0.6), "t2": result_with(euler(), after=-0.55),
               "flair": result_with(euler(), after=-0.1)}
    flag_weak_metrics(results)
    assert results["flair"].warnings
    assert results["t1"].warnings == []


def test_rotation_angle_and_manifest_entry():
    result = result_with(euler((0.0, 0.0, 7.0), (5.0, 0.0, 0.0)))
    entry = result.to_dict()
    assert result.rotation_angle_deg == pytest.approx(7.0)
    assert entry["translation_mm"] == pytest.approx([5.0, 0.0, 0.0])
    assert len(entry["parameters"]) == 6


def test_isotropic_grid_covers_reference_extent():
    reference = sitk.Image([256, 224, 26], sitk.sitkInt16)
    reference.SetSpacing((0.9, 0.9, 5.5))
    reference.SetOrigin((-100.0, -120.0, -30.0))
    grid = isotropic_grid(reference, 1.0)
    assert grid.GetSize() == (230, 202, 143)
    first_edge = np.asarray(grid.GetOrigin()) - 0.5
    assert first_edge == pytest.approx(np.asarray(reference.GetOrigin()) - np.array([0.45, 0.45, 2.75]))


def test_resample_nearest_keeps_voxel_type_linear_gives_float():
    image = sitk.Image([8, 8, 8], sitk.sitkInt16) + 5
    grid = isotropic_grid(image, 0.5)
    assert resample(image, grid, interpolation="nearest").GetPixelID() == sitk.sitkInt16
    assert resample(image, grid, interpolation="linear").GetPixelID() == sitk.sitkFloat32


def _brats_volume(modality: str) -> sitk.Image:
    files = sorted((DATA / "deepbrainseg_brats2018" / "brats").glob(f"Brats18_CBICA_AME_1/*_{modality}.nii.gz"))
    if not files:
        pytest.skip("BraTS 2018 case CBICA_AME_1 not found under ../shared/data")
    image = read_nifti(files[0])
    return sitk.Shrink(sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), 1.0), [2, 2, 2])


@pytest.mark.realdata
@pytest.mark.slow
def test_registration_recovers_known_rigid_transform():
    fixed = _brats_volume("t1ce")
    other = _brats_volume("t2")
    center = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
    truth = euler((4.0, -3.0, 5.0), (3.0, -4.0, 0.0), center)  # 7.07 degrees, 5 mm
    moving = sitk.Resample(other, fixed, truth, sitk.sitkLinear, 0.0)

    result = register_rigid(fixed, moving)

    # moving(x) = t2(truth(x)); registration finds T with fixed(x) ~ moving(T(x)) so truth o T ~ identity.
    composed = sitk.CompositeTransform([truth, result.transform])
    brain = np.argwhere(sitk.GetArrayFromImage(fixed) > 0)
    corners = [fixed.TransformIndexToPhysicalPoint([int(v) for v in p[::-1]])
               for p in (brain.min(axis=0), brain.max(axis=0))]
    errors = [np.linalg.norm(np.subtract(composed.TransformPoint(p), p)) for p in corners]
    residual = np.asarray(truth.GetMatrix()).reshape(3, 3) @ np.asarray(result.transform.GetMatrix()).reshape(3, 3)
    residual_deg = math.degrees(math.acos(np.clip((np.trace(residual) - 1) / 2, -1, 1)))
    assert max(errors) < 1.0
    assert residual_deg < 1.0
    assert result.metric_after < result.metric_before
    assert result.warnings == []
