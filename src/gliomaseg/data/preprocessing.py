"""Preprocessing of a case into network input, and its exact inverse for outputs.

Steps, each undone by `CaseGeometry.restore`:

1. reorient the voxel array to the closest RAS orientation (axis permutations and flips only,
   no resampling) and order the axes (D, H, W) = (inferior-superior, posterior-anterior,
   left-right), so D is the axial slice axis whatever the acquisition;
2. crop to the bounding box of the brain (voxels that are non-zero in any input modality);
3. z-score each modality over the brain voxels and set the voxels outside the brain to 0;
4. stack the modalities as channels in the configured order (default R = FLAIR, G = T1c,
   B = T2, as in Wacker et al.).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from gliomaseg.data.cases import Case, load_case_volumes
from gliomaseg.data.io import Volume
from gliomaseg.data.labels import to_model_classes

log = logging.getLogger(__name__)

DEFAULT_CHANNELS = ("flair", "t1c", "t2")
_RAS = nib.orientations.axcodes2ornt(("R", "A", "S"))


@dataclass
class CaseGeometry:
    """Everything needed to map arrays between the network's grid and the input file's grid.

    Attributes:
        reference: header and affine of the input (array dropped), for writing outputs.
        file_shape: shape of the input volume in the file's voxel order.
        orientation: nibabel orientation array that takes the file's axes to RAS.
        bbox: slices of the brain bounding box in the reoriented (D, H, W) grid.
    """

    reference: Volume
    file_shape: tuple[int, int, int]
    orientation: np.ndarray
    bbox: tuple[slice, slice, slice]

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Shape of the full reoriented grid, (D, H, W)."""
        ras_shape = nib.orientations.apply_orientation(np.empty(self.file_shape, dtype=np.uint8), self.orientation).shape
        return (ras_shape[2], ras_shape[1], ras_shape[0])

    @property
    def cropped_shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.bbox)

    @property
    def spacing_dhw(self) -> tuple[float, float, float]:
        """Voxel size in mm along D, H and W."""
        spacing = self.reference.spacing
        by_ras_axis = [0.0, 0.0, 0.0]
        for file_axis, (ras_axis, _) in enumerate(self.orientation):
            by_ras_axis[int(ras_axis)] = spacing[file_axis]
        return (by_ras_axis[2], by_ras_axis[1], by_ras_axis[0])

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """Reorient an array in file voxel order (trailing axes may follow) to the full (D, H, W) grid."""
        ras = nib.orientations.apply_orientation(array, self.orientation)
        return np.ascontiguousarray(np.swapaxes(ras, 0, 2))

    def crop(self, canonical: np.ndarray) -> np.ndarray:
        """Crop the last three axes of a full (…, D, H, W) array to the brain bounding box."""
        return canonical[(Ellipsis, *self.bbox)]

    def restore(self, array: np.ndarray, fill: float = 0) -> np.ndarray:
        """Map a cropped or full (…, D, H, W) array back to the file's voxel order.

        Leading axes (for example class probabilities) are kept and moved to the end, so a
        (C, D, H, W) array returns as (X, Y, Z, C), the NIfTI convention.
        """
        array = np.asarray(array)
        spatial = tuple(array.shape[-3:])
        if spatial == self.cropped_shape and spatial != self.canonical_shape:
            full = np.full((*array.shape[:-3], *self.canonical_shape), fill, dtype=array.dtype)
            full[(Ellipsis, *self.bbox)] = array
            array = full
        elif spatial == self.cropped_shape:
            # The crop covers the whole grid.
            pass
        elif spatial != self.canonical_shape:
            raise ValueError(
                f"array of spatial shape {spatial} matches neither the cropped grid {self.cropped_shape} "
                f"nor the full grid {self.canonical_shape}"
            )
        # (…, D, H, W) -> (W, H, D, …) = RAS axes first, then the leading axes.
        moved = np.moveaxis(array, range(array.ndim - 3), range(3, array.ndim))
        ras = np.swapaxes(moved, 0, 2)
        inverse = nib.orientations.ornt_transform(_RAS, self.orientation)
        return np.ascontiguousarray(nib.orientations.apply_orientation(ras, inverse))


@dataclass
class PreprocessedCase:
    """Network input of one case.

    Attributes:
        image: float32 (C, D, H, W), channels in `channels` order, z-scored over the brain.
        label: uint8 model classes (D, H, W), or None.
        brain_mask: bool (D, H, W).
        geometry: the mapping back to the input file's grid.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    brain_mask: np.ndarray
    channels: tuple[str, ...]
    geometry: CaseGeometry


def brain_bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Return the slices of the smallest box around the True voxels of `mask` (plus `margin`)."""
    if not mask.any():
        raise ValueError("the brain mask is empty; every input voxel is zero")
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def zscore_over_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Return float32 (image - mean) / std over the mask voxels, with 0 outside the mask."""
    values = image[mask].astype(np.float64)
    mean = values.mean()
    std = values.std()
    out = np.zeros(image.shape, dtype=np.float32)
    out[mask] = ((values - mean) / (std + 1e-8)).astype(np.float32)
    return out


def preprocess_volumes(
    case_id: str,
    volumes: dict[str, Volume],
    label: Volume | None = None,
    schema=None,
    channels: Sequence[str] = DEFAULT_CHANNELS,
) -> PreprocessedCase:
    """Preprocess loaded modality volumes of one case; see the module docstring for the steps."""
    missing = [c for c in channels if c not in volumes]
    if missing:
        raise ValueError(f"case {case_id}: channels {missing} are not among the loaded modalities {list(volumes)}")
    first = volumes[channels[0]]
    orientation = nib.orientations.io_orientation(first.affine)
    file_shape = tuple(int(n) for n in first.shape)

    geometry = CaseGeometry(first.geometry_only(), file_shape, orientation, (slice(0, 0),) * 3)
    canonical = {m: geometry.to_canonical(volumes[m].array) for m in channels}
    brain = np.zeros(geometry.canonical_shape, dtype=bool)
    for array in canonical.values():
        brain |= array != 0
    if not brain.any():
        raise ValueError(f"case {case_id}: every voxel of every input modality is zero")
    geometry.bbox = brain_bounding_box(brain)
    brain = geometry.crop(brain)

    image = np.stack([zscore_over_mask(geometry.crop(canonical[m]), brain) for m in channels])

    classes = None
    if label is not None:
        if schema is None:
            raise ValueError(f"case {case_id}: a label schema is needed to read the label map")
        classes = geometry.crop(geometry.to_canonical(to_model_classes(label.array, schema, label.path)))
        classes = np.ascontiguousarray(classes)
    return PreprocessedCase(case_id, image, classes, np.ascontiguousarray(brain), tuple(channels), geometry)


def preprocess_case(
    case: Case,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    *,
    substitute: dict[str, str] | None = None,
    with_label: bool = True,
) -> PreprocessedCase:
    """Load and preprocess a case for the network.

    Args:
        case: a discovered case.
        channels: modalities in channel order (default FLAIR, T1c, T2).
        substitute: missing-modality policy, target -> source modality (for example {"t1": "t1c"}).
        with_label: load the reference label map where the case has one.

    Returns:
        A PreprocessedCase; `geometry.restore` maps network outputs back to the input grid.

    Raises:
        CaseError, ImageError, LabelError: missing or unusable files, mismatched grids,
            label values outside the case's schema.
    """
    volumes, label = load_case_volumes(case, tuple(channels), substitute=substitute, with_label=with_label)
    return preprocess_volumes(case.case_id, volumes, label, case.schema, channels)
