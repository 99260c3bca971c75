"""Checkpoints: safetensors weights with JSON metadata, exact round trip, mismatch and corruption errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import gliomaseg
from gliomaseg.models import (
    CheckpointError,
    CheckpointMismatchError,
    build_model,
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)
from gliomaseg.models.checkpoint import FORMAT_VERSION, METADATA_KEY

CHANNELS = ["flair", "t1c", "t2"]
METADATA = {
    "channels": CHANNELS,
    "label_schema": "brats2017",
    "patch_size": [3, 32, 32],
    "training": {"lr": 1e-3, "epochs": 50},
    "run_id": "seed-1",
}


@pytest.fixture(scope="module")
def trained_model():
    """A small AlbuNet3D with weights and batch-norm statistics moved away from their initial values."""
    torch.manual_seed(0)
    model = build_model("albunet3d", encoder="resnet18", encoder_weights="none", num_filters=4)
    with torch.no_grad():
        model.train()
        model(torch.randn(2, 3, 3, 32, 32))  # updates running statistics
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(trained_model, tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors", trained_model, METADATA)


def test_checkpoint_round_trip_is_bit_identical(trained_model, checkpoint):
    volume = torch.randn(1, 3, 3, 32, 32)
    loaded, _ = load_checkpoint(checkpoint)

    with torch.no_grad():
        expected = trained_model(volume)
        actual = loaded(volume)

    assert not loaded.training
    assert torch.equal(actual, expected)
    for key, tensor in trained_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_checkpoint_metadata_contents(trained_model, checkpoint):
    metadata = read_checkpoint_metadata(checkpoint)

    assert metadata["format_version"] == FORMAT_VERSION
    assert metadata["model"] == {"name": "albunet3d", "params": trained_model.config}
    assert metadata["channels"] == CHANNELS
    assert metadata["in_channels"] == 3
    assert metadata["num_classes"] == 4
    assert metadata["normalization"] == "zscore_brain"
    assert metadata["label_schema"] == "brats2017"
    assert metadata["patch_size"] == [3, 32, 32]
    assert metadata["training"] == {"lr": 1e-3, "epochs": 50}
    assert metadata["gliomaseg_version"] == gliomaseg.__version__
    assert metadata["extra"] == {"run_id": "seed-1"}
    assert metadata["created"].endswith("+00:00")


def test_checkpoint_is_safetensors_with_json_header(checkpoint):
    header_length = int.from_bytes(checkpoint.read_bytes()[:8], "little")
    header = json.loads(checkpoint.read_bytes()[8 : 8 + header_length])

    assert json.loads(header["__metadata__"][METADATA_KEY])["model"]["name"] == "albunet3d"


def test_checkpoint_other_channel_order_rejected(checkpoint):
    with pytest.raises(CheckpointMismatchError) as caught:
        load_checkpoint(checkpoint, expected={"channels": ["t1c", "t2", "flair"]})

    assert "channels is ['flair', 't1c', 't2'] but ['t1c', 't2', 'flair'] was expected" in str(caught.value)


def test_checkpoint_other_architecture_rejected(checkpoint):
    with pytest.raises(CheckpointMismatchError, match="model is 'albunet3d' but 'albunet2d'"):
        load_checkpoint(checkpoint, expected={"model": "albunet2d"})
    with pytest.raises(CheckpointMismatchError, match="encoder is 'resnet18' but 'resnet34'"):
        load_checkpoint(checkpoint, expected={"encoder": "resnet34"})


def test_checkpoint_matching_expectations_accepted(checkpoint):
    _, metadata = load_checkpoint(
        checkpoint,
        expected={"channels": tuple(CHANNELS), "model": {"name": "albunet3d", "encoder": "resnet18"}, "patch_size": (3, 32, 32)},
    )

    assert metadata["label_schema"] == "brats2017"


def test_checkpoint_mismatch_is_value_error():
    assert issubclass(CheckpointMismatchError, ValueError)


def test_checkpoint_truncated_file_rejected(checkpoint, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(checkpoint.read_bytes()[:-1000])

    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)


def test_checkpoint_garbage_file_rejected(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)

    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_checkpoint_metadata(garbage)


def test_checkpoint_missing_file_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_checkpoint_foreign_safetensors_rejected(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, foreign)

    with pytest.raises(CheckpointError, match="not a gliomaseg checkpoint"):
        load_checkpoint(foreign)


def test_checkpoint_newer_format_rejected(tmp_path):
    future = tmp_path / "future.safetensors"
    header = {"format_version": FORMAT_VERSION + 1, "model": {"name": "albunet3d", "params": {}}, "channels": CHANNELS}
    save_file({"weight": torch.zeros(2)}, future, metadata={METADATA_KEY: json.dumps(header)})

    with pytest.raises(CheckpointError, match="upgrade gliomaseg"):
        read_checkpoint_metadata(future)


def test_checkpoint_weights_of_other_architecture_rejected(trained_model, checkpoint, tmp_path):
    metadata = read_checkpoint_metadata(checkpoint)
    metadata["model"]["params"]["num_filters"] = 8
    forged = tmp_path / "forged.safetensors"
    state = {key: tensor.contiguous() for key, tensor in trained_model.state_dict().items()}
    save_file(state, forged, metadata={METADATA_KEY: json.dumps(metadata)})

    with pytest.raises(CheckpointError, match="do not fit model albunet3d"):
        load_checkpoint(forged)


def test_save_checkpoint_leaves_no_temporary_files(trained_model, tmp_path):
    save_checkpoint(tmp_path / "a.safetensors", trained_model, METADATA)
    save_checkpoint(tmp_path / "a.safetensors", trained_model, METADATA)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_save_checkpoint_requires_channels(trained_model, tmp_path):
    with pytest.raises(ValueError, match="missing \\['channels'\\]"):
        save_checkpoint(tmp_path / "a.safetensors", trained_model, {"label_schema": "brats2017", "patch_size": [1, 32, 32]})


def test_save_checkpoint_rejects_channel_count_mismatch(trained_model, tmp_path):
    with pytest.raises(ValueError, match="3 input channels"):
        save_checkpoint(tmp_path / "a.safetensors", trained_model, {**METADATA, "channels": ["flair", "t1c", "t2", "t1"]})


def test_save_checkpoint_rejects_other_suffix(trained_model, tmp_path):
    with pytest.raises(ValueError, match="must end in .safetensors"):
        save_checkpoint(tmp_path / "model.pth", trained_model, METADATA)


def test_save_checkpoint_rejects_unnamed_model(tmp_path):
    with pytest.raises(TypeError, match="build_model"):
        save_checkpoint(tmp_path / "a.safetensors", torch.nn.Linear(2, 2), METADATA)
