"""Reorientation to the axis order of BraTS files without resampling.

BraTS 2017-2023 volumes are stored with the first voxel axis pointing to the patient's
left, the second to posterior and the third to superior: nibabel's `aff2axcodes` gives
("L", "P", "S") and SimpleITK's `DICOMOrientImageFilter` gives "LPS" (checked on BraTS
2018 training files, SimpleITK 2.5), which is an identity direction matrix in ITK's LPS
world. Reorientation permutes and flips voxel axes only, so every voxel value is kept.
"""

from __future__ import annotations

import nibabel as nib
import SimpleITK as sitk

from gliomaseg.clinical.nifti import affine_from_image

BRATS_ORIENTATION = "LPS"


def orientation_code(image: sitk.Image) -> str:
    """Return the three-letter axis code of an image, in the convention of nibabel's aff2axcodes.

    Each letter is the direction in which its voxel axis increases, so a BraTS volume is
    "LPS"; an oblique axis gets the letter of its closest world axis.
    """
    return "".join(nib.aff2axcodes(affine_from_image(image)))


def reorient_to_brats(image: sitk.Image) -> sitk.Image:
    """Permute and flip the voxel axes so the image's axis code is BraTS's "LPS".

    The physical position of every voxel is unchanged, as are the voxel values; only the
    storage order and the origin/direction describing it change. For an oblique scan the
    direction matrix stays oblique (the closest axes are chosen), as no resampling happens.
    """
    return sitk.DICOMOrient(image, BRATS_ORIENTATION)
