import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from gliomaseg.data.cases import CaseError, discover_cases, load_case_volumes
from gliomaseg.data.synthetic import make_synthetic_case, make_synthetic_dataset


def test_brats2017_dataset_discovered(synthetic_dataset):
    cases = discover_cases(synthetic_dataset)
    assert [c.case_id for c in cases] == ["Synth_000", "Synth_001", "Synth_002", "Synth_003"]
    assert cases[0].layout == "brats2017"
    assert cases[0].schema.name == "brats2017"
    assert cases[0].modalities == ("t1", "t1c", "t2", "flair")
    assert cases[0].label_path.name == "Synth_000_seg.nii.gz"


def test_single_case_folder_discovered(synthetic_dataset):
    cases = discover_cases(synthetic_dataset / "Synth_002")
    assert [c.case_id for c in cases] == ["Synth_002"]


def test_uncompressed_nii_discovered(tmp_path):
    folder = make_synthetic_case(tmp_path, "P1", shape=(16, 16, 8))
    for path in folder.glob("*.nii.gz"):
        nib.save(nib.load(path), path.with_name(path.name[: -len(".gz")]))
        path.unlink()
    case = discover_cases(folder)[0]
    assert case.images["flair"].path.name == "P1_flair.nii"
    assert case.label_path.name == "P1_seg.nii"


def test_brats2023_layout(tmp_path):
    make_synthetic_dataset(tmp_path, 2, shape=(16, 16, 8), layout="brats2023")
    case = discover_cases(tmp_path)[0]
    assert case.layout == "brats2023"
    assert case.schema.name == "brats2023"
    assert case.images["flair"].path.name == "Synth_000-t2f.nii.gz"


def test_msd_layout_uses_dataset_json_channel_order(tmp_path):
    make_synthetic_dataset(tmp_path, 2, shape=(16, 16, 8), layout="msd")
    case = discover_cases(tmp_path)[0]
    assert case.layout == "msd"
    assert case.schema.name == "msd"
    assert case.images["flair"].channel == 0
    assert case.images["t1c"].channel == 2
    volumes, label = load_case_volumes(case)
    assert volumes["t2"].shape == (16, 16, 8)
    assert label is not None


def test_manifest_layout(tmp_path):
    folder = make_synthetic_case(tmp_path, "patient7", shape=(16, 16, 8), layout="manifest")
    case = discover_cases(folder)[0]
    assert case.layout == "manifest"
    assert case.case_id == "patient7"
    assert case.images["t1c"].path.name == "T1C_scan.nii.gz"


def test_manifest_with_unknown_modality(tmp_path):
    (tmp_path / "case.json").write_text(json.dumps({"images": {"dwi": "dwi.nii.gz"}}))
    with pytest.raises(CaseError, match="unknown modality 'dwi'"):
        discover_cases(tmp_path)


def test_schema_override(synthetic_dataset):
    assert discover_cases(synthetic_dataset, schema="brats2023")[0].schema.name == "brats2023"


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(CaseError, match="no case found.*empty"):
        discover_cases(tmp_path)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(CaseError, match="no such file or folder"):
        discover_cases(tmp_path / "nowhere")


def test_missing_modality_named(tmp_path):
    folder = make_synthetic_case(tmp_path, "P1", shape=(16, 16, 8))
    (folder / "P1_t1ce.nii.gz").unlink()
    case = discover_cases(folder)[0]
    assert case.missing == {"t1c": "P1_t1ce.nii.gz"}
    with pytest.raises(CaseError, match="modality t1c is missing.*P1_t1ce.nii.gz"):
        load_case_volumes(case, ("flair", "t1c", "t2"))


def test_missing_t1_substituted(tmp_path):
    folder = make_synthetic_case(tmp_path, "P1", shape=(16, 16, 8))
    (folder / "P1_t1.nii.gz").unlink()
    case = discover_cases(folder)[0]
    volumes, _ = load_case_volumes(case, ("t1", "t1c"), substitute={"t1": "t1c"})
    assert np.array_equal(volumes["t1"].array, volumes["t1c"].array)


def test_shape_mismatch_named(tmp_path):
    folder = make_synthetic_case(tmp_path, "P1", shape=(16, 16, 8))
    other = make_synthetic_case(tmp_path / "other", "P1", shape=(16, 16, 9))
    shutil.copy(other / "P1_t2.nii.gz", folder / "P1_t2.nii.gz")
    with pytest.raises(CaseError, match=r"P1_t2.nii.gz has shape \(16, 16, 9\)"):
        load_case_volumes(discover_cases(folder)[0])


def test_affine_mismatch_named(tmp_path):
    folder = make_synthetic_case(tmp_path, "P1", shape=(16, 16, 8))
    path = folder / "P1_flair.nii.gz"
    image = nib.load(path)
    affine = image.affine.copy()
    affine[0, 3] += 2.0
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), affine, image.header), path)
    with pytest.raises(CaseError, match="affine of flair image .*differs .* by up to 2 mm"):
        load_case_volumes(discover_cases(folder)[0])


def test_discovery_does_not_modify_inputs(synthetic_dataset):
    before = {p: p.stat().st_mtime_ns for p in synthetic_dataset.rglob("*")}
    for case in discover_cases(synthetic_dataset):
        load_case_volumes(case)
    after = {p: p.stat().st_mtime_ns for p in synthetic_dataset.rglob("*")}
    assert before == after


def test_nested_hgg_lgg_folders_discovered(tmp_path):
    make_synthetic_case(tmp_path / "HGG", "Brats18_A_1", shape=(16, 16, 8))
    make_synthetic_case(tmp_path / "LGG", "Brats18_B_1", shape=(16, 16, 8))
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["Brats18_A_1", "Brats18_B_1"]
