import itertools

import nibabel as nib
import numpy as np
import pytest

from gliomaseg.data.cases import discover_cases
from gliomaseg.data.io import Volume
from gliomaseg.data.preprocessing import CaseGeometry, brain_bounding_box, preprocess_case, zscore_over_mask
from gliomaseg.data.synthetic import make_synthetic_case


def _permuted_affine(permutation, flips):
    affine = np.eye(4)
    affine[:3, :3] = 0
    for array_axis, (world_axis, flip) in enumerate(zip(permutation, flips)):
        affine[world_axis, array_axis] = flip * (array_axis + 1.0)
    return affine


@pytest.mark.parametrize("permutation", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("flips", list(itertools.product([1, -1], repeat=3)))
def test_reorientation_inverse_exact(permutation, flips):
    affine = _permuted_affine(permutation, flips)
    array = np.random.default_rng(0).random((5, 6, 7))
    orientation = nib.orientations.io_orientation(affine)
    geometry = CaseGeometry(Volume(None, affine, nib.Nifti1Header()), array.shape, orientation, (slice(0, 0),) * 3)
    canonical = geometry.to_canonical(array)
    geometry.bbox = (slice(1, 3), slice(0, canonical.shape[1]), slice(2, canonical.shape[2]))
    restored = geometry.restore(geometry.crop(canonical), fill=-1)
    kept = geometry.restore(np.ones(geometry.cropped_shape), fill=0).astype(bool)
    assert np.array_equal(restored[kept], array[kept])
    assert np.all(restored[~kept] == -1)


@pytest.mark.parametrize("permutation", list(itertools.permutations(range(3))))
def test_depth_axis_is_superior(permutation):
    affine = _permuted_affine(permutation, (1, -1, 1))
    orientation = nib.orientations.io_orientation(affine)
    geometry = CaseGeometry(Volume(None, affine, nib.Nifti1Header()), (5, 6, 7), orientation, (slice(0, 0),) * 3)
    superior_axis = permutation.index(2)
    assert geometry.spacing_dhw[0] == superior_axis + 1.0


def test_restore_moves_channels_last():
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    orientation = nib.orientations.io_orientation(affine)
    geometry = CaseGeometry(Volume(None, affine, nib.Nifti1Header()), (4, 5, 6), orientation, (slice(0, 6), slice(0, 5), slice(0, 4)))
    probabilities = np.random.default_rng(1).random((4, 6, 5, 4))
    restored = geometry.restore(probabilities)
    assert restored.shape == (4, 5, 6, 4)
    assert np.array_equal(restored[..., 2], geometry.restore(probabilities[2]))


def test_bounding_box():
    mask = np.zeros((5, 6, 7), bool)
    mask[1:3, 2, 4:6] = True
    assert brain_bounding_box(mask) == (slice(1, 3), slice(2, 3), slice(4, 6))


def test_zscore_over_mask():
    image = np.array([[0.0, 2.0, 4.0, 6.0]])
    mask = image > 0
    out = zscore_over_mask(image, mask)
    assert out[0, 0] == 0
    assert np.isclose(out[mask].mean(), 0, atol=1e-6)
    assert np.isclose(out[mask].std(), 1, atol=1e-6)


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "LSA", "PIR"])
def test_preprocessing_independent_of_storage_orientation(tmp_path, orientation):
    reference = preprocess_case(discover_cases(make_synthetic_case(tmp_path / "ref", "P", shape=(24, 20, 16)))[0])
    case = discover_cases(make_synthetic_case(tmp_path / orientation, "P", shape=(24, 20, 16), orientation=orientation))[0]
    result = preprocess_case(case)
    assert np.array_equal(result.image, reference.image)
    assert np.array_equal(result.label, reference.label)


def test_preprocessed_label_restores_to_file(tmp_path):
    folder = make_synthetic_case(tmp_path, "P", shape=(24, 20, 16), orientation="LSA")
    case = discover_cases(folder)[0]
    result = preprocess_case(case)
    restored = result.geometry.restore(result.label)
    original = np.asanyarray(nib.load(case.label_path).dataobj)
    from gliomaseg.data.labels import to_model_classes

    assert restored.shape == original.shape
    assert np.array_equal(restored, to_model_classes(original, "brats2017"))


def test_channel_order_default_flair_t1c_t2(tmp_path):
    case = discover_cases(make_synthetic_case(tmp_path, "P", shape=(24, 20, 16)))[0]
    result = preprocess_case(case)
    assert result.channels == ("flair", "t1c", "t2")
    flair_only = preprocess_case(case, channels=("flair",))
    assert np.array_equal(result.image[0], flair_only.image[0])


def test_outside_brain_is_zero(tmp_path):
    case = discover_cases(make_synthetic_case(tmp_path, "P", shape=(24, 20, 16)))[0]
    result = preprocess_case(case)
    assert np.all(result.image[:, ~result.brain_mask] == 0)
