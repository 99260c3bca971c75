"""AlbuNet2D and AlbuNet3D with a ResNet34 encoder: weights, shapes, 2D/3D equivalence, sizes, precision."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn

from gliomaseg.models import AlbuNet2D, AlbuNet3D, build_model, count_parameters, summary
from gliomaseg.models.convert import inflate_state_dict
from gliomaseg.models.weights import WeightsUnavailableError


def _randomised_resnet_state(constructor, seed: int) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict whose batch-norm tensors are far from their defaults."""
    torch.manual_seed(seed)
    resnet = constructor(weights=None)
    for module in resnet.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return resnet.state_dict()


@pytest.fixture(scope="module")
def resnet34_file(tmp_path_factory) -> Path:
    """A torchvision-format ResNet34 state dict written to a temporary file."""
    path = tmp_path_factory.mktemp("weights") / "resnet34.pth"
    torch.save(_randomised_resnet_state(torchvision.models.resnet34, seed=3), path)
    return path


@pytest.fixture(scope="module")
def resnet34_state(resnet34_file) -> dict[str, torch.Tensor]:
    return torch.load(resnet34_file, weights_only=True)


@pytest.fixture(scope="module")
def albunet3d(resnet34_file) -> AlbuNet3D:
    torch.manual_seed(0)
    return AlbuNet3D(encoder_weights=resnet34_file).eval()


@pytest.fixture(scope="module")
def small_albunet3d() -> AlbuNet3D:
    """AlbuNet3D with a ResNet18 encoder and 4 base filters, for shape tests that need no ResNet34."""
    torch.manual_seed(0)
    return AlbuNet3D(encoder="resnet18", encoder_weights="none", num_filters=4).eval()


def test_albunet3d_encoder_weights_equal_resnet34(albunet3d, resnet34_state):
    encoder_state = albunet3d.encoder.state_dict()
    expected_keys = {key for key in resnet34_state if not key.startswith("fc.")}

    assert set(encoder_state) == expected_keys
    for key in sorted(expected_keys):
        source = resnet34_state[key]
        loaded = encoder_state[key]
        if key.endswith("conv1.weight") or ".conv" in key or "downsample.0" in key:
            assert loaded.shape == (*source.shape[:2], 1, *source.shape[2:]), key
            loaded = loaded.squeeze(2)
        assert torch.equal(loaded, source), key


def test_albunet3d_encoder_convolutions_count_33_plus_downsampling(albunet3d):
    convs = [m for m in albunet3d.encoder.modules() if isinstance(m, nn.Conv3d)]
    downsampling = [m for m in convs if m.kernel_size == (1, 1, 1)]

    assert len(convs) - len(downsampling) == 33
    assert len(downsampling) == 3
    assert all(m.kernel_size[0] == 1 and m.stride[0] == 1 for m in convs)
    assert all(m.bias is None for m in convs)


def test_albunet3d_stem_pool_is_2x2(albunet3d):
    pool = albunet3d.encoder.maxpool

    assert pool.kernel_size == (1, 2, 2)
    assert pool.stride == (1, 2, 2)


def test_albunet2d_weights_load_resnet34_file(resnet34_file, resnet34_state):
    model = AlbuNet2D(encoder_weights=resnet34_file)

    assert torch.equal(model.encoder.layer3[2].conv2.weight, resnet34_state["layer3.2.conv2.weight"])
    assert torch.equal(model.encoder.bn1.running_var, resnet34_state["bn1.running_var"])


def test_albunet3d_depth1_without_depth_layers_equals_2d():
    torch.manual_seed(1)
    model_2d = AlbuNet2D(encoder_weights="none")
    for module in model_2d.modules():  # non-default statistics make the comparison meaningful
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    torch.manual_seed(2)
    model_3d = AlbuNet3D(encoder_weights="none", depth_layers=())
    model_3d.load_state_dict(inflate_state_dict(model_2d.state_dict(), model_3d.state_dict()), strict=True)
    model_2d.eval()
    model_3d.eval()
    image = torch.randn(1, 3, 32, 64)

    with torch.no_grad():
        out_2d = model_2d(image)
        out_3d = model_3d(image.unsqueeze(2))

    assert out_3d.shape == (1, 4, 1, 32, 64)
    torch.testing.assert_close(out_3d.squeeze(2), out_2d, rtol=1e-5, atol=1e-5)


def test_albunet3d_same_seed_starts_from_2d_weights():
    torch.manual_seed(5)
    model_2d = AlbuNet2D(encoder_weights="none")
    torch.manual_seed(5)
    model_3d = AlbuNet3D(encoder_weights="none", depth_layers=())

    state_3d = model_3d.state_dict()
    for key, tensor in model_2d.state_dict().items():
        assert torch.equal(state_3d[key].reshape(tensor.shape), tensor), key


@pytest.mark.parametrize("depth", [1, 7, 24, 31])
def test_albunet3d_keeps_depth(small_albunet3d, depth):
    volume = torch.randn(1, 3, depth, 32, 32)

    with torch.no_grad():
        logits = small_albunet3d(volume)

    assert logits.shape == (1, 4, depth, 32, 32)


def test_albunet3d_depth_receptive_field_is_nine_slices(small_albunet3d):
    volume = torch.randn(1, 3, 6, 32, 32)
    changed = volume.clone()
    changed[:, :, 5] = torch.randn(1, 3, 32, 32)

    with torch.no_grad():
        before = small_albunet3d(volume)
        after = small_albunet3d(changed)

    # Four chained 3x1x1 layers reach 4 slices to each side.
    assert not torch.equal(before[:, :, 1], after[:, :, 1])
    assert torch.equal(before[:, :, 0], after[:, :, 0])


def test_albunet3d_without_depth_layers_is_slicewise():
    torch.manual_seed(0)
    model = AlbuNet3D(encoder="resnet18", encoder_weights="none", depth_layers=()).eval()
    volume = torch.randn(1, 3, 3, 32, 32)
    changed = volume.clone()
    changed[:, :, 2] += 1.0

    with torch.no_grad():
        before = model(volume)
        after = model(changed)

    assert torch.equal(before[:, :, :2], after[:, :, :2])


def test_albunet3d_depth_layers_selection():
    model = AlbuNet3D(encoder="resnet18", encoder_weights="none", depth_layers=(2, 4))

    assert isinstance(model.decoder.depth1, nn.Identity)
    assert isinstance(model.decoder.depth2[0], nn.Conv3d)
    assert model.decoder.depth2[0].kernel_size == (3, 1, 1)
    assert isinstance(model.decoder.depth3, nn.Identity)
    assert model.decoder.depth4[0].padding == (1, 0, 0)


def test_albunet3d_rejects_unknown_depth_layer():
    with pytest.raises(ValueError, match="depth_layers"):
        AlbuNet3D(encoder="resnet18", encoder_weights="none", depth_layers=(5,))


@pytest.fixture(scope="module")
def small_albunet2d() -> AlbuNet2D:
    torch.manual_seed(0)
    return AlbuNet2D(encoder="resnet18", encoder_weights="none", num_filters=4).eval()


@pytest.mark.parametrize("height, width", [(40, 72), (33, 32), (96, 50)])
def test_albunet2d_pads_and_crops_other_sizes(small_albunet2d, height, width):
    model = small_albunet2d
    image = torch.randn(1, 3, height, width)

    with torch.no_grad():
        logits = model(image)
        padded = model(torch.nn.functional.pad(image, (0, -width % 32, 0, -height % 32)))

    assert logits.shape == (1, 4, height, width)
    assert torch.equal(logits, padded[..., :height, :width])


def test_albunet2d_without_padding_rejects_other_sizes():
    model = AlbuNet2D(encoder="resnet18", encoder_weights="none", pad_input=False)

    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.randn(1, 3, 40, 64))


def test_albunet_rejects_wrong_layout():
    model = AlbuNet3D(encoder="resnet18", encoder_weights="none")

    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="3 input channels, got 4"):
        model(torch.randn(1, 4, 1, 32, 32))


def test_albunet3d_fourth_channel_keeps_rgb_filters(resnet34_file, resnet34_state):
    model = AlbuNet3D(encoder_weights=resnet34_file, in_channels=4)
    weight = model.encoder.conv1.weight.squeeze(2)
    rgb = resnet34_state["conv1.weight"]

    assert weight.shape == (64, 4, 7, 7)
    assert torch.equal(weight[:, :3], rgb)
    torch.testing.assert_close(weight[:, 3], rgb.mean(dim=1), rtol=0, atol=1e-7)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 4, 2, 32, 32)).shape == (1, 4, 2, 32, 32)


def test_albunet_rejects_fewer_than_three_channels():
    with pytest.raises(ValueError, match="in_channels=2"):
        AlbuNet2D(encoder="resnet18", encoder_weights="none", in_channels=2)


def test_albunet_imagenet_download_failure_explains_offline(monkeypatch, tmp_path):
    def fail(url, **kwargs):
        raise URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)

    with pytest.raises(WeightsUnavailableError) as caught:
        AlbuNet2D(encoder="resnet34", encoder_weights="imagenet")

    message = str(caught.value)
    assert "offline" in message
    assert "encoder_weights='/path/to/resnet34-b627a593.pth'" in message


def test_albunet_weights_file_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        AlbuNet2D(encoder_weights=tmp_path / "missing.pth")


def test_albunet_weights_file_of_other_resnet_raises(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)

    with pytest.raises(ValueError, match="do not fit"):
        AlbuNet2D(encoder="resnet34", encoder_weights=path)


def test_albunet_weights_file_with_code_is_not_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "hook": _randomised_resnet_state}, path)

    with pytest.raises(ValueError, match="could not be read"):
        AlbuNet2D(encoder_weights=path)


# Parameter counts from the layer definitions (weights + biases + batch-norm gamma/beta).
def _conv(in_channels: int, out_channels: int, taps: int, bias: bool) -> int:
    return in_channels * out_channels * taps + (out_channels if bias else 0)


def _bn(channels: int) -> int:
    return 2 * channels


def _resnet34_encoder_parameters(conv_bias: bool) -> int:
    total = _conv(3, 64, 49, conv_bias) + _bn(64)
    in_channels = 64
    for out_channels, blocks in [(64, 3), (128, 4), (256, 6), (512, 3)]:
        for block in range(blocks):
            total += _conv(in_channels, out_channels, 9, conv_bias) + _bn(out_channels)
            total += _conv(out_channels, out_channels, 9, conv_bias) + _bn(out_channels)
            if block == 0 and in_channels != out_channels:
                total += _conv(in_channels, out_channels, 1, conv_bias) + _bn(out_channels)
            in_channels = out_channels
    return total


def _decoder_parameters(depth_layers: tuple[int, ...], nf: int = 16, classes: int = 4) -> int:
    def conv_bn_relu(i, o):
        return _conv(i, o, 9, True) + _bn(o)

    def up(i, m, o):
        return conv_bn_relu(i, m) + _conv(m, o, 16, True)

    depth_channels = {1: 512, 2: nf * 8, 3: nf * 4, 4: nf}
    total = conv_bn_relu(512, nf * 8)
    total += up(nf * 8 + 512, nf * 16, nf * 8) + up(nf * 8 + 256, nf * 16, nf * 8)
    total += up(nf * 8 + 128, nf * 8, nf * 2) + up(nf * 2 + 64, nf * 4, nf * 4)
    total += up(nf * 4, nf * 4, nf) + conv_bn_relu(nf, nf) + _conv(nf, classes, 1, True)
    total += sum(_conv(depth_channels[i], depth_channels[i], 3, True) + _bn(depth_channels[i]) for i in depth_layers)
    return total


def test_albunet3d_parameter_count_matches_layer_definitions(albunet3d):
    expected = _resnet34_encoder_parameters(conv_bias=False) + _decoder_parameters((1, 2, 3, 4))

    assert count_parameters(albunet3d) == expected
    assert f"{expected:,}" in summary(albunet3d)


def test_albunet2d_parameter_count_matches_layer_definitions():
    model = AlbuNet2D(encoder_weights="none")
    expected = _resnet34_encoder_parameters(conv_bias=False) + _decoder_parameters(())

    assert count_parameters(model) == expected
    assert f"{expected:,}" in summary(model)


def test_albunet3d_with_code_biases_matches_published_count():
    model = AlbuNet3D(encoder_weights="none", encoder_conv_bias=True)

    # The published AlbuNet3D34 uses 26,681,684 parameters (its unused ResNet fc/conv1/bn1 excluded).
    assert count_parameters(model) == 26_681_684
    assert count_parameters(model) == _resnet34_encoder_parameters(conv_bias=True) + _decoder_parameters((1, 2, 3, 4))


def test_albunet_config_rebuilds_same_architecture(albunet3d):
    rebuilt = build_model("albunet3d", **{**albunet3d.config, "encoder_weights": "none"})

    assert rebuilt.config == {**albunet3d.config, "encoder_weights": "none"}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in albunet3d.state_dict().items()}


def test_albunet3d_bf16_autocast_forward(small_albunet3d):
    volume = torch.randn(1, 3, 2, 32, 32)

    with torch.no_grad():
        reference = small_albunet3d(volume)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = small_albunet3d(volume)

    assert logits.dtype == torch.bfloat16
    assert logits.shape == (1, 4, 2, 32, 32)
    torch.testing.assert_close(logits.float(), reference, rtol=0.1, atol=0.1 * reference.abs().max().item())


def test_albunet_channels_last_matches_default_layout():
    torch.manual_seed(0)
    model = AlbuNet3D(encoder="resnet18", encoder_weights="none", num_filters=4).eval()
    volume = torch.randn(1, 3, 2, 32, 32)

    with torch.no_grad():
        reference = model(volume)
        model_cl = model.to(memory_format=torch.channels_last_3d)
        logits = model_cl(volume.to(memory_format=torch.channels_last_3d))

    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)


def test_albunet3d_trains_one_step():
    torch.manual_seed(0)
    model = AlbuNet3D(encoder="resnet18", encoder_weights="none", num_filters=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    volume = torch.randn(1, 3, 2, 32, 32)
    target = torch.randint(0, 4, (1, 2, 32, 32))

    loss = nn.functional.cross_entropy(model(volume), target)
    loss.backward()
    optimizer.step()

    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
