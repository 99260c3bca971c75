"""DICOM series listing and conversion to a 3D image, with slice geometry checks.

A folder may hold several series and unrelated files. Files are grouped by Series
Instance UID (0020,000E), and a series is converted only after its slices have been
checked:

- mixed orientations (Image Orientation (Patient) differs between slices) and several
  slices at one position (echoes, time points, diffusion directions) cannot be corrected
  and raise `DicomGeometryError`;
- gantry tilt (slices displaced in-plane as they advance) is corrected by shifting each
  slice onto the first slice's in-plane grid, as dcm2niix does;
- non-uniform slice spacing is corrected by linear interpolation along the slice normal
  onto a uniform grid at the median spacing;
- missing slices (a gap of more than `MISSING_SLICE_FACTOR` times the median spacing) raise
  `DicomGeometryError` unless `fill_missing_slices=True`, because filling them invents
  data; when allowed they are interpolated like non-uniform spacing.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from gliomaseg.clinical.errors import ConversionError, DicomGeometryError
from gliomaseg.clinical.orientation import orientation_code

log = logging.getLogger(__name__)

# Tolerances of the slice checks.
SPACING_TOLERANCE = 0.01  # relative deviation of a slice gap from the median gap
ORIENTATION_TOLERANCE = 1e-4  # direction cosine difference between slices
TILT_TOLERANCE_DEG = 0.05  # angle between slice normal and stacking direction
MISSING_SLICE_FACTOR = 1.5  # a gap above this many median gaps means missing slices

_TAG_SERIES_UID = "0020|000e"
_TAG_SERIES_NUMBER = "0020|0011"
_TAG_DESCRIPTION = "0008|103e"
_TAG_PROTOCOL = "0018|1030"
_TAG_MODALITY = "0008|0060"
_TAG_POSITION = "0020|0032"
_TAG_ORIENTATION = "0020|0037"
_TAG_PIXEL_SPACING = "0028|0030"
_TAG_INSTANCE = "0020|0013"
_TAG_FRAMES = "0028|0008"
_TAG_ROWS = "0028|0010"
_TAG_COLUMNS = "0028|0011"


@dataclass(frozen=True)
class DicomSlice:
    """Header fields of one DICOM file needed to place its pixels in space (mm, LPS)."""

    path: Path
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns)
    rows: int
    columns: int
    instance_number: int | None
    frames: int


@dataclass
class DicomSeries:
    """One DICOM series found in a folder: its files and the header fields shown by `--list`."""

    number: int  # 1-based position in the listing, usable in place of the UID
    uid: str
    series_number: str
    description: str
    modality: str
    slices: list[DicomSlice] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [s.path for s in self.slices]

    @property
    def orientation(self) -> str:
        """Slice plane (axial, sagittal, coronal, oblique or mixed) from the first slice's orientation."""
        planes = {_plane(s.orientation) for s in self.slices}
        return planes.pop() if len(planes) == 1 else "mixed"

    @property
    def spacing(self) -> tuple[float, float, float] | None:
        """In-plane spacing (columns, rows) and median slice gap along the normal, in mm."""
        first = self.slices[0]
        if first.pixel_spacing is None:
            return None
        gaps = _slice_gaps(self.slices)
        gap = float(np.median(gaps)) if len(gaps) else float("nan")
        return (first.pixel_spacing[1], first.pixel_spacing[0], gap)

    def guess_modality(self) -> str | None:
        """Guess the BraTS modality from the series description; a hint to print, never applied silently."""
        return guess_modality(self.description)


@dataclass
class SeriesReport:
    """What the slice checks found in a series and what was corrected (recorded in the manifest)."""

    uid: str
    description: str
    n_files: int
    n_slices: int
    slice_gap_mm: float
    slice_gap_range_mm: tuple[float, float]
    gantry_tilt_deg: float
    corrections: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "series_uid": self.uid,
            "description": self.description,
            "files": self.n_files,
            "slices": self.n_slices,
            "slice_gap_mm": round(self.slice_gap_mm, 4),
            "slice_gap_range_mm": [round(g, 4) for g in self.slice_gap_range_mm],
            "gantry_tilt_deg": round(self.gantry_tilt_deg, 3),
            "corrections": list(self.corrections),
        }


def guess_modality(description: str) -> str | None:
    """Guess "t1", "t1c", "t2" or "flair" from a series description, or None when unsure."""
    text = description.lower()
    if "flair" in text or re.search(r"\bt2[-_ ]?(fl|ir|tirm)", text):
        return "flair"
    if re.search(r"(post|gad|\bgd\b|\+c|\bce\b|contrast|mprage.*(post|gd|\+))", text):
        return "t1c"
    if "t2" in text:
        return "t2"
    if "t1" in text or "mprage" in text:
        return "t1"
    return None


def list_dicom_series(directory: str | os.PathLike) -> list[DicomSeries]:
    """Find every DICOM series under a folder (searched recursively); other files are skipped.

    Returns series sorted by series number, then description, each numbered from 1. Slices
    are sorted along their normal where the geometry tags exist.

    Raises:
        FileNotFoundError: the folder does not exist.
        ConversionError: the folder contains no readable DICOM image.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: DICOM folder not found.")

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")  # so NIfTI, PNG and other image files are skipped
    reader.LoadPrivateTagsOff()
    groups: dict[str, list[DicomSlice]] = defaultdict(list)
    info: dict[str, tuple[str, str, str]] = {}
    n_skipped = 0
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        tags = _read_tags(reader, path)
        if tags is None or _TAG_SERIES_UID not in tags:
            n_skipped += 1
            continue
        uid = tags[_TAG_SERIES_UID]
        groups[uid].append(_slice_from_tags(path, tags))
        info.setdefault(
            uid,
            (
                tags.get(_TAG_SERIES_NUMBER, ""),
                tags.get(_TAG_DESCRIPTION) or tags.get(_TAG_PROTOCOL, ""),
                tags.get(_TAG_MODALITY, ""),
            ),
        )
    if not groups:
        raise ConversionError(f"{directory}: no readable DICOM image found ({n_skipped} other files skipped).")
    log.debug("%s: %d series, %d non-DICOM files skipped", directory, len(groups), n_skipped)

    def sort_key(uid: str) -> tuple:
        number = info[uid][0]
        return (int(number) if number.isdigit() else 1 << 30, info[uid][1], uid)

    series = []
    for index, uid in enumerate(sorted(groups, key=sort_key), start=1):
        number, description, modality = info[uid]
        series.append(DicomSeries(index, uid, number, description, modality, _sort_slices(groups[uid])))
    return series


def format_series_table(series: Sequence[DicomSeries]) -> str:
    """Format a listing as a text table: number, series number, UID, description, slices, plane, spacing, guess."""
    header = ("#", "series", "description", "slices", "plane", "spacing (mm)", "guess", "series UID")
    rows = [header]
    for s in series:
        spacing = s.spacing
        spacing_text = "?" if spacing is None else " x ".join(f"{v:.3g}" for v in spacing)
        n_images = sum(sl.frames for sl in s.slices)
        rows.append(
            (str(s.number), s.series_number, s.description or "-", str(n_images), s.orientation, spacing_text,
             s.guess_modality() or "-", s.uid)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def find_series(series: Sequence[DicomSeries], selector: str) -> DicomSeries:
    """Pick a series from a listing by its listing number, series UID or unique description.

    Raises:
        ConversionError: nothing matches, or a description matches several series.
    """
    for s in series:
        if selector == s.uid or (selector.isdigit() and int(selector) == s.number):
            return s
    matches = [s for s in series if s.description and s.description == selector]
    if len(matches) == 1:
        return matches[0]
    available = ", ".join(f"{s.number} ({s.description or s.uid})" for s in series)
    reason = "several series have this description" if matches else "no series matches it"
    raise ConversionError(
        f"series {selector!r}: {reason}; give a listing number or series UID from `gliomaseg convert --list`. "
        f"Available: {available}."
    )


def read_dicom_series(series: DicomSeries, fill_missing_slices: bool = False) -> tuple[sitk.Image, SeriesReport]:
    """Check a series' slice geometry, correct what can be corrected, and return its 3D image.

    Returns the image (voxel type of the files where no interpolation was needed, float32
    otherwise; geometry in LPS mm with the third axis along the slice normal) and a report
    of the checks and corrections.

    Raises:
        DicomGeometryError: mixed orientations, several slices at one position, slices of
            different sizes or pixel spacings, missing geometry tags, or missing slices
            when `fill_missing_slices` is False.
    """
    slices = series.slices
    name = f"series {series.number} ({series.description or series.uid})"
    if len(slices) == 1 and slices[0].frames > 1:
        # NOTE: a multi-frame file is read as stored by SimpleITK; its per-frame geometry is not checked.
        image = sitk.ReadImage(str(slices[0].path))
        report = SeriesReport(series.uid, series.description, 1, image.GetSize()[2], image.GetSpacing()[2],
                              (image.GetSpacing()[2],) * 2, 0.0, ["multi-frame file read without slice checks"])
        return image, report
    _check_consistent(slices, name)
    if len(slices) < 2:
        raise DicomGeometryError(f"{name}: contains a single 2D slice; a 3D volume needs at least two slices.")

    row_dir, col_dir, normal = _axes(slices[0].orientation)
    positions = np.array([s.position for s in slices], dtype=float)
    distances = positions @ normal
    gaps = np.diff(distances)
    if np.any(gaps < 1e-3):
        n_duplicates = int(np.sum(gaps < 1e-3))
        raise DicomGeometryError(
            f"{name}: {n_duplicates} slices share a position with another slice, so the series contains several "
            "volumes (echoes, time points or diffusion directions); export each volume as its own series."
        )
    median_gap = float(np.median(gaps))
    offsets = positions - positions[0] - np.outer(distances - distances[0], normal)
    inplane = np.stack([offsets @ row_dir, offsets @ col_dir], axis=1)
    total_shift = float(np.linalg.norm(inplane[-1]))
    tilt_deg = float(np.degrees(np.arctan2(total_shift, distances[-1] - distances[0])))
    report = SeriesReport(series.uid, series.description, len(slices), len(slices), median_gap,
                          (float(gaps.min()), float(gaps.max())), tilt_deg)

    missing = gaps > MISSING_SLICE_FACTOR * median_gap
    if np.any(missing):
        where = ", ".join(f"after slice {i + 1} ({g:.3g} mm)" for i, g in zip(np.flatnonzero(missing), gaps[missing]))
        if not fill_missing_slices:
            raise DicomGeometryError(
                f"{name}: slices are missing: the median slice gap is {median_gap:.3g} mm but there are gaps {where}. "
                "Export the complete series, or allow interpolating the missing slices (--fill-missing-slices)."
            )
        report.corrections.append(f"missing slices interpolated {where}")
    nonuniform = np.abs(gaps - median_gap) > SPACING_TOLERANCE * median_gap
    if np.any(nonuniform & ~missing):
        report.corrections.append(
            f"non-uniform slice gaps ({gaps.min():.4g} to {gaps.max():.4g} mm) resampled to {median_gap:.4g} mm"
        )
    tilted = tilt_deg > TILT_TOLERANCE_DEG
    if tilted:
        if np.any(np.abs(np.diff(inplane, axis=0) - np.diff(inplane, axis=0).mean(axis=0)).max() > 0.05 * median_gap + 1e-3):
            raise DicomGeometryError(
                f"{name}: slices are displaced in-plane by varying amounts, which is neither gantry tilt nor a "
                "straight stack; check that the files belong to one acquisition."
            )
        report.corrections.append(f"gantry tilt of {tilt_deg:.2f} degrees corrected by shifting slices in-plane")

    if not report.corrections:
        image = _read_uniform_stack(slices, row_dir, col_dir, normal, median_gap)
    else:
        for correction in report.corrections:
            log.warning("%s: %s", name, correction)
        image = _resample_stack(slices, inplane if tilted else None, distances, row_dir, col_dir, normal, median_gap)
        report.n_slices = image.GetSize()[2]
    log.info("%s: %d slices read, %s, spacing %s mm, orientation %s", name, len(slices),
             "x".join(map(str, image.GetSize())), "x".join(f"{s:.3g}" for s in image.GetSpacing()),
             orientation_code(image))
    return image, report


def _read_tags(reader: sitk.ImageFileReader, path: Path) -> dict[str, str] | None:
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return {key: reader.GetMetaData(key).strip() for key in reader.GetMetaDataKeys()}


def _floats(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        return tuple(float(v) for v in text.split("\\"))
    except ValueError:
        return None


def _slice_from_tags(path: Path, tags: dict[str, str]) -> DicomSlice:
    position = _floats(tags.get(_TAG_POSITION))
    orientation = _floats(tags.get(_TAG_ORIENTATION))
    spacing = _floats(tags.get(_TAG_PIXEL_SPACING))
    instance = tags.get(_TAG_INSTANCE, "")
    frames = tags.get(_TAG_FRAMES, "1")
    return DicomSlice(
        path=path,
        position=position if position is not None and len(position) == 3 else None,
        orientation=orientation if orientation is not None and len(orientation) == 6 else None,
        pixel_spacing=spacing[:2] if spacing is not None and len(spacing) >= 2 else None,
        rows=int(tags.get(_TAG_ROWS, "0") or 0),
        columns=int(tags.get(_TAG_COLUMNS, "0") or 0),
        instance_number=int(instance) if instance.lstrip("-").isdigit() else None,
        frames=int(frames) if frames.isdigit() else 1,
    )


def _axes(orientation: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row_dir = np.asarray(orientation[:3], dtype=float)
    col_dir = np.asarray(orientation[3:], dtype=float)
    row_dir /= np.linalg.norm(row_dir)
    col_dir /= np.linalg.norm(col_dir)
    return row_dir, col_dir, np.cross(row_dir, col_dir)


def _plane(orientation: Sequence[float] | None) -> str:
    if orientation is None:
        return "unknown"
    normal = np.abs(_axes(orientation)[2])
    axis = int(np.argmax(normal))
    if normal[axis] < 0.9:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _sort_slices(slices: list[DicomSlice]) -> list[DicomSlice]:
    placed = [s for s in slices if s.position is not None and s.orientation is not None]
    if len(placed) != len(slices):
        return sorted(slices, key=lambda s: (s.instance_number or 0, str(s.path)))
    normal = _axes(placed[0].orientation)[2]
    return sorted(slices, key=lambda s: (float(np.dot(s.position, normal)), s.instance_number or 0))


def _slice_gaps(slices: Sequence[DicomSlice]) -> np.ndarray:
    if len(slices) < 2 or any(s.position is None or s.orientation is None for s in slices):
        return np.array([])
    normal = _axes(slices[0].orientation)[2]
    return np.diff(np.array([s.position for s in slices]) @ normal)


def _check_consistent(slices: Sequence[DicomSlice], name: str) -> None:
    lacking = [s.path.name for s in slices if s.position is None or s.orientation is None or s.pixel_spacing is None]
    if lacking:
        raise DicomGeometryError(
            f"{name}: {len(lacking)} files lack Image Position, Image Orientation or Pixel Spacing "
            f"(first: {lacking[0]}), so the volume cannot be placed in space; export the series with geometry tags."
        )
    orientations = np.array([s.orientation for s in slices])
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        planes = sorted({_plane(s.orientation) for s in slices})
        raise DicomGeometryError(
            f"{name}: slices have different orientations ({', '.join(planes)}), as in a localizer; "
            "choose a series whose slices all share one orientation."
        )
    if len({(s.rows, s.columns) for s in slices}) > 1 or len({s.pixel_spacing for s in slices}) > 1:
        raise DicomGeometryError(
            f"{name}: slices differ in matrix size or pixel spacing; choose a series acquired as one volume."
        )


def _read_slice_arrays(slices: Sequence[DicomSlice]) -> list[np.ndarray]:
    arrays = []
    for s in slices:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(s.path)))
        arrays.append(array.reshape(s.rows, s.columns))
    return arrays


def _stack_type(arrays: Sequence[np.ndarray]) -> np.dtype:
    dtypes = {a.dtype for a in arrays}
    return dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)


def _image_from_stack(volume_zyx: np.ndarray, first: DicomSlice, row_dir, col_dir, normal, gap: float) -> sitk.Image:
    image = sitk.GetImageFromArray(volume_zyx)
    image.SetSpacing((first.pixel_spacing[1], first.pixel_spacing[0], gap))
    image.SetOrigin(tuple(float(v) for v in first.position))
    image.SetDirection(tuple(float(v) for v in np.column_stack([row_dir, col_dir, normal]).ravel()))
    return image


def _read_uniform_stack(slices, row_dir, col_dir, normal, gap: float) -> sitk.Image:
    arrays = _read_slice_arrays(slices)
    volume = np.stack(arrays).astype(_stack_type(arrays), copy=False)
    return _image_from_stack(volume, slices[0], row_dir, col_dir, normal, gap)


def _resample_stack(slices, inplane: np.ndarray | None, distances: np.ndarray, row_dir, col_dir, normal,
                    gap: float) -> sitk.Image:
    """Interpolate slices onto a uniform, untilted grid: in-plane shift, then linear along the normal."""
    arrays = [a.astype(np.float32) for a in _read_slice_arrays(slices)]
    if inplane is not None:
        row_spacing, column_spacing = slices[0].pixel_spacing
        arrays = [
            ndimage.shift(a, (v / row_spacing, u / column_spacing), order=1, mode="constant", cval=0.0)
            for a, (u, v) in zip(arrays, inplane)
        ]
    stack = np.stack(arrays)
    relative = distances - distances[0]
    n_out = int(round(relative[-1] / gap)) + 1
    targets = np.arange(n_out) * gap
    upper = np.clip(np.searchsorted(relative, targets, side="right"), 1, len(relative) - 1)
    lower = upper - 1
    weight = np.clip((targets - relative[lower]) / (relative[upper] - relative[lower]), 0.0, 1.0)
    volume = (1.0 - weight)[:, None, None] * stack[lower] + weight[:, None, None] * stack[upper]
    return _image_from_stack(volume.astype(np.float32), slices[0], row_dir, col_dir, normal, gap)
