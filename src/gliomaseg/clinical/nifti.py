"""NIfTI reading and writing for the conversion pipeline, with geometry taken from nibabel.

SimpleITK images carry geometry in LPS world coordinates (origin, spacing, direction);
NIfTI affines are in RAS world coordinates. The conversion between the two flips the
first two world axes. Reading goes through nibabel so that the affine nibabel reports
(the sform where its code is set, otherwise the qform) is the geometry used, and a
sheared affine is rejected instead of being silently approximated.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from gliomaseg.clinical.errors import ConversionError
from gliomaseg.data.io import write_nifti_atomic

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | os.PathLike) -> bool:
    """Return whether the file name ends in .nii or .nii.gz."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def affine_from_image(image: sitk.Image) -> np.ndarray:
    """Return the 4x4 RAS voxel-to-world affine (mm) of a 3D SimpleITK image."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    linear = _LPS_FROM_RAS @ direction @ np.diag(image.GetSpacing())
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = _LPS_FROM_RAS @ np.asarray(image.GetOrigin(), dtype=float)
    return affine


def image_from_array(array_xyz: np.ndarray, affine: np.ndarray, source: str = "array") -> sitk.Image:
    """Build a SimpleITK image from an (x, y, z) voxel array and a RAS affine.

    Raises:
        ConversionError: the affine has shear or a zero-length axis, which an ITK
            image (origin, spacing, orthonormal direction) cannot represent.
    """
    linear = _LPS_FROM_RAS @ np.asarray(affine, dtype=float)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise ConversionError(f"{source}: the affine has a zero-length voxel axis; fix the file's header.")
    direction = linear / spacing
    deviation = np.abs(direction.T @ direction - np.eye(3)).max()
    if deviation > 1e-4:
        raise ConversionError(
            f"{source}: the affine has shear (axes not orthogonal, deviation {deviation:.2g}); "
            "resample the scan to an orthogonal grid before converting it."
        )
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array_xyz).transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(d) for d in direction.ravel()))
    image.SetOrigin(tuple(float(o) for o in _LPS_FROM_RAS @ np.asarray(affine, dtype=float)[:3, 3]))
    return image


def read_nifti(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D NIfTI file into a SimpleITK image with nibabel's affine.

    A 4D file with a single volume is accepted. Scaling (scl_slope, scl_inter) is applied
    where the header sets it, which makes the voxel type float.

    Raises:
        FileNotFoundError: the file does not exist.
        ConversionError: the file is not readable NIfTI, contains several volumes, or has a
            sheared affine.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found.")
    try:
        nifti = nib.load(str(path))
        array = np.asanyarray(nifti.dataobj)
    except Exception as error:  # nibabel raises several unrelated types for corrupt files
        raise ConversionError(f"{path}: not a readable NIfTI file ({error}).") from error
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ConversionError(
            f"{path}: expected one 3D volume, found shape {array.shape}; extract the volume to convert first."
        )
    return image_from_array(array, nifti.affine, source=str(path))


def write_nifti(image: sitk.Image, path: str | os.PathLike, dtype: np.dtype | str | None = None) -> Path:
    """Write a 3D SimpleITK image as NIfTI with qform and sform set to its affine (code 1, scanner).

    The file is written to a temporary name in the same folder and renamed, so a reader
    never sees a partial file. `dtype` casts the voxels (values are rounded and clipped to
    the type's range for integer types); by default the image's own type is kept.
    """
    path = Path(path)
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    if dtype is not None:
        array = cast_array(array, np.dtype(dtype))
    affine = affine_from_image(image)
    nifti = nib.Nifti1Image(array, affine)
    nifti.header.set_qform(affine, code=1)
    nifti.header.set_sform(affine, code=1)
    nifti.header.set_xyzt_units("mm", "sec")

    write_nifti_atomic(nifti, path)
    return path


def cast_array(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast voxels to `dtype`, rounding and clipping to its range where it is an integer type."""
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(array.dtype, np.integer):
        limits = np.iinfo(dtype)
        array = np.clip(np.rint(array), limits.min, limits.max)
    return array.astype(dtype, copy=False)
