"""Prediction of cases and cohorts on synthetic cases with small deterministic models."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from gliomaseg.data.labels import convert_labels, get_schema
from gliomaseg.data.synthetic import make_synthetic_case, make_synthetic_dataset
from gliomaseg.inference import sliding_window
from gliomaseg.inference import (
    ModelInputError,
    PredictionModel,
    PredictionSettings,
    Predictor,
    parse_shard,
    predict_case,
    predict_cases,
)

SHAPE = (48, 48, 32)
FAST = {"step": 8, "depth_step": 4, "device": "cpu", "batch_windows": 8}


class ContrastModel(nn.Module):
    """Thresholds on FLAIR and T1c plus a fixed random convolution that is not mirror-symmetric."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv3d(3, 4, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flair, t1c = x[:, 0:1], x[:, 1:2]
        pointwise = torch.cat([1.0 - flair, t1c - 1.0, flair - 0.5, 2 * t1c - 2.5], dim=1)
        return 3 * pointwise + self.conv(x)


def contrast_model(**overrides) -> PredictionModel:
    options = {
        "network": ContrastModel().eval(),
        "spatial_dims": 3,
        "channels": ("flair", "t1c", "t2"),
        "patch_size": (8, 16, 16),
    }
    options.update(overrides)
    return PredictionModel(**options)


def load(path: Path) -> nib.Nifti1Image:
    return nib.load(str(path))


def canonical_labels(path: Path) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(load(path)).dataobj)


@pytest.fixture
def case_folder(tmp_path) -> Path:
    return make_synthetic_case(tmp_path / "in", "Case_A", shape=SHAPE, spacing=(1.0, 1.2, 2.0), seed=3)


def test_predict_case_output_header_equals_input(case_folder, tmp_path):
    result = predict_case(contrast_model(), case_folder, tmp_path / "out", **FAST)

    output = load(result.label_map)
    source = load(case_folder / "Case_A_flair.nii.gz")
    assert result.status == "done"
    assert output.shape == source.shape
    np.testing.assert_array_equal(output.affine, source.affine)
    np.testing.assert_array_equal(output.get_qform(), source.get_qform())
    np.testing.assert_array_equal(output.get_sform(), source.get_sform())
    assert int(output.header["qform_code"]) == int(source.header["qform_code"])
    assert int(output.header["sform_code"]) == int(source.header["sform_code"])
    assert output.get_data_dtype() == np.uint8


def test_predict_case_labels_within_schema(case_folder, tmp_path):
    result = predict_case(contrast_model(), case_folder, tmp_path / "out", **FAST)

    values = set(np.unique(np.asarray(load(result.label_map).dataobj)).tolist())
    assert values <= set(get_schema("brats2017").allowed_values)
    assert len(values) >= 3, f"the test model should predict several classes, got {values}"


def test_predict_case_report_volumes(case_folder, tmp_path):
    result = predict_case(contrast_model(), case_folder, tmp_path / "out", **FAST)

    report = json.loads(result.report.read_text())
    labels = np.asarray(load(result.label_map).dataobj)
    voxel_mm3 = 1.0 * 1.2 * 2.0
    assert report["voxel_volume_mm3"] == pytest.approx(voxel_mm3)
    assert report["volumes_cm3"]["whole_tumor"] == pytest.approx((labels > 0).sum() * voxel_mm3 / 1000, abs=1e-4)
    assert report["volumes_cm3"]["tumor_core"] == pytest.approx(np.isin(labels, (1, 4)).sum() * voxel_mm3 / 1000, abs=1e-4)
    assert report["volumes_cm3"]["enhancing_tumor"] == pytest.approx((labels == 4).sum() * voxel_mm3 / 1000, abs=1e-4)
    assert report["checkpoint"]["channels"] == ["flair", "t1c", "t2"]
    assert report["settings"]["step_dhw"] == [4, 8, 8]
    assert set(report["timing_s"]) == {"preprocess", "sliding_window", "restore", "write", "total"}
    assert report["device"]["device"] == "cpu"


def test_predict_case_label_schema_option(case_folder, tmp_path):
    default = predict_case(contrast_model(), case_folder, tmp_path / "a", **FAST)
    chosen = predict_case(contrast_model(), case_folder, tmp_path / "b", label_schema="brats2023", **FAST)

    brats2017 = np.asarray(load(default.label_map).dataobj)
    brats2023 = np.asarray(load(chosen.label_map).dataobj)
    assert set(np.unique(brats2023).tolist()) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(brats2023, convert_labels(brats2017, "brats2017", "brats2023"))


@pytest.mark.parametrize("orientation", ["RAS", "LSA", "PIR"])
def test_predict_case_orientation_same_segmentation(tmp_path, orientation):
    reference_case = make_synthetic_case(tmp_path / "lps", "Case", shape=SHAPE, orientation="LPS", seed=5)
    other_case = make_synthetic_case(tmp_path / orientation, "Case", shape=SHAPE, orientation=orientation, seed=5)

    reference = predict_case(contrast_model(), reference_case, tmp_path / "out_lps", **FAST)
    other = predict_case(contrast_model(), other_case, tmp_path / f"out_{orientation}", **FAST)

    other_image = load(other.label_map)
    assert "".join(nib.aff2axcodes(other_image.affine)) == orientation
    np.testing.assert_array_equal(other_image.affine, load(other_case / "Case_flair.nii.gz").affine)
    np.testing.assert_array_equal(canonical_labels(other.label_map), canonical_labels(reference.label_map))


def test_predict_case_overlays_own_input(tmp_path):
    # A pointwise model that marks bright FLAIR voxels: the output must sit on those voxels.
    class FlairThreshold(nn.Module):
        def forward(self, x):
            flair = x[:, 0:1]
            return torch.cat([-flair, -10 * torch.ones_like(flair), flair - 1.0, -10 * torch.ones_like(flair)], dim=1)

    folder = make_synthetic_case(tmp_path / "in", "Case", shape=SHAPE, orientation="LSA", seed=2)
    model = contrast_model(network=FlairThreshold())

    result = predict_case(model, folder, tmp_path / "out", **FAST)

    labels = np.asarray(load(result.label_map).dataobj)
    flair = np.asarray(load(folder / "Case_flair.nii.gz").dataobj).astype(np.float64)
    brain = flair != 0
    z = (flair - flair[brain].mean()) / flair[brain].std()
    expected = np.where(brain & (z > 0.5), 2, 0)
    np.testing.assert_array_equal(labels, expected)


def test_predict_case_probabilities(case_folder, tmp_path):
    result = predict_case(contrast_model(), case_folder, tmp_path / "out", save_probabilities=True, **FAST)

    image = load(tmp_path / "out" / "Case_A_probabilities.nii.gz")
    probabilities = np.asarray(image.dataobj)
    labels = np.asarray(load(result.label_map).dataobj)
    assert probabilities.shape == (*SHAPE, 4)
    np.testing.assert_array_equal(image.affine, load(result.label_map).affine)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(convert_labels(labels, "brats2017", "brats2023"), probabilities.argmax(axis=-1))


def test_predict_case_tta_and_gaussian(case_folder, tmp_path):
    options = dict(FAST, step=16, depth_step=8)

    result = predict_case(contrast_model(), case_folder, tmp_path / "out", tta=True, gaussian=True, **options)

    report = json.loads(result.report.read_text())
    assert report["settings"]["mirror_axes"] == [0, 1, 2]
    assert report["settings"]["gaussian"] is True


def test_predict_case_memory_budget_sets_batch(case_folder, tmp_path):
    options = dict(FAST, batch_windows=None, max_memory_gb=0.001)

    result = predict_case(contrast_model(), case_folder, tmp_path / "out", **options)

    assert result.status == "done"


def test_predict_case_missing_modality_names_both(tmp_path):
    folder = make_synthetic_case(tmp_path / "in", "Case", shape=SHAPE, modalities=("t1", "t1c", "flair"))

    with pytest.raises(ModelInputError) as error:
        predict_case(contrast_model(), folder, tmp_path / "out", **FAST)

    message = str(error.value)
    assert "['flair', 't1c', 't2']" in message
    assert "['t1', 't1c', 'flair']" in message


def test_predict_case_substitute_missing_modality(tmp_path):
    folder = make_synthetic_case(tmp_path / "in", "Case", shape=SHAPE, modalities=("t1", "t1c", "flair"))

    result = predict_case(contrast_model(), folder, tmp_path / "out", substitute={"t2": "t1"}, **FAST)

    assert result.status == "done"


def test_predict_case_rejects_output_over_input(tmp_path):
    folder = make_synthetic_case(tmp_path / "in", "Case", shape=SHAPE, layout="manifest")
    manifest = json.loads((folder / "case.json").read_text())
    manifest["case_id"] = "FLAIR_scan"
    (folder / "case.json").write_text(json.dumps(manifest))
    before = (folder / "FLAIR_scan.nii.gz").read_bytes()

    with pytest.raises(ValueError, match="is an input file"):
        predict_case(contrast_model(), folder, folder, overwrite=True, **FAST)

    assert (folder / "FLAIR_scan.nii.gz").read_bytes() == before


def test_predict_cases_skips_existing_outputs(tmp_path):
    dataset = make_synthetic_dataset(tmp_path / "in", 2, shape=SHAPE)
    first = predict_cases(contrast_model(), dataset, tmp_path / "out", progress=False, **FAST)

    second = predict_cases(contrast_model(), dataset, tmp_path / "out", progress=False, **FAST)
    third = predict_cases(contrast_model(), dataset, tmp_path / "out", progress=False, overwrite=True, **FAST)

    assert len(first.done) == 2
    assert len(second.skipped) == 2
    assert len(second.done) == 0
    assert len(third.done) == 2


def test_predict_cases_broken_case_reported(tmp_path):
    dataset = make_synthetic_dataset(tmp_path / "in", 3, shape=SHAPE)
    broken = dataset / "Synth_001" / "Synth_001_t1ce.nii.gz"
    broken.write_bytes(broken.read_bytes()[:200])

    summary = predict_cases(contrast_model(), dataset, tmp_path / "out", progress=False, **FAST)

    assert [r.case_id for r in summary.done] == ["Synth_000", "Synth_002"]
    assert [r.case_id for r in summary.failed] == ["Synth_001"]
    assert "Synth_001_t1ce.nii.gz" in summary.failed[0].reason
    assert not summary.ok
    assert "1 failed" in summary.format()
    assert not (tmp_path / "out" / "Synth_001.nii.gz").exists()


def test_predict_cases_shards_cover_all_once(tmp_path):
    dataset = make_synthetic_dataset(tmp_path / "in", 5, shape=(40, 40, 24))

    first = predict_cases(contrast_model(), dataset, tmp_path / "out", shard="0/2", progress=False, **FAST)
    second = predict_cases(contrast_model(), dataset, tmp_path / "out", shard="1/2", progress=False, **FAST)

    ids_first = {r.case_id for r in first.done}
    ids_second = {r.case_id for r in second.done}
    assert ids_first.isdisjoint(ids_second)
    assert ids_first | ids_second == {f"Synth_{i:03d}" for i in range(5)}
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 5


def test_parse_shard_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")

    assert parse_shard(None) == (3, 4)
    assert parse_shard("1/2") == (1, 2)


def test_parse_shard_rejects_index_out_of_range():
    with pytest.raises(ValueError, match="INDEX"):
        parse_shard("2/2")


def test_parse_shard_rejects_text():
    with pytest.raises(ValueError, match="INDEX/COUNT"):
        parse_shard("first")


def test_predict_case_window_shrinks_to_volume(case_folder, tmp_path):
    result = predict_case(contrast_model(), case_folder, tmp_path / "out", window=(8, 999, 999), **FAST)

    report = json.loads(result.report.read_text())
    cropped = report["cropped_shape_dhw"]
    assert report["settings"]["window"] == [8, cropped[1], cropped[2]]
    assert report["windows"] == len(range(0, cropped[0] - 8, 4)) + 1


def test_predict_case_window_not_below_patch(case_folder, tmp_path):
    result = predict_case(contrast_model(), case_folder, tmp_path / "out", window=(2, 4, 4), **FAST)

    report = json.loads(result.report.read_text())
    assert report["settings"]["window"] == [8, 16, 16]


@pytest.mark.realdata
def test_predict_case_real_brats_case_geometry(tmp_path):
    folder = Path(__file__).parents[1] / ".." / "shared" / "data" / "deepbrainseg_brats2018" / "brats" / "Brats18_2013_11_1"
    if not folder.exists():
        pytest.skip(f"real data not available: {folder} is absent")

    result = predict_case(contrast_model(patch_size=(24, 128, 128)), folder, tmp_path, step=128, device="cpu")

    output = load(result.label_map)
    source = load(folder / "Brats18_2013_11_1_flair.nii.gz")
    report = json.loads(result.report.read_text())
    assert output.shape == source.shape == (240, 240, 155)
    np.testing.assert_array_equal(output.affine, source.affine)
    np.testing.assert_array_equal(output.get_sform(), source.get_sform())
    assert set(np.unique(np.asarray(output.dataobj)).tolist()) <= {0, 1, 2, 4}
    assert report["cropped_shape_dhw"] == [143, 165, 143]


def test_labels_outside_brain_are_background(tmp_path):
    import nibabel as nib
    import numpy as np
    import torch

    from gliomaseg.data.synthetic import make_synthetic_case
    from gliomaseg.inference.model import PredictionModel
    from gliomaseg.inference.predict import predict_case

    class AlwaysEdema(torch.nn.Module):
        def forward(self, x):
            logits = torch.zeros((x.shape[0], 4, *x.shape[2:]), dtype=x.dtype)
            logits[:, 2] = 1.0
            return logits

    folder = make_synthetic_case(tmp_path / "in", "P", shape=(32, 32, 16))
    model = PredictionModel(AlwaysEdema(), spatial_dims=2, channels=("flair", "t1c", "t2"), patch_size=(1, 32, 32))
    for keep, name in ((False, "masked"), (True, "kept")):
        predict_case(model, folder, tmp_path / name, mask_outside_brain=not keep)
    brain = np.zeros((32, 32, 16), bool)
    for modality in ("flair", "t1ce", "t2"):
        brain |= np.asanyarray(nib.load(folder / f"P_{modality}.nii.gz").dataobj) != 0
    masked = np.asanyarray(nib.load(tmp_path / "masked" / "P.nii.gz").dataobj)
    kept = np.asanyarray(nib.load(tmp_path / "kept" / "P.nii.gz").dataobj)
    assert np.all(masked[~brain] == 0)
    assert np.all(masked[brain] == 2)
    assert np.any(kept[~brain] == 2)


def test_run_folder_resolves_to_best_checkpoint(tmp_path):
    from gliomaseg.inference.model import resolve_checkpoint_path

    (tmp_path / "last.safetensors").write_bytes(b"")
    assert resolve_checkpoint_path(tmp_path) == tmp_path / "last.safetensors"
    (tmp_path / "best.safetensors").write_bytes(b"")
    assert resolve_checkpoint_path(tmp_path) == tmp_path / "best.safetensors"


def test_run_folder_without_checkpoint_named(tmp_path):
    from gliomaseg.inference.model import resolve_checkpoint_path

    with pytest.raises(FileNotFoundError, match="best.safetensors or last.safetensors"):
        resolve_checkpoint_path(tmp_path)


def test_output_that_is_a_file_rejected_early(tmp_path):
    from gliomaseg.data.synthetic import make_synthetic_case
    from gliomaseg.inference.predict import select_cohort

    folder = make_synthetic_case(tmp_path / "in", "P", shape=(16, 16, 8))
    target = tmp_path / "notes.txt"
    target.write_text("keep")
    with pytest.raises(ValueError, match="is a file"):
        select_cohort(folder, target, (0, 1))
    assert target.read_text() == "keep"


def test_predict_case_auto_precision_recorded(case_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(sliding_window, "cpu_has_native_bf16", lambda: False)

    result = predict_case(contrast_model(), case_folder, tmp_path / "out", **FAST)

    settings = json.loads(result.report.read_text())["settings"]
    assert settings["precision"] == "auto"
    assert settings["precision_used"] == "fp32"


@pytest.mark.slow
def test_predict_case_compiled_same_labels(case_folder, tmp_path):
    eager = predict_case(contrast_model(), case_folder, tmp_path / "eager", precision="fp32", **FAST)
    compiled = predict_case(contrast_model(), case_folder, tmp_path / "compiled", precision="fp32", compile=True, **FAST)

    np.testing.assert_array_equal(np.asarray(load(compiled.label_map).dataobj), np.asarray(load(eager.label_map).dataobj))
    assert json.loads(compiled.report.read_text())["settings"]["compile"] is True


def test_compiled_predictor_batch_is_one_power_of_two():
    predictor = Predictor(contrast_model(), PredictionSettings(device="cpu", compile=True, max_memory_gb=0.05))

    batches = {predictor.batch_windows(shape) for shape in ((8, 16, 16), (20, 40, 40), (30, 50, 45))}

    assert len(batches) == 1
    batch = batches.pop()
    assert batch & (batch - 1) == 0


def test_eager_predictor_batch_not_above_window_count():
    predictor = Predictor(contrast_model(), PredictionSettings(device="cpu", max_memory_gb=0.05))

    assert predictor.batch_windows((8, 16, 16)) == 1
