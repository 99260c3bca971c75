"""Case conversion end to end on small synthetic heads: outputs, masks, labels, policies and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from gliomaseg.cli import main
from gliomaseg.clinical import ConversionError, choose_reference, convert_case, read_nifti, write_nifti
from gliomaseg.data.cases import discover_cases

INTENSITY = {"t1": (0, 300, 600, 200, 400), "t1c": (0, 350, 600, 200, 900),
             "t2": (0, 200, 400, 900, 700), "flair": (0, 250, 450, 150, 800)}


def tissue_map() -> sitk.Image:
    """Tissue labels on a 1 mm grid centred on the origin: 1 scalp, 2 brain, 3 ventricle, 4 tumor."""
    shape = (72, 76, 60)
    x, y, z = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    tissue = np.zeros(shape, np.uint8)
    tissue[(x / 30) ** 2 + (y / 33) ** 2 + (z / 25) ** 2 <= 1] = 1
    tissue[(x / 25) ** 2 + (y / 28) ** 2 + (z / 20) ** 2 <= 1] = 2
    tissue[(x - 5) ** 2 + (y + 4) ** 2 + (z - 2) ** 2 <= 25] = 3
    tissue[(x + 9) ** 2 + (y - 7) ** 2 + (z - 5) ** 2 <= 49] = 4
    image = sitk.GetImageFromArray(tissue.transpose(2, 1, 0))
    image.SetOrigin(tuple(-(n - 1) / 2 for n in shape))
    return image


def scan_grid(size, spacing, direction=None) -> sitk.Image:
    grid = sitk.Image(list(size), sitk.sitkUInt8)
    grid.SetSpacing(spacing)
    if direction is not None:
        grid.SetDirection(direction)
    center = grid.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size])
    grid.SetOrigin(tuple(-c for c in center))
    return grid


def write_scan(path: Path, modality: str, grid: sitk.Image, motion: sitk.Transform | None = None) -> Path:
    """Write a modality on `grid`; `motion` maps scan points to head points (head moved before this scan)."""
    labels = sitk.Resample(tissue_map(), grid, motion or sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    values = np.asarray(INTENSITY[modality], np.int16)[sitk.GetArrayFromImage(labels)]
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(grid)
    write_nifti(image, path)
    return path


def write_tissue(path: Path, grid: sitk.Image, minimum: int, motion: sitk.Transform | None = None) -> Path:
    labels = sitk.Resample(tissue_map(), grid, motion or sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    write_nifti(sitk.Cast(labels >= minimum, sitk.sitkUInt8), path)
    return path


# T1c stored in PIR order at 2 mm (the finest voxels); the others axial at 1.8 x 1.8 x 3 mm.
T1C_GRID = dict(size=(36, 30, 40), spacing=(2.0, 2.0, 2.0), direction=(0, 0, -1, 1, 0, 0, 0, -1, 0))
AXIAL_GRID = dict(size=(40, 42, 17), spacing=(1.8, 1.8, 3.0))


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("scans")
    t1c_grid, axial_grid = scan_grid(**T1C_GRID), scan_grid(**AXIAL_GRID)
    paths = {"t1c": write_scan(folder / "t1c.nii.gz", "t1c", t1c_grid)}
    for modality in ("t2", "flair"):
        paths[modality] = write_scan(folder / f"{modality}.nii.gz", modality, axial_grid)
    paths["t1c_mask"] = write_tissue(folder / "t1c_mask.nii.gz", t1c_grid, 2)
    paths["t2_mask"] = write_tissue(folder / "t2_mask.nii.gz", axial_grid, 2)
    paths["tumor_on_t2"] = write_tissue(folder / "tumor_on_t2.nii.gz", axial_grid, 4)
    return paths


def convert(scans, output, **options):
    sources = {m: scans[m] for m in ("t1c", "t2", "flair")}
    options.setdefault("substitutions", {"t1": "t1c"})
    options.setdefault("register", False)
    return convert_case(sources, output, **options)


def test_converted_case_is_discovered_with_four_modalities(scans, tmp_path):
    result = convert(scans, tmp_path / "case", case_id="P01")
    cases = discover_cases(tmp_path / "case")
    assert [c.case_id for c in cases] == ["P01"]
    assert cases[0].modalities == ("t1", "t1c", "t2", "flair")
    assert result.files["t1c"].name == "P01_t1ce.nii.gz"


def test_output_is_lps_1mm_on_reference_extent(scans, tmp_path):
    result = convert(scans, tmp_path / "case")
    nifti = nib.load(result.files["flair"])
    assert nib.aff2axcodes(nifti.affine) == ("L", "P", "S")
    assert nifti.header.get_zooms() == pytest.approx((1.0, 1.0, 1.0))
    assert nifti.shape == (80, 72, 60)  # T1c extent: 36 P x 30 I x 40 R voxels of 2 mm
    assert result.manifest["reference"] == "t1c"


def test_brats2023_naming(scans, tmp_path):
    result = convert(scans, tmp_path / "case", case_id="P02", naming="brats2023")
    names = sorted(p.name for p in result.files.values())
    assert names == ["P02-t1c.nii.gz", "P02-t1n.nii.gz", "P02-t2f.nii.gz", "P02-t2w.nii.gz"]
    assert discover_cases(tmp_path / "case")[0].layout == "brats2023"


def test_substitution_recorded_and_copied(scans, tmp_path):
    result = convert(scans, tmp_path / "case")
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["substitutions"] == {"t1": "t1c"}
    t1 = np.asanyarray(nib.load(result.files["t1"]).dataobj)
    t1c = np.asanyarray(nib.load(result.files["t1c"]).dataobj)
    assert np.array_equal(t1, t1c)


def test_missing_modality_fails_by_default(scans, tmp_path):
    with pytest.raises(ConversionError, match="no t1 scan given"):
        convert(scans, tmp_path / "case", substitutions={})


def test_missing_substitute_policy_uses_t1c_for_t1(scans, tmp_path):
    result = convert(scans, tmp_path / "case", substitutions={}, missing="substitute")
    assert result.manifest["substitutions"] == {"t1": "t1c"}


def test_non_empty_output_rejected_without_overwrite(scans, tmp_path):
    output = tmp_path / "case"
    output.mkdir()
    (output / "notes.txt").write_text("keep")
    with pytest.raises(ConversionError, match="not empty"):
        convert(scans, output)
    convert(scans, output, overwrite=True)
    assert (output / "notes.txt").read_text() == "keep"


def write_unreadable_scan(path: Path) -> Path:
    path.write_bytes(b"not a NIfTI file")
    return path


def test_failed_conversion_removes_folders_it_created(scans, tmp_path):
    broken = write_unreadable_scan(tmp_path / "flair.nii.gz")
    output = tmp_path / "converted" / "case"
    with pytest.raises(ConversionError, match="not a readable NIfTI file"):
        convert({**scans, "flair": broken}, output)
    assert not output.exists()
    assert not output.parent.exists()


def test_failed_conversion_keeps_existing_folder_and_files(scans, tmp_path):
    broken = write_unreadable_scan(tmp_path / "flair.nii.gz")
    output = tmp_path / "case"
    output.mkdir()
    (output / "notes.txt").write_text("keep")
    with pytest.raises(ConversionError, match="not a readable NIfTI file"):
        convert({**scans, "flair": broken}, output, overwrite=True)
    assert (output / "notes.txt").read_text() == "keep"


def test_failed_conversion_keeps_existing_empty_folder(scans, tmp_path):
    broken = write_unreadable_scan(tmp_path / "flair.nii.gz")
    output = tmp_path / "case"
    output.mkdir()
    with pytest.raises(ConversionError, match="not a readable NIfTI file"):
        convert({**scans, "flair": broken}, output)
    assert output.is_dir()


def test_failure_while_writing_removes_partial_case(scans, tmp_path, monkeypatch):
    import gliomaseg.clinical.convert as convert_module

    written = []

    def write_once_then_fail(image, path, dtype=None):
        if written:
            raise OSError(28, "No space left on device")
        written.append(write_nifti(image, path, dtype=dtype))
        return written[-1]

    monkeypatch.setattr(convert_module, "write_nifti", write_once_then_fail)
    with pytest.raises(OSError, match="No space left"):
        convert(scans, tmp_path / "case")
    assert len(written) == 1
    assert not (tmp_path / "case").exists()


def test_output_folder_holding_an_input_rejected(scans, tmp_path):
    with pytest.raises(ConversionError, match="contains the input"):
        convert(scans, scans["t1c"].parent, overwrite=True)


def test_no_mask_recorded_as_not_skull_stripped(scans, tmp_path):
    result = convert(scans, tmp_path / "case")
    assert result.manifest["skull_stripped"] is False
    assert any("not skull-stripped" in w for w in result.warnings)


def test_brain_mask_zeroes_voxels_outside_brain(scans, tmp_path):
    result = convert(scans, tmp_path / "case", brain_mask=scans["t1c_mask"])
    mask = np.asanyarray(nib.load(result.files["brainmask"]).dataobj)
    flair = np.asanyarray(nib.load(result.files["flair"]).dataobj)
    assert result.manifest["skull_stripped"] is True
    assert np.all(flair[mask == 0] == 0)
    assert np.count_nonzero(flair[mask == 1]) > 0.95 * np.count_nonzero(mask)


def test_label_drawn_on_t2_lands_on_tumor(scans, tmp_path):
    result = convert(scans, tmp_path / "case", label=scans["tumor_on_t2"], label_on="t2")
    label = np.asanyarray(nib.load(result.files["seg"]).dataobj) > 0
    t1c = np.asanyarray(nib.load(result.files["t1c"]).dataobj)
    tumor = t1c == INTENSITY["t1c"][4]
    dice = 2 * np.count_nonzero(label & tumor) / (np.count_nonzero(label) + np.count_nonzero(tumor))
    assert dice > 0.85
    assert discover_cases(tmp_path / "case")[0].label_path == result.files["seg"]


def test_linear_interpolation_writes_float_images(scans, tmp_path):
    result = convert(scans, tmp_path / "case", interpolation="linear")
    assert nib.load(result.files["t2"]).get_data_dtype() == np.float32
    assert result.manifest["interpolation"] == {"images": "linear", "masks_and_labels": "nearest"}


def test_keep_intermediate_writes_each_step(scans, tmp_path):
    convert(scans, tmp_path / "case", keep_intermediate=True, brain_mask=scans["t1c_mask"])
    steps = sorted(p.name for p in (tmp_path / "case" / "intermediate").iterdir())
    assert steps == ["1_converted", "2_reoriented", "3_skull_stripped", "4_registered"]
    assert (tmp_path / "case" / "intermediate" / "4_registered" / "flair.nii.gz").is_file()


def test_manifest_records_sources_steps_and_versions(scans, tmp_path):
    result = convert(scans, tmp_path / "case")
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["modalities"]["t2"]["source"]["path"] == str(scans["t2"].resolve())
    assert [s["step"] for s in manifest["steps"]] == ["load", "reorient", "skull-strip", "register", "resample", "write"]
    assert "SimpleITK" in manifest["software"]
    assert manifest["modalities"]["t1c"]["converted_grid"]["orientation"] == "PIR"


def test_choose_reference_prefers_finest_grid():
    fine, coarse = sitk.Image([4, 4, 4], sitk.sitkUInt8), sitk.Image([4, 4, 4], sitk.sitkUInt8)
    fine.SetSpacing((1.0, 1.0, 1.0))
    coarse.SetSpacing((0.5, 0.5, 5.0))
    assert choose_reference({"t2": fine, "t1c": coarse}) == "t2"
    assert choose_reference({"t2": fine, "flair": fine}) == "flair"


@pytest.mark.slow
def test_registration_corrects_head_motion(tmp_path):
    head_motion = sitk.Euler3DTransform()
    head_motion.SetRotation(math.radians(4.0), 0.0, math.radians(-5.0))
    head_motion.SetTranslation((3.0, -2.0, 4.0))
    t1c_grid, axial_grid = scan_grid(**T1C_GRID), scan_grid(**AXIAL_GRID)
    sources = {"t1c": write_scan(tmp_path / "t1c.nii.gz", "t1c", t1c_grid),
               "t2": write_scan(tmp_path / "t2.nii.gz", "t2", axial_grid, head_motion.GetInverse()),
               "flair": write_scan(tmp_path / "flair.nii.gz", "flair", axial_grid)}
    label = write_tissue(tmp_path / "tumor.nii.gz", axial_grid, 4, head_motion.GetInverse())

    registered = convert_case(sources, tmp_path / "registered", substitutions={"t1": "t1c"}, label=label,
                              label_on="t2")
    unregistered = convert_case(sources, tmp_path / "unregistered", substitutions={"t1": "t1c"}, label=label,
                                label_on="t2", register=False)

    t2 = registered.registrations["t2"]
    assert t2.metric_after < t2.metric_before
    assert t2.warnings == []
    assert tumor_dice(registered) > 0.8
    assert tumor_dice(registered) > tumor_dice(unregistered) + 0.1


def tumor_dice(result) -> float:
    seg = np.asanyarray(nib.load(result.files["seg"]).dataobj) > 0
    tumor = np.asanyarray(nib.load(result.files["t1c"]).dataobj) == INTENSITY["t1c"][4]
    return 2 * np.count_nonzero(seg & tumor) / (np.count_nonzero(seg) + np.count_nonzero(tumor))


def test_cli_converts_and_lists(scans, tmp_path, capsys):
    status = main(["convert", "--t1c", str(scans["t1c"]), "--t2", str(scans["t2"]), "--flair", str(scans["flair"]),
                   "--substitute", "t1=t1c", "--no-registration", "--case-id", "P03", str(tmp_path / "case")])
    assert status == 0
    assert (tmp_path / "case" / "P03_flair.nii.gz").is_file()
    assert "conversion.json" in capsys.readouterr().out


def test_cli_reports_missing_modality(scans, tmp_path, capsys):
    status = main(["convert", "--t1c", str(scans["t1c"]), str(tmp_path / "case")])
    assert status == 2
    assert "no t1 scan given" in capsys.readouterr().err


def test_cli_failed_conversion_leaves_no_folder(scans, tmp_path, capsys):
    broken = write_unreadable_scan(tmp_path / "flair.nii.gz")
    status = main(["convert", "--t1c", str(scans["t1c"]), "--t2", str(scans["t2"]), "--flair", str(broken),
                   "--substitute", "t1=t1c", "--no-registration", str(tmp_path / "case")])
    assert status == 2
    assert "not a readable NIfTI file" in capsys.readouterr().err
    assert not (tmp_path / "case").exists()


def test_cli_substitute_needs_pair(scans, tmp_path, capsys):
    status = main(["convert", "--t1c", str(scans["t1c"]), "--substitute", "t1", str(tmp_path / "case")])
    assert status == 2
    assert "MISSING=SOURCE" in capsys.readouterr().err


def test_cli_list_needs_no_output(tmp_path, capsys):
    sitk_image = sitk.Image([4, 4, 1], sitk.sitkInt16)
    sitk_image.SetMetaData("0020|000e", "1.2.3.4")
    sitk_image.SetMetaData("0008|0060", "MR")
    sitk_image.SetMetaData("0008|103e", "t2_flair_tra")
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(tmp_path / "a.dcm"))
    writer.Execute(sitk_image)
    assert main(["convert", "--list", str(tmp_path)]) == 0
    assert "t2_flair_tra" in capsys.readouterr().out


def test_read_nifti_rejects_sheared_affine(tmp_path):
    affine = np.eye(4)
    affine[0, 1] = 0.5
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), affine), tmp_path / "sheared.nii.gz")
    with pytest.raises(ConversionError, match="shear"):
        read_nifti(tmp_path / "sheared.nii.gz")
