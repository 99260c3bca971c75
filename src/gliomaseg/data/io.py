"""NIfTI reading and writing that keeps the geometry: affine, qform and sform codes, header.

Output label maps and probability maps copy the header of the image they belong to, so that
FSL, ITK-SNAP and 3D Slicer overlay them on that image. Files are written atomically: a
temporary file in the target folder, then a rename.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class ImageError(ValueError):
    """An image file is missing, unreadable or contains data that cannot be used."""


@dataclass
class Volume:
    """A 3D image with its geometry.

    `array` is in the file's voxel order (i, j, k); `affine` maps voxel indices to scanner
    coordinates in mm (RAS+, as nibabel defines it). `array` may be None where only the
    geometry is kept.
    """

    array: np.ndarray | None
    affine: np.ndarray
    header: nib.Nifti1Header
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        if self.array is not None:
            return tuple(self.array.shape)
        return tuple(int(n) for n in self.header.get_data_shape()[:3])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes."""
        zooms = np.sqrt((np.asarray(self.affine)[:3, :3] ** 2).sum(axis=0))
        return tuple(float(z) for z in zooms)

    @property
    def orientation(self) -> str:
        """Axis codes of the array axes, for example 'LPS' for BraTS files."""
        return "".join(nib.aff2axcodes(self.affine))

    def geometry_only(self) -> Volume:
        """Return a copy without the voxel array (for keeping the header of an input)."""
        return Volume(None, self.affine.copy(), self.header.copy(), self.path)


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_volume(
    path: str | Path,
    *,
    channel: int | None = None,
    require_nonzero: bool = False,
    role: str = "image",
) -> Volume:
    """Load a 3D NIfTI volume, or one channel of a 4D file.

    Args:
        path: a `.nii` or `.nii.gz` file.
        channel: index along the fourth axis of a 4D file (MSD layout); None for a 3D file.
        require_nonzero: reject a volume whose voxels are all zero.
        role: what the file is (for example "flair image" or "label map"), used in messages.

    Returns:
        A Volume whose array keeps the file's dtype after scaling (float where the file has
        a scale factor).

    Raises:
        ImageError: the file is missing, not NIfTI, truncated, not 3D, or contains NaN, infinite
            or (with require_nonzero) only zero voxels.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: {role} file not found. Check the path or the case's file names.")
    try:
        image = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, ValueError) as error:
        raise ImageError(
            f"{path}: not a readable NIfTI file ({error}). Convert it to NIfTI (.nii or .nii.gz) first."
        ) from error
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageError(f"{path}: {type(image).__name__} is not NIfTI. Convert it to NIfTI (.nii or .nii.gz) first.")

    shape = image.shape
    if len(shape) == 4 and channel is None and shape[3] == 1:
        channel = 0
    if channel is None and len(shape) != 3:
        raise ImageError(
            f"{path}: expected a 3D {role}, found shape {shape}. "
            "Split 4D files into one file per modality, or describe the channel order with a case manifest."
        )
    if channel is not None and (len(shape) != 4 or not 0 <= channel < shape[3]):
        raise ImageError(f"{path}: cannot read channel {channel} of a volume with shape {shape}.")

    try:
        if channel is None:
            array = np.asanyarray(image.dataobj)
        else:
            array = np.asanyarray(image.dataobj[..., channel])
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise ImageError(
            f"{path}: the voxel data cannot be read ({error}); the file is truncated or corrupt. "
            "Copy or export it again."
        ) from error

    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        count = int((~np.isfinite(array)).sum())
        raise ImageError(f"{path}: {count} voxels are NaN or infinite. Replace them (for example with 0) before use.")
    if require_nonzero and not np.any(array):
        raise ImageError(f"{path}: every voxel of this {role} is zero. Check that the right file was exported.")

    header = image.header.copy()
    if channel is not None:
        header.set_data_shape(shape[:3])
        header.set_dim_info(None, None, None)
    return Volume(array=array, affine=np.asarray(image.affine, dtype=np.float64), header=header, path=path)


def temporary_file_beside(path: Path, suffix: str = ".tmp") -> str:
    """Create an empty temporary file in `path`'s folder and return its name.

    The file gets the permissions a plain ``open`` would give (0666 less the umask), not
    mkstemp's owner-only 0600, so the renamed result is readable like any other output.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    os.chmod(name, default_file_mode())
    return name


def default_file_mode() -> int:
    """Return the permission bits a new file gets from ``open``: 0666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_nifti_atomic(image: nib.Nifti1Image, path: str | Path) -> None:
    """Save `image` to a temporary file in the target folder, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    tmp_name = temporary_file_beside(path, f".tmp{suffix}")
    try:
        nib.save(image, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def save_volume(
    array: np.ndarray,
    like: Volume,
    path: str | Path,
    *,
    dtype: np.dtype | type | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `array` as NIfTI with the geometry of `like` (affine, qform and sform with codes).

    Args:
        array: voxels in `like`'s voxel order; 3D, or 4D with channels on the last axis.
        like: the image whose header and geometry the output takes.
        path: output file (`.nii.gz` or `.nii`).
        dtype: on-disk data type; default the array's.
        overwrite: replace an existing file; otherwise an existing file raises FileExistsError.

    Returns:
        The written path.
    """
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: output file name must end in .nii or .nii.gz")
    if tuple(array.shape[:3]) != tuple(like.shape[:3]):
        raise ValueError(f"array shape {array.shape} does not match the reference image's shape {like.shape}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (or --overwrite) to replace it")
    if like.path is not None and path.exists() and path.resolve() == Path(like.path).resolve():
        raise ValueError(f"{path} is the input image itself; choose another output path")

    header = like.header.copy()
    dtype = np.dtype(dtype or array.dtype)
    image = nib.Nifti1Image(np.asarray(array, dtype=dtype), like.affine, header=header)
    image.header.set_data_dtype(dtype)
    image.header.set_data_shape(array.shape)
    # Keep both transforms with their codes, as in the reference file.
    qform, qform_code = like.header.get_qform(coded=True)
    sform, sform_code = like.header.get_sform(coded=True)
    image.set_qform(qform if qform is not None else like.affine, code=int(qform_code or 0))
    image.set_sform(sform if sform is not None else like.affine, code=int(sform_code or 0))
    image.header["scl_slope"] = 1.0
    image.header["scl_inter"] = 0.0
    if array.ndim == 4:
        image.header["intent_code"] = 0
    write_nifti_atomic(image, path)
    return path


def save_label_map(array: np.ndarray, like: Volume, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a label map (uint8) in the geometry of `like`; see save_volume."""
    array = np.asarray(array)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"label values must lie in 0..255, found {array.min()}..{array.max()}")
    return save_volume(array.astype(np.uint8), like, path, dtype=np.uint8, overwrite=overwrite)
