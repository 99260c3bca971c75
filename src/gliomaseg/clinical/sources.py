"""Resolution of a scan source (NIfTI file, DICOM folder, or series in a DICOM folder) to an image."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import SimpleITK as sitk

from gliomaseg.clinical.dicom import DicomSeries, find_series, list_dicom_series, read_dicom_series
from gliomaseg.clinical.errors import ConversionError
from gliomaseg.clinical.nifti import is_nifti_path, read_nifti

log = logging.getLogger(__name__)


class SeriesCatalog:
    """Listings of DICOM folders, read once per folder."""

    def __init__(self) -> None:
        self._listings: dict[Path, list[DicomSeries]] = {}

    def series(self, folder: Path) -> list[DicomSeries]:
        folder = folder.resolve()
        if folder not in self._listings:
            self._listings[folder] = list_dicom_series(folder)
        return self._listings[folder]


def load_source(
    source: str | os.PathLike,
    dicom_dir: str | os.PathLike | None = None,
    catalog: SeriesCatalog | None = None,
    fill_missing_slices: bool = False,
    role: str = "scan",
) -> tuple[sitk.Image, dict]:
    """Load one scan and describe where it came from.

    `source` is a NIfTI file (or another file SimpleITK reads, such as NRRD or MHA), a folder
    holding exactly one DICOM series, or, with `dicom_dir`, a series listing number, series
    UID or unique series description from `list_dicom_series(dicom_dir)`.

    Returns:
        The 3D image (LPS mm geometry, file voxel order) and a dictionary for the manifest.

    Raises:
        FileNotFoundError: the path does not exist and is no series of `dicom_dir`.
        ConversionError: a DICOM folder contains several series, the file cannot be read, or
            the series geometry cannot be corrected.
    """
    catalog = catalog or SeriesCatalog()
    path = Path(source)
    if path.is_file():
        if is_nifti_path(path):
            return read_nifti(path), {"kind": "nifti", "path": str(path.resolve())}
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            raise ConversionError(f"{path}: {role} file cannot be read as an image ({error}).") from error
        if image.GetDimension() != 3:
            raise ConversionError(f"{path}: {role} has {image.GetDimension()} dimensions; a 3D volume is needed.")
        return image, {"kind": "image file", "path": str(path.resolve())}

    if path.is_dir():
        series_list = catalog.series(path)
        if len(series_list) != 1:
            raise ConversionError(
                f"{path}: contains {len(series_list)} DICOM series; give --dicom-dir {path} and a series number or UID "
                f"for the {role} (list them with `gliomaseg convert --list {path}`)."
            )
        return _load_series(series_list[0], path, fill_missing_slices)

    if dicom_dir is not None:
        series = find_series(catalog.series(Path(dicom_dir)), str(source))
        return _load_series(series, Path(dicom_dir), fill_missing_slices)
    raise FileNotFoundError(
        f"{source}: {role} not found; give a NIfTI file, a folder with one DICOM series, "
        "or a series number or UID together with --dicom-dir."
    )


def _load_series(series: DicomSeries, folder: Path, fill_missing_slices: bool) -> tuple[sitk.Image, dict]:
    image, report = read_dicom_series(series, fill_missing_slices=fill_missing_slices)
    description = {"kind": "dicom", "folder": str(folder.resolve()), "series_number": series.series_number}
    description.update(report.to_dict())
    description["file_names"] = [str(p.resolve().relative_to(folder.resolve())) for p in series.files]
    return image, description
