"""Clinical conversion: DICOM or NIfTI scans in any orientation and resolution to a BraTS-format case."""

from gliomaseg.clinical.dicom import DicomSeries, list_dicom_series, read_dicom_series
from gliomaseg.clinical.errors import ConversionError, DicomGeometryError
from gliomaseg.clinical.orientation import BRATS_ORIENTATION, orientation_code, reorient_to_brats

__all__ = [
    "BRATS_ORIENTATION",
    "ConversionError",
    "DicomGeometryError",
    "DicomSeries",
    "list_dicom_series",
    "orientation_code",
    "read_dicom_series",
    "reorient_to_brats",
]
