"""Patch augmentation: output shapes, reproducibility, no emptied borders, 2D stays in-plane."""

from __future__ import annotations

import numpy as np
import pytest

from gliomaseg.data.augmentation import PatchAugmentation, SpatialDraw

SPATIAL_ONLY = {
    "rotation": {"prob": 1.0, "degrees": 30.0, "axes": "all"},
    "scaling": {"prob": 1.0, "range": [0.7, 1.3]},
    "elastic": {"prob": 1.0, "spacing": [8.0, 8.0], "sigma": [3.0, 4.0], "magnitude": [1.0, 2.0]},
}
ALL_TRANSFORMS = {
    **SPATIAL_ONLY,
    "flip": {"prob": 0.5, "axes": [0, 1, 2]},
    "brightness": {"prob": 1.0, "range": [0.7, 1.5]},
    "gamma": {"prob": 1.0, "range": [0.5, 2.0]},
    "noise": {"prob": 1.0, "std": 0.1},
    "blur": {"prob": 1.0, "sigma": [0.5, 1.5]},
}


def _region(augmentation: PatchAugmentation, draw: SpatialDraw, fill: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    shape = tuple(p + 2 * m for p, m in zip(augmentation.patch_size, augmentation.margin(draw)))
    image = np.full((3, *shape), fill, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[tuple(slice(s // 4, 3 * s // 4) for s in shape)] = 2
    return image, label


@pytest.mark.parametrize("patch_size", [(1, 16, 16), (6, 16, 16)])
def test_augmentation_returns_patch_shape_and_dtypes(patch_size):
    augmentation = PatchAugmentation(patch_size, ALL_TRANSFORMS)
    draw = augmentation.draw(np.random.default_rng(0))
    image, label = augmentation(*_region(augmentation, draw), draw)
    assert image.shape == (3, *patch_size)
    assert label.shape == patch_size
    assert image.dtype == np.float32
    assert label.dtype == np.uint8


@pytest.mark.parametrize("patch_size", [(1, 16, 16), (6, 16, 16)])
def test_spatial_augmentation_never_pulls_in_border(patch_size):
    # Every region voxel is 1, so a zero in the patch would come from outside the region.
    augmentation = PatchAugmentation(patch_size, SPATIAL_ONLY)
    rng = np.random.default_rng(1)
    for _ in range(8):
        draw = augmentation.draw(rng)
        image, _ = augmentation(*_region(augmentation, draw), draw)
        assert draw.moves_voxels
        assert float(image.min()) > 0.99


def test_augmentation_is_reproducible_from_draw():
    augmentation = PatchAugmentation((4, 12, 12), ALL_TRANSFORMS)
    draw = augmentation.draw(np.random.default_rng(2))
    region = _region(augmentation, draw)
    first = augmentation(*region, draw)
    second = augmentation(*region, draw)
    assert np.array_equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])


def test_label_keeps_only_input_classes():
    augmentation = PatchAugmentation((4, 12, 12), ALL_TRANSFORMS)
    rng = np.random.default_rng(3)
    for _ in range(4):
        draw = augmentation.draw(rng)
        _, label = augmentation(*_region(augmentation, draw), draw)
        assert set(np.unique(label).tolist()) <= {0, 2}


def test_2d_draw_rotates_in_plane_only():
    augmentation = PatchAugmentation((1, 16, 16), SPATIAL_ONLY)
    draw = augmentation.draw(np.random.default_rng(4))
    assert draw.angles[1:] == (0.0, 0.0)
    assert augmentation.margin(draw)[0] == 0


def test_2d_augmentation_keeps_slices_apart():
    # A 2D patch must come from its own slice: a depth margin would mix slices.
    augmentation = PatchAugmentation((1, 16, 16), ALL_TRANSFORMS)
    draw = augmentation.draw(np.random.default_rng(5))
    image, _ = _region(augmentation, draw)
    assert image.shape[1] == 1


def test_margin_grows_with_rotation_and_zoom_out():
    augmentation = PatchAugmentation((1, 32, 32), SPATIAL_ONLY)
    still = augmentation.margin(SpatialDraw())
    rotated = augmentation.margin(SpatialDraw(angles=(0.5, 0.0, 0.0)))
    zoomed_out = augmentation.margin(SpatialDraw(zoom=0.5))
    assert still == (0, 0, 0)
    assert rotated[1] >= 7
    assert zoomed_out[1] >= 16


def test_disabled_augmentation_leaves_patch_unchanged():
    augmentation = PatchAugmentation((2, 8, 8), {"enabled": False, **ALL_TRANSFORMS})
    draw = augmentation.draw(np.random.default_rng(6))
    image = np.random.default_rng(7).random((3, 2, 8, 8), dtype=np.float32)
    label = np.ones((2, 8, 8), dtype=np.uint8)
    out_image, out_label = augmentation(image, label, draw)
    assert np.array_equal(out_image, image)
    assert np.array_equal(out_label, label)


def test_wrong_region_shape_is_rejected():
    augmentation = PatchAugmentation((2, 8, 8), SPATIAL_ONLY)
    draw = SpatialDraw(zoom=0.5)
    with pytest.raises(ValueError, match="region"):
        augmentation(np.zeros((3, 2, 8, 8), np.float32), np.zeros((2, 8, 8), np.uint8), draw)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"mirror": {"prob": 0.5}}, "unknown augmentation"),
        ({"noise": {"prob": 1.5}}, "probability"),
        ({"scaling": {"prob": 0.5, "range": [1.2, 0.8]}}, "min <= max"),
        ({"rotation": {"prob": 0.5, "axes": "sideways"}}, "in_plane or all"),
    ],
)
def test_invalid_configuration_is_rejected(config, message):
    with pytest.raises(ValueError, match=message):
        PatchAugmentation((1, 8, 8), config)
