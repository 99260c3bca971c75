"""Training configurations: shipped files, overrides and validation."""

from __future__ import annotations

import pytest
import yaml

from gliomaseg.training.config import ConfigError, parse_overrides, resolve_config, shipped_configs

PAPER_VARIANTS = ("albunet2d_imagenet", "albunet2d_scratch", "albunet3d_imagenet", "albunet3d_scratch")
DATASET = {"data.dataset": "cases"}


def test_shipped_configs_include_paper_variants():
    assert set(PAPER_VARIANTS) <= set(shipped_configs())


@pytest.mark.parametrize("name", PAPER_VARIANTS)
def test_shipped_config_resolves_with_paper_settings(name):
    config, resolved_name = resolve_config(name, DATASET)
    two_d = name.startswith("albunet2d")
    assert resolved_name == name
    assert config["model"]["name"] == ("albunet2d" if two_d else "albunet3d")
    assert config["patches"]["size"] == ([1, 128, 128] if two_d else [24, 128, 128])
    assert config["patches"]["batch_size"] == (64 if two_d else 24)
    assert config["optimizer"] == {"lr": 1.0e-3, "weight_decay": 0.0}
    assert config["training"]["epochs"] == 50
    assert config["training"]["batches_per_epoch"] == 100
    assert config["loss"]["include_background"] is False
    assert config["data"]["channels"] == ["flair", "t1c", "t2"]


@pytest.mark.parametrize("name", PAPER_VARIANTS)
def test_shipped_config_encoder_weights_match_name(name):
    config, _ = resolve_config(name, DATASET)
    expected = "imagenet" if name.endswith("imagenet") else None
    assert config["model"]["params"]["encoder_weights"] == expected


def test_overrides_parse_yaml_values():
    nested = parse_overrides(["training.epochs=3", "patches.size=[1, 64, 64]", "training.max_minutes=0.5", "model.params.encoder_weights=null"])
    assert nested["training"] == {"epochs": 3, "max_minutes": 0.5}
    assert nested["patches"]["size"] == [1, 64, 64]
    assert nested["model"]["params"]["encoder_weights"] is None


def test_overrides_change_resolved_config():
    config, _ = resolve_config("albunet3d_scratch", ["training.epochs=2", "data.dataset=/data/brats"])
    assert config["training"]["epochs"] == 2
    assert config["data"]["dataset"] == "/data/brats"


def test_yaml_file_source_keeps_defaults(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump({"data": {"dataset": "x"}, "training": {"epochs": 4}}))
    config, name = resolve_config(path)
    assert name == "small"
    assert config["training"]["epochs"] == 4
    assert config["training"]["batches_per_epoch"] == 100


def test_model_params_accept_new_keys():
    config, _ = resolve_config("albunet2d_scratch", {**DATASET, "model.params.encoder": "resnet18"})
    assert config["model"]["params"]["encoder"] == "resnet18"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["training.epoch=3"], "unknown configuration key 'training.epoch'"),
        (["training.epochs=0"], "training.epochs"),
        (["patches.size=[1, 64]"], "patches.size"),
        (["patches.size=[4, 64, 64]"], "albunet2d takes 2D patches"),
        (["training.device=tpu"], "training.device"),
        (["data.validation_fraction=1.0"], "validation_fraction"),
        (["training.precision=8-bit"], "training.precision"),
        (["epochs"], "key=value"),
    ],
)
def test_invalid_override_is_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("albunet2d_scratch", ["data.dataset=x", *overrides])


def test_missing_dataset_says_how_to_set_it():
    with pytest.raises(ConfigError, match="data.dataset=PATH"):
        resolve_config({})


def test_unknown_config_name_lists_shipped():
    with pytest.raises(ConfigError, match="albunet2d_imagenet"):
        resolve_config("albunet9d")
