import nibabel as nib
import numpy as np

from gliomaseg.cli import main
from gliomaseg.data.synthetic import make_synthetic_case, make_synthetic_dataset
from gliomaseg.data.validate import validate_path


def test_validate_cli_ok(synthetic_dataset, capsys):
    assert main(["validate", str(synthetic_dataset)]) == 0
    out = capsys.readouterr().out
    assert "Synth_003" in out
    assert "4 of 4 case(s) usable" in out
    assert "64x64x40" in out
    assert "LPS" in out


def test_validate_reports_label_outside_schema(tmp_path, capsys):
    make_synthetic_dataset(tmp_path, 1, shape=(16, 16, 8), layout="brats2023", schema="brats2017")
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "Synth_000-seg.nii.gz" in out
    assert "[4]" in out
    assert "brats2023" in out


def test_validate_schema_override_accepts(tmp_path):
    make_synthetic_dataset(tmp_path, 1, shape=(16, 16, 8), layout="brats2023", schema="brats2017")
    assert all(r.usable for r in validate_path(tmp_path, schema="brats2017"))


def test_validate_reports_missing_modality(tmp_path):
    folder = make_synthetic_case(tmp_path, "P1", shape=(16, 16, 8))
    (folder / "P1_flair.nii.gz").unlink()
    report = validate_path(folder)[0]
    assert not report.usable
    assert "missing flair (expected P1_flair.nii.gz)" in report.problems[0]


def test_validate_reports_all_zero_volume(tmp_path):
    folder = make_synthetic_case(tmp_path, "P1", shape=(16, 16, 8))
    path = folder / "P1_t2.nii.gz"
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.int16), image.affine, image.header), path)
    report = validate_path(folder)[0]
    assert "P1_t2.nii.gz: every voxel" in report.problems[0]


def test_validate_empty_folder_exit_code(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 2
    assert "no case found" in capsys.readouterr().err


def test_validate_continues_after_bad_case(tmp_path):
    make_synthetic_dataset(tmp_path, 2, shape=(16, 16, 8))
    (tmp_path / "Synth_000" / "Synth_000_t1.nii.gz").write_bytes(b"not an image")
    reports = validate_path(tmp_path)
    assert [r.usable for r in reports] == [False, True]


def test_validate_warns_about_skull_on_scans(tmp_path, capsys):
    make_synthetic_case(tmp_path, "Big", shape=(16, 16, 8), spacing=(20.0, 20.0, 20.0))
    reports = validate_path(tmp_path)
    assert reports[0].usable
    assert "skull-on" in reports[0].warnings[0]
    assert main(["validate", str(tmp_path)]) == 0
    assert "warning:" in capsys.readouterr().out
