"""Clinical conversion: DICOM or NIfTI scans in any orientation and resolution to a BraTS-format case.

Main entry points: `convert_case` (the whole pipeline, as `gliomaseg convert` runs it),
`list_dicom_series` (what `gliomaseg convert --list` prints) and the single steps
`read_dicom_series`, `reorient_to_brats`, `register_rigid`, `isotropic_grid` and `resample`.
"""

from gliomaseg.clinical.convert import ConversionResult, choose_reference, convert_case
from gliomaseg.clinical.dicom import DicomSeries, format_series_table, list_dicom_series, read_dicom_series
from gliomaseg.clinical.errors import ConversionError, DicomGeometryError
from gliomaseg.clinical.naming import MODALITIES, NAMINGS, output_name
from gliomaseg.clinical.nifti import read_nifti, write_nifti
from gliomaseg.clinical.orientation import BRATS_ORIENTATION, orientation_code, reorient_to_brats
from gliomaseg.clinical.registration import RegistrationResult, register_rigid
from gliomaseg.clinical.resampling import INTERPOLATORS, isotropic_grid, resample

__all__ = [
    "BRATS_ORIENTATION",
    "INTERPOLATORS",
    "MODALITIES",
    "NAMINGS",
    "ConversionError",
    "ConversionResult",
    "DicomGeometryError",
    "DicomSeries",
    "RegistrationResult",
    "choose_reference",
    "convert_case",
    "format_series_table",
    "isotropic_grid",
    "list_dicom_series",
    "orientation_code",
    "output_name",
    "read_dicom_series",
    "read_nifti",
    "register_rigid",
    "reorient_to_brats",
    "resample",
    "write_nifti",
]
