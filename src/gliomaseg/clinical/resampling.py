"""Resampling onto an isotropic grid covering the reference's extent."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from gliomaseg.clinical.errors import ConversionError

INTERPOLATORS = {"nearest": sitk.sitkNearestNeighbor, "linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}


def isotropic_grid(reference: sitk.Image, spacing: float = 1.0) -> sitk.Image:
    """Return an empty image whose grid covers the reference's field of view at `spacing` mm.

    The direction is the reference's; the size along each axis is the reference's extent
    (voxels x spacing) divided by `spacing`, rounded; the outer voxel edges coincide with
    the reference's at the first corner.

    Raises:
        ConversionError: `spacing` is not positive.
    """
    if spacing <= 0:
        raise ConversionError(f"spacing {spacing} mm is invalid; give a positive spacing such as 1.0.")
    old_spacing = np.asarray(reference.GetSpacing())
    extent = np.asarray(reference.GetSize()) * old_spacing
    size = [max(1, int(round(e / spacing))) for e in extent]
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    origin = np.asarray(reference.GetOrigin()) + direction @ ((spacing - old_spacing) / 2.0)
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing((spacing,) * 3)
    grid.SetDirection(reference.GetDirection())
    grid.SetOrigin(tuple(float(o) for o in origin))
    return grid


def resample(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None = None,
             interpolation: str = "nearest") -> sitk.Image:
    """Resample `image` onto `grid`; voxels that fall outside `image` become 0.

    `transform` maps grid (reference) points to `image` points (identity by default), as
    returned by rigid registration. Nearest neighbour keeps the voxel type; linear and
    B-spline interpolation return float32.

    Raises:
        ConversionError: unknown interpolation name.
    """
    if interpolation not in INTERPOLATORS:
        raise ConversionError(f"interpolation {interpolation!r} is not one of {', '.join(INTERPOLATORS)}.")
    pixel_type = image.GetPixelID() if interpolation == "nearest" else sitk.sitkFloat32
    source = image if interpolation == "nearest" else sitk.Cast(image, sitk.sitkFloat32)
    return sitk.Resample(source, grid, transform or sitk.Transform(), INTERPOLATORS[interpolation], 0.0, pixel_type)
