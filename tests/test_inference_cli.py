"""`gliomaseg predict` end to end with small AlbuNet checkpoints on synthetic cases."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from gliomaseg import inference
from gliomaseg.cli import main
from gliomaseg.inference import PredictionSummary
from gliomaseg.data.synthetic import make_synthetic_dataset
from gliomaseg.models import build_model, save_checkpoint

SHAPE = (40, 40, 24)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for name, patch in (("albunet2d", [32, 32]), ("albunet3d", [4, 32, 32])):
        model = build_model(name, encoder="resnet18", encoder_weights="none")
        metadata = {"channels": ["flair", "t1c", "t2"], "label_schema": "brats2017", "patch_size": patch}
        paths[name] = save_checkpoint(folder / f"{name}.safetensors", model, metadata)
    return paths


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("cases"), 2, shape=SHAPE)


@pytest.mark.parametrize("name", ["albunet2d", "albunet3d"])
def test_cli_predict_writes_label_maps(checkpoints, dataset, tmp_path, name):
    output = tmp_path / "out"

    status = main(["predict", "--model", str(checkpoints[name]), str(dataset), str(output), "--step", "32", "--no-progress"])

    assert status == 0
    for case_id in ("Synth_000", "Synth_001"):
        image = nib.load(str(output / f"{case_id}.nii.gz"))
        source = nib.load(str(dataset / case_id / f"{case_id}_flair.nii.gz"))
        report = json.loads((output / f"{case_id}.json").read_text())
        assert image.shape == source.shape
        np.testing.assert_array_equal(image.affine, source.affine)
        assert set(np.unique(np.asarray(image.dataobj)).tolist()) <= {0, 1, 2, 4}
        assert report["checkpoint"]["model"] == name
        assert report["checkpoint"]["path"] == str(checkpoints[name])


def test_cli_predict_broken_case_exit_status(checkpoints, tmp_path, capsys):
    cases = make_synthetic_dataset(tmp_path / "cases", 2, shape=SHAPE)
    broken = cases / "Synth_000" / "Synth_000_flair.nii.gz"
    broken.write_bytes(b"not a NIfTI file")
    output = tmp_path / "out"

    status = main(["predict", "--model", str(checkpoints["albunet2d"]), str(cases), str(output), "--step", "32", "--no-progress"])

    printed = capsys.readouterr().out
    assert status == 1
    assert "1 done, 0 skipped, 1 failed" in printed
    assert "Synth_000" in printed
    assert (output / "Synth_001.nii.gz").exists()


def test_cli_predict_rejects_bad_substitute(checkpoints, dataset, tmp_path, capsys):
    status = main(["predict", "--model", str(checkpoints["albunet2d"]), str(dataset), str(tmp_path), "--substitute", "t1"])

    assert status == 2
    assert "MISSING=SOURCE" in capsys.readouterr().err


def test_cli_predict_rejects_missing_checkpoint(dataset, tmp_path, capsys):
    status = main(["predict", "--model", str(tmp_path / "absent.safetensors"), str(dataset), str(tmp_path / "out")])

    assert status == 2
    assert "absent.safetensors" in capsys.readouterr().err


def test_cli_rejects_fp16_on_cpu(tmp_path, capsys):
    from gliomaseg.cli import main

    code = main(["predict", "--model", str(tmp_path / "m.safetensors"), str(tmp_path), str(tmp_path / "out"), "--precision", "fp16", "--device", "cpu"])
    assert code == 2
    assert "fp16 needs a CUDA GPU" in capsys.readouterr().err


def test_cli_predict_passes_compile_and_precision(monkeypatch, tmp_path):
    seen = {}

    def fake_predict_cases(model, input_path, output, settings, **kwargs):
        seen["settings"] = settings
        return PredictionSummary()

    monkeypatch.setattr(inference, "predict_cases", fake_predict_cases)

    status = main(["predict", "--model", "m.safetensors", str(tmp_path), str(tmp_path / "out"), "--compile"])

    assert status == 0
    assert seen["settings"].compile is True
    assert seen["settings"].precision == "auto"
