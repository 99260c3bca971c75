"""Brain masks and label maps brought onto an image's voxel grid, and skull removal."""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from gliomaseg.clinical.errors import ConversionError

log = logging.getLogger(__name__)

# Two grids are the same when spacings differ by less than GRID_TOLERANCE of the smallest
# voxel size, direction cosines by less than GRID_TOLERANCE and origins by less than
# ORIGIN_TOLERANCE_VOXELS of the smallest voxel size. A NIfTI sform stored as float32
# differs from the qform by about 1e-6, which these tolerances absorb.
GRID_TOLERANCE = 1e-3
ORIGIN_TOLERANCE_VOXELS = 0.1


def same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = GRID_TOLERANCE) -> bool:
    """Return whether two images have the same size and, within `tolerance`, the same geometry."""
    if a.GetSize() != b.GetSize():
        return False
    spacing_a, spacing_b = np.asarray(a.GetSpacing()), np.asarray(b.GetSpacing())
    if np.abs(spacing_a - spacing_b).max() > tolerance * spacing_a.min():
        return False
    if np.abs(np.asarray(a.GetOrigin()) - np.asarray(b.GetOrigin())).max() > ORIGIN_TOLERANCE_VOXELS * spacing_a.min():
        return False
    return float(np.abs(np.asarray(a.GetDirection()) - np.asarray(b.GetDirection())).max()) <= tolerance


def onto_grid(image: sitk.Image, like: sitk.Image, name: str) -> sitk.Image:
    """Return a mask or label map on the voxel grid of `like`, by nearest neighbour where grids differ.

    A file on the same grid (within `GRID_TOLERANCE`) only receives `like`'s exact geometry,
    so float rounding in its header does not trigger resampling.

    Raises:
        ConversionError: the result has no non-zero voxel, so the file does not overlap `like`.
    """
    if same_grid(image, like):
        result = sitk.Image(image)
        result.CopyInformation(like)
    else:
        log.info("%s: on a different voxel grid than its image; resampling it by nearest neighbour", name)
        result = sitk.Resample(image, like, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())
    if not np.any(sitk.GetArrayViewFromImage(result)):
        raise ConversionError(
            f"{name}: contains no non-zero voxel inside the image it belongs to; check that it was drawn on that scan."
        )
    return result


def binary_mask(mask: sitk.Image) -> sitk.Image:
    """Return a uint8 image that is 1 where `mask` is non-zero and 0 elsewhere."""
    return sitk.Cast(mask != 0, sitk.sitkUInt8)


def apply_mask(image: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """Set voxels outside the mask (zero voxels of `mask`, same grid as `image`) to 0; keep the voxel type."""
    mask = binary_mask(mask)
    mask.CopyInformation(image)
    return sitk.Mask(image, mask, outsideValue=0)


def mask_fraction(mask: sitk.Image) -> float:
    """Return the fraction of voxels that are non-zero."""
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) / float(np.prod(mask.GetSize()))
