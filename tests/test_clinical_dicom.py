"""DICOM series listing, slice geometry checks and corrections, on synthetic and real series."""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from gliomaseg.clinical import DicomGeometryError, list_dicom_series, read_dicom_series
from gliomaseg.clinical.dicom import find_series, format_series_table, guess_modality
from gliomaseg.clinical.errors import ConversionError
from gliomaseg.clinical.nifti import affine_from_image, read_nifti, write_nifti
from gliomaseg.clinical.orientation import orientation_code, reorient_to_brats

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def write_series(folder: Path, positions, orientations=None, shape=(8, 10), pixel_spacing=(0.5, 0.75),
                 uid="1.2.826.0.1.3680043.2.1125.1", description="t2_tse_tra", series_number="3") -> Path:
    """Write one single-frame MR file per slice position; slice k has pixel values index + 100 k."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, position in enumerate(positions):
        orientation = orientations[k] if orientations else AXIAL
        row, column = np.array(orientation[:3], float), np.array(orientation[3:], float)
        pixels = (np.arange(shape[0] * shape[1]).reshape(1, *shape) + 100 * k).astype(np.int16)
        image = sitk.GetImageFromArray(pixels)
        image.SetSpacing((pixel_spacing[1], pixel_spacing[0], 1.0))
        image.SetOrigin(tuple(float(p) for p in position))
        image.SetDirection(tuple(np.column_stack([row, column, np.cross(row, column)]).ravel()))
        tags = {
            "0008|0060": "MR", "0020|000e": uid, "0020|000d": "1.2.826.0.1.3680043.2.1125.99",
            "0020|0013": str(k + 1), "0008|103e": description, "0020|0011": series_number,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0008|0018": f"{uid}.{k + 1}",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"IM{k:04d}.dcm"))
        writer.Execute(image)
    return folder


def test_list_series_groups_by_uid_and_skips_other_files(tmp_path):
    write_series(tmp_path / "a", [(0, 0, 2.0 * k) for k in range(4)], uid="1.2.3.1", series_number="2",
                 description="t1_se_tra")
    write_series(tmp_path / "b", [(0, 0, 3.0 * k) for k in range(6)], uid="1.2.3.2", series_number="5",
                 description="t2_flair_tra")
    (tmp_path / "a" / "notes.txt").write_text("not DICOM")
    series = list_dicom_series(tmp_path)
    assert [s.uid for s in series] == ["1.2.3.1", "1.2.3.2"]
    assert [len(s.files) for s in series] == [4, 6]
    assert series[1].spacing == pytest.approx((0.75, 0.5, 3.0))
    assert series[0].orientation == "axial"


def test_format_series_table_shows_fields(tmp_path):
    write_series(tmp_path, [(0, 0, 2.0 * k) for k in range(4)], uid="1.2.3.7", description="t1_se_tra_post_gd")
    table = format_series_table(list_dicom_series(tmp_path))
    for expected in ("1.2.3.7", "t1_se_tra_post_gd", "axial", "0.75 x 0.5 x 2", "t1c"):
        assert expected in table


def test_list_series_without_dicom_raises(tmp_path):
    (tmp_path / "x.txt").write_text("nothing")
    with pytest.raises(ConversionError, match="no readable DICOM"):
        list_dicom_series(tmp_path)


def test_find_series_by_number_uid_and_description(tmp_path):
    write_series(tmp_path / "a", [(0, 0, 2.0 * k) for k in range(3)], uid="1.2.3.1", series_number="2",
                 description="T1")
    write_series(tmp_path / "b", [(0, 0, 2.0 * k) for k in range(3)], uid="1.2.3.2", series_number="4",
                 description="T2")
    series = list_dicom_series(tmp_path)
    assert find_series(series, "2").uid == "1.2.3.2"
    assert find_series(series, "1.2.3.1").description == "T1"
    assert find_series(series, "T2").uid == "1.2.3.2"
    with pytest.raises(ConversionError, match="no series matches"):
        find_series(series, "FLAIR")


@pytest.mark.parametrize(
    ("description", "expected"),
    [("t2_tirm_tra_dark-fluid FLAIR", "flair"), ("T1 AX POST GAD", "t1c"), ("t1_mprage_sag", "t1"),
     ("t2_tse_tra", "t2"), ("localizer", None)],
)
def test_guess_modality_from_description(description, expected):
    assert guess_modality(description) == expected


def test_uniform_series_geometry_and_voxels(tmp_path):
    write_series(tmp_path, [(10.0, -20.0, 5.0 + 2.0 * k) for k in range(5)])
    image, report = read_dicom_series(list_dicom_series(tmp_path)[0])
    assert image.GetSize() == (10, 8, 5)
    assert image.GetSpacing() == pytest.approx((0.75, 0.5, 2.0))
    assert image.GetOrigin() == pytest.approx((10.0, -20.0, 5.0))
    assert report.corrections == []
    voxels = sitk.GetArrayFromImage(image)
    assert voxels[3, 2, 1] == 2 * 10 + 1 + 300


def test_slices_sorted_by_position_not_file_name(tmp_path):
    write_series(tmp_path, [(0, 0, z) for z in (8.0, 2.0, 0.0, 6.0, 4.0)])
    image, _ = read_dicom_series(list_dicom_series(tmp_path)[0])
    first_voxel_per_slice = sitk.GetArrayFromImage(image)[:, 0, 0]
    assert list(first_voxel_per_slice) == [200, 100, 400, 300, 0]


def test_nonuniform_spacing_resampled_to_median(tmp_path):
    write_series(tmp_path, [(0, 0, z) for z in (0.0, 2.0, 4.0, 6.6, 8.6, 10.6)])
    image, report = read_dicom_series(list_dicom_series(tmp_path)[0])
    assert image.GetSpacing()[2] == pytest.approx(2.0)
    assert image.GetSize()[2] == 6
    assert any("non-uniform" in c for c in report.corrections)
    # Slice at z=6.0 lies between z=4.0 (value 200) and z=6.6 (value 300): weight 2/2.6.
    assert sitk.GetArrayFromImage(image)[3, 0, 0] == pytest.approx(200 + 100 * 2.0 / 2.6, rel=1e-5)


def test_missing_slice_raises_by_default(tmp_path):
    write_series(tmp_path, [(0, 0, z) for z in (0.0, 2.0, 4.0, 8.0, 10.0)])
    with pytest.raises(DicomGeometryError, match="missing"):
        read_dicom_series(list_dicom_series(tmp_path)[0])


def test_missing_slice_filled_when_allowed(tmp_path):
    write_series(tmp_path, [(0, 0, z) for z in (0.0, 2.0, 4.0, 8.0, 10.0)])
    image, report = read_dicom_series(list_dicom_series(tmp_path)[0], fill_missing_slices=True)
    assert image.GetSize()[2] == 6
    assert any("missing slices interpolated" in c for c in report.corrections)
    assert sitk.GetArrayFromImage(image)[3, 0, 0] == pytest.approx(250.0)


def test_gantry_tilt_detected_and_corrected(tmp_path):
    # Each slice moves 0.5 mm along the row direction per 2 mm along the normal: 14.04 degrees.
    write_series(tmp_path, [(0.5 * k, 0, 2.0 * k) for k in range(5)])
    image, report = read_dicom_series(list_dicom_series(tmp_path)[0])
    assert report.gantry_tilt_deg == pytest.approx(np.degrees(np.arctan(0.25)), abs=0.01)
    assert any("gantry tilt" in c for c in report.corrections)
    assert image.GetDirection() == pytest.approx(np.eye(3).ravel())
    voxels = sitk.GetArrayFromImage(image)
    # Output column x of slice 1 samples the file's column x - 0.5/0.75.
    assert voxels[1, 0, 2] == pytest.approx(100 + 2 - 0.5 / 0.75, rel=1e-5)


def test_mixed_orientations_raise(tmp_path):
    write_series(tmp_path, [(0, 0, 0), (0, 0, 2), (0, 0, 4)], orientations=[AXIAL, AXIAL, SAGITTAL])
    series = list_dicom_series(tmp_path)[0]
    assert series.orientation == "mixed"
    with pytest.raises(DicomGeometryError, match="different orientations"):
        read_dicom_series(series)


def test_duplicate_positions_raise(tmp_path):
    write_series(tmp_path, [(0, 0, z) for z in (0.0, 2.0, 2.0, 4.0)])
    with pytest.raises(DicomGeometryError, match="share a position"):
        read_dicom_series(list_dicom_series(tmp_path)[0])


def test_sagittal_series_reoriented_to_lps(tmp_path):
    write_series(tmp_path, [(1.5 * k, 0, 0) for k in range(4)], orientations=[SAGITTAL] * 4, pixel_spacing=(1.0, 1.0))
    image, _ = read_dicom_series(list_dicom_series(tmp_path)[0])
    reoriented = reorient_to_brats(image)
    assert orientation_code(image) == "PIR"
    assert orientation_code(reoriented) == "LPS"
    assert reoriented.GetSize() == (4, 10, 8)
    assert np.array_equal(np.sort(sitk.GetArrayFromImage(reoriented).ravel()), np.sort(sitk.GetArrayFromImage(image).ravel()))


def test_reorient_keeps_world_position_of_voxels(tmp_path):
    write_series(tmp_path, [(1.5 * k, 3.0, -2.0) for k in range(4)], orientations=[SAGITTAL] * 4)
    image, _ = read_dicom_series(list_dicom_series(tmp_path)[0])
    reoriented = reorient_to_brats(image)
    index = (7, 3, 2)
    point = image.TransformIndexToPhysicalPoint(index)
    assert reoriented[reoriented.TransformPhysicalPointToIndex(point)] == image[index]


def test_nifti_round_trip_keeps_affine_and_voxels(tmp_path):
    write_series(tmp_path / "dcm", [(1.5 * k, 3.0, -2.0) for k in range(4)], orientations=[SAGITTAL] * 4)
    image, _ = read_dicom_series(list_dicom_series(tmp_path / "dcm")[0])
    path = write_nifti(image, tmp_path / "out.nii.gz")
    nifti = nib.load(path)
    assert np.allclose(nifti.affine, affine_from_image(image))
    assert int(nifti.header["qform_code"]) == 1
    assert int(nifti.header["sform_code"]) == 1
    assert np.array_equal(sitk.GetArrayFromImage(read_nifti(path)), sitk.GetArrayFromImage(image))


def test_brats_file_is_lps_in_both_conventions():
    files = sorted((DATA / "deepbrainseg_brats2018" / "brats").glob("*/*_t1.nii.gz"))
    if not files:
        pytest.skip("BraTS 2018 sample cases not found under ../shared/data")
    image = read_nifti(files[0])
    assert nib.aff2axcodes(nib.load(files[0]).affine) == ("L", "P", "S")
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()) == "LPS"
    assert orientation_code(image) == "LPS"


@pytest.mark.realdata
def test_real_sagittal_mprage_converts_to_axial():
    folder = DATA / "dicom_nichart_trio_b17"
    if not folder.is_dir():
        pytest.skip("dicom_nichart_trio_b17 not found under ../shared/data")
    series = list_dicom_series(folder)
    assert len(series) == 1
    assert series[0].orientation == "sagittal"
    image, report = read_dicom_series(series[0])
    reoriented = reorient_to_brats(image)
    assert report.n_slices == 176
    assert report.corrections == []
    assert orientation_code(reoriented) == "LPS"
    assert reoriented.GetSize() == (176, 256, 256)
    assert reoriented.GetSpacing() == pytest.approx((1.0, 1.0, 1.0), abs=1e-6)


@pytest.mark.realdata
@pytest.mark.parametrize("vendor", ["siemens", "ge", "philips", "hitachi", "generic"])
def test_vendor_series_match_reference_nifti(vendor):
    folder = DATA / "dicom_dicom2nifti_tests" / vendor / "anatomical"
    if not folder.is_dir():
        pytest.skip(f"dicom_dicom2nifti_tests/{vendor} not found under ../shared/data")
    image, _ = read_dicom_series(list_dicom_series(folder / "001")[0])
    reference = read_nifti(folder / "001_ground_truth.nii.gz")
    ours, theirs = reorient_to_brats(image), reorient_to_brats(reference)
    assert ours.GetSize() == theirs.GetSize()
    assert np.abs(affine_from_image(ours) - affine_from_image(theirs)).max() < 1e-3
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))


@pytest.mark.realdata
def test_real_ge_epi_zip_converts(tmp_path):
    archive = DATA / "dicom_i2nii" / "DICOM.zip"
    if not archive.is_file():
        pytest.skip("dicom_i2nii/DICOM.zip not found under ../shared/data")
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(tmp_path)
    series = list_dicom_series(tmp_path)
    image, report = read_dicom_series(series[0])
    assert series[0].orientation == "axial"
    assert report.n_slices == 37
    assert image.GetSpacing() == pytest.approx((3.4375, 3.4375, 3.8), abs=1e-3)
    assert orientation_code(reorient_to_brats(image)) == "LPS"
