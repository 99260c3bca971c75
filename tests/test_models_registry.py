"""Model registry: registration, lookup, rebuilding from config, and the summary table."""

from __future__ import annotations

import pytest
from torch import nn

from gliomaseg.models import build_model, list_models, register_model, summary
from gliomaseg.models import registry


@pytest.fixture
def clean_registry(monkeypatch):
    """The registry with its built-in models, restored after the test."""
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    list_models()


class TinyNet(nn.Module):
    def __init__(self, *, width: int = 2) -> None:
        super().__init__()
        self.layer = nn.Linear(width, width)
        self.width = width

    @property
    def config(self) -> dict:
        return {"width": self.width}


def test_list_models_contains_albunets():
    assert {"albunet2d", "albunet3d"} <= set(list_models())


def test_register_model_class_sets_name(clean_registry):
    register_model("tinynet")(TinyNet)

    model = build_model("tinynet", width=3)

    assert model.model_name == "tinynet"
    assert build_model("tinynet", **model.config).layer.in_features == 3


def test_register_model_function_sets_name_on_instance(clean_registry):
    @register_model("tinynet-wide")
    def wide(**params):
        return TinyNet(width=8)

    assert build_model("tinynet-wide").model_name == "tinynet-wide"


def test_register_model_duplicate_name_rejected(clean_registry):
    register_model("tinynet")(TinyNet)

    with pytest.raises(ValueError, match="already registered"):
        register_model("tinynet")(nn.Identity)


def test_build_model_unknown_name_lists_models():
    with pytest.raises(ValueError, match="registered models: .*albunet2d, albunet3d"):
        build_model("unet")


def test_build_model_unknown_parameter_rejected():
    with pytest.raises(TypeError, match="depth_layers"):
        build_model("albunet2d", encoder_weights="none", depth_layers=(1,))


def test_summary_lists_submodules_and_total():
    model = build_model("albunet2d", encoder="resnet18", encoder_weights="none", num_filters=4)
    text = summary(model)
    total = sum(p.numel() for p in model.parameters())

    assert text.splitlines()[0] == "albunet2d (AlbuNet2D)"
    assert '"encoder": "resnet18"' in text
    assert "decoder.dec5" in text
    assert f"{total:,}" in text.splitlines()[-2]
