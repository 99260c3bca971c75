"""Metrics on small arrays: values computed by hand, HD95 with anisotropic spacing, empty masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import cdist

from gliomaseg.data.labels import LabelError, convert_labels
from gliomaseg.evaluation import HD95_ONE_EMPTY_MM, dice, evaluate_case, hd95, infer_schema, sensitivity, specificity


def _masks_3x4() -> tuple[np.ndarray, np.ndarray]:
    # 12 voxels: reference 4 voxels, prediction 5 voxels, 3 in common.
    ref = np.zeros((3, 4), dtype=bool)
    ref[0, 0:4] = True
    pred = np.zeros((3, 4), dtype=bool)
    pred[0, 1:4] = True
    pred[1, 0:2] = True
    return pred, ref


def test_dice_hand_computed():
    pred, ref = _masks_3x4()
    assert dice(pred, ref) == pytest.approx(2 * 3 / (5 + 4))


def test_sensitivity_hand_computed():
    pred, ref = _masks_3x4()
    assert sensitivity(pred, ref) == pytest.approx(3 / 4)


def test_specificity_hand_computed():
    pred, ref = _masks_3x4()
    # 8 negatives in the reference, 2 of them predicted: 6 true negatives.
    assert specificity(pred, ref) == pytest.approx(6 / 8)


def test_metrics_reject_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


def _cube(shape, start, size) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_hd95_shifted_cube_anisotropic_spacing(axis):
    spacing = (2.0, 0.5, 1.25)
    shift = 3
    start = [8, 8, 8]
    ref = _cube((32, 32, 32), start, 10)
    start[axis] += shift
    pred = _cube((32, 32, 32), start, 10)
    # The face of one cube farthest from the other lies `shift` voxels from the other cube's
    # surface, and that face contains 100 of the 488 surface voxels, more than the top 5 %.
    assert hd95(pred, ref, spacing) == pytest.approx(shift * spacing[axis], abs=1e-5)


def _brute_force_hd95(pred, ref, spacing) -> float:
    def surface(mask):
        return np.argwhere(mask & ~binary_erosion(mask, border_value=0)) * np.asarray(spacing)

    distances = cdist(surface(pred), surface(ref))
    forward = np.percentile(distances.min(axis=1), 95)
    backward = np.percentile(distances.min(axis=0), 95)
    return float(max(forward, backward))


def test_hd95_matches_brute_force_on_blobs():
    rng = np.random.default_rng(3)
    grid = np.indices((30, 26, 20)).astype(float)
    spacing = (1.0, 1.5, 3.0)
    for _ in range(3):
        centre_a, centre_b = rng.uniform(8, 16, size=(2, 3))
        radius_a, radius_b = rng.uniform(3, 7, size=2)
        ref = ((grid - centre_a[:, None, None, None]) ** 2).sum(axis=0) < radius_a**2
        pred = ((grid - centre_b[:, None, None, None]) ** 2).sum(axis=0) < radius_b**2
        assert hd95(pred, ref, spacing) == pytest.approx(_brute_force_hd95(pred, ref, spacing), rel=1e-5)


def test_hd95_identical_masks_is_zero():
    mask = _cube((12, 12, 12), (2, 3, 4), 5)
    assert hd95(mask, mask, (1.0, 2.0, 3.0)) == 0.0


def test_hd95_rejects_wrong_spacing():
    mask = _cube((8, 8, 8), (2, 2, 2), 3)
    with pytest.raises(ValueError, match="spacing"):
        hd95(mask, mask, (1.0, 0.0, 1.0))


def test_one_empty_constant_is_brats_grid_diagonal():
    assert HD95_ONE_EMPTY_MM == pytest.approx(math.sqrt(240**2 + 240**2 + 155**2), abs=0.005)


def test_both_empty_conventions():
    empty = np.zeros((6, 6, 6), dtype=bool)
    assert dice(empty, empty) == 1.0
    assert hd95(empty, empty) == 0.0
    assert sensitivity(empty, empty) == 1.0
    assert specificity(empty, empty) == 1.0


def test_empty_prediction_conventions():
    empty = np.zeros((6, 6, 6), dtype=bool)
    ref = _cube((6, 6, 6), (1, 1, 1), 2)
    assert dice(empty, ref) == 0.0
    assert hd95(empty, ref) == HD95_ONE_EMPTY_MM
    assert sensitivity(empty, ref) == 0.0
    assert specificity(empty, ref) == 1.0


def test_empty_reference_conventions():
    empty = np.zeros((6, 6, 6), dtype=bool)
    pred = _cube((6, 6, 6), (1, 1, 1), 2)
    assert dice(pred, empty) == 0.0
    assert hd95(pred, empty) == HD95_ONE_EMPTY_MM
    assert sensitivity(pred, empty) == 0.0
    assert specificity(pred, empty) == pytest.approx((216 - 8) / 216)


def _label_map() -> np.ndarray:
    """A 20^3 BraTS 2017 label map: edema shell, necrotic core, enhancing rim voxels."""
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[4:14, 4:14, 4:14] = 2
    labels[6:12, 6:12, 6:12] = 4
    labels[8:10, 8:10, 8:10] = 1
    return labels


def test_evaluate_case_identical_maps():
    labels = _label_map()
    scores = evaluate_case(labels, labels, (1.0, 1.0, 1.0))
    for region in ("whole_tumor", "tumor_core", "enhancing_tumor"):
        assert scores[region]["dice"] == 1.0
        assert scores[region]["hd95"] == 0.0


def test_evaluate_case_mixed_schemas():
    ref = _label_map()
    pred = convert_labels(ref, "brats2017", "brats2023")
    scores = evaluate_case(pred, ref, pred_schema="brats2023", ref_schema="brats2020")
    assert scores["enhancing_tumor"]["dice"] == 1.0
    assert scores["tumor_core"]["dice"] == 1.0
    assert scores["whole_tumor"]["dice"] == 1.0


def test_evaluate_case_msd_against_brats():
    ref = _label_map()
    pred = convert_labels(ref, "brats2017", "msd")
    scores = evaluate_case(pred, ref, pred_schema="msd", ref_schema="brats2017")
    assert scores["tumor_core"]["dice"] == 1.0
    assert scores["enhancing_tumor"]["dice"] == 1.0


def test_evaluate_case_region_values_by_hand():
    ref = _label_map()
    pred = ref.copy()
    pred[pred == 4] = 1  # every enhancing voxel predicted as necrotic core
    scores = evaluate_case(pred, ref, (1.0, 1.0, 2.0))
    assert scores["whole_tumor"]["dice"] == 1.0
    assert scores["tumor_core"]["dice"] == 1.0
    assert scores["enhancing_tumor"]["dice"] == 0.0
    assert scores["enhancing_tumor"]["hd95"] == HD95_ONE_EMPTY_MM
    assert scores["enhancing_tumor"]["volume_ref_ml"] == pytest.approx((216 - 8) * 2.0 / 1000)


def test_evaluate_case_specificity_counts_whole_volume():
    ref = _label_map()
    pred = ref.copy()
    pred[0, 0, 0] = 2  # one false positive far from the tumor
    scores = evaluate_case(pred, ref)
    negatives = 20**3 - 1000
    assert scores["whole_tumor"]["specificity"] == pytest.approx((negatives - 1) / negatives)
    assert scores["tumor_core"]["specificity"] == 1.0


def test_evaluate_case_rejects_undefined_label():
    ref = _label_map()
    pred = ref.copy()
    pred[0, 0, 0] = 3  # not a BraTS 2017 value
    with pytest.raises(LabelError):
        evaluate_case(pred, ref, pred_schema="brats2017")


@pytest.mark.parametrize(
    ("values", "expected", "ambiguous"),
    [
        ([0, 1, 2, 4], "brats2017", False),
        ([0, 1, 2], "brats2017", False),
        ([0, 1, 2, 3, 4], "brats2013", False),
        ([0, 1, 2, 3], "brats2023", True),
    ],
)
def test_infer_schema_from_values(values, expected, ambiguous):
    schema, is_ambiguous = infer_schema(np.asarray(values))
    assert schema.name == expected
    assert is_ambiguous is ambiguous
