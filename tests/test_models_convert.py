"""2D -> pseudo-3D conversion: every converted layer computes the 2D layer slice by slice."""

from __future__ import annotations

import pytest
import torch
from timm.layers import BatchNormAct2d, Conv2dSame
from torch import nn

from gliomaseg.models.convert import ConversionError, convert_to_pseudo3d, inflate_state_dict


def _slicewise(module_2d: nn.Module, volume: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to each slice of an (N, C, D, H, W) volume."""
    n, c, d, h, w = volume.shape
    slices = volume.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w)
    out = module_2d(slices)
    return out.reshape(n, d, *out.shape[1:]).permute(0, 2, 1, 3, 4)


def _assert_slicewise_equal(module_2d: nn.Module, shape=(2, 4, 3, 11, 13)) -> nn.Module:
    torch.manual_seed(0)
    volume = torch.randn(*shape)
    module_3d = convert_to_pseudo3d(module_2d)

    with torch.no_grad():
        expected = _slicewise(module_2d, volume)
        actual = module_3d(volume)

    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    return module_3d


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 6, 3, padding=1),
        nn.Conv2d(4, 6, 7, stride=2, padding=3, bias=False),
        nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2),
        nn.Conv2d(4, 6, (1, 5), padding=(0, 2)),
        nn.Conv2d(4, 8, 3, padding=1, groups=2),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False),
        nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 6, 3, padding=1, padding_mode="replicate"),
        nn.Conv2d(4, 6, 5, padding="same"),
        nn.Conv2d(4, 6, 3, padding="valid"),
        nn.Conv2d(4, 6, 1),
    ],
    ids=["3x3", "7x7-stride2", "dilated", "1x5", "grouped", "depthwise", "reflect", "replicate", "same", "valid", "1x1"],
)
def test_convert_conv_is_slicewise(conv):
    conv_3d = _assert_slicewise_equal(conv)

    assert conv_3d.kernel_size == (1, *conv.kernel_size)
    assert conv_3d.groups == conv.groups
    assert torch.equal(conv_3d.weight.squeeze(2), conv.weight)


def test_convert_conv_transpose_is_slicewise():
    _assert_slicewise_equal(nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1, output_padding=0))
    _assert_slicewise_equal(nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1, groups=2))


def _batch_norm_with_statistics(channels: int = 4) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=1e-3, momentum=0.3)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.normal_()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    return bn


def test_convert_batch_norm_eval_is_slicewise():
    bn = _batch_norm_with_statistics().eval()
    bn_3d = _assert_slicewise_equal(bn)

    assert isinstance(bn_3d, nn.BatchNorm3d)
    assert bn_3d.eps == 1e-3
    assert bn_3d.momentum == 0.3
    assert not bn_3d.training


def test_convert_batch_norm_training_updates_statistics_like_2d():
    bn = _batch_norm_with_statistics().train()
    bn_3d = convert_to_pseudo3d(bn)
    volume = torch.randn(2, 4, 3, 8, 8)

    expected = _slicewise(bn, volume)
    actual = bn_3d(volume)

    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn_3d.running_mean, bn.running_mean)
    torch.testing.assert_close(bn_3d.running_var, bn.running_var)


@pytest.mark.parametrize(
    "layer",
    [
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.MaxPool2d(2, stride=2, ceil_mode=True),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        nn.AdaptiveAvgPool2d((2, 3)),
        nn.AdaptiveMaxPool2d(1),
        nn.ZeroPad2d((1, 2, 0, 3)),
        nn.ConstantPad2d(2, 0.5),
    ],
    ids=["maxpool", "maxpool-ceil", "avgpool", "adaptive-avg", "adaptive-max", "zero-pad", "constant-pad"],
)
def test_convert_pooling_and_padding_is_slicewise(layer):
    _assert_slicewise_equal(layer)


@pytest.mark.parametrize("height, width", [(11, 13), (12, 16), (7, 8)])
def test_convert_timm_same_padding_conv_is_slicewise(height, width):
    conv = Conv2dSame(4, 4, 3, stride=2, groups=4, bias=False)

    _assert_slicewise_equal(conv, shape=(1, 4, 2, height, width))


def test_convert_timm_batch_norm_act_keeps_activation():
    bn = BatchNormAct2d(4, eps=1e-3, act_layer=nn.ReLU6).eval()
    bn.running_mean.normal_()
    bn.bias.data.normal_(0, 3)

    bn_3d = _assert_slicewise_equal(bn)

    assert isinstance(bn_3d.act, nn.ReLU6)
    assert set(bn_3d.state_dict()) == set(bn.state_dict())


def test_convert_nested_network_keeps_residuals_and_mode():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), _batch_norm_with_statistics(), nn.SiLU())

        def forward(self, x):
            return x + self.body(x)

    network = nn.Sequential(Residual(), nn.MaxPool2d(2), Residual(), nn.Dropout(0.2)).eval()
    converted = _assert_slicewise_equal(network, shape=(1, 4, 2, 8, 8))

    assert isinstance(converted[0], Residual)
    assert not converted[0].body[1].training


def test_convert_leaves_input_module_unchanged():
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    weight = network[0].weight.detach().clone()

    convert_to_pseudo3d(network)

    assert isinstance(network[0], nn.Conv2d)
    assert isinstance(network[1], nn.BatchNorm2d)
    assert torch.equal(network[0].weight, weight)


def test_convert_add_conv_bias_adds_bias_to_every_conv():
    network = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.Conv2d(4, 4, 1, bias=True))

    converted = convert_to_pseudo3d(network, add_conv_bias=True)

    assert converted[0].bias.shape == (4,)
    assert torch.equal(converted[1].bias, network[1].bias)


@pytest.mark.parametrize(
    "layer",
    [nn.Linear(4, 4), nn.Upsample(scale_factor=2), nn.Flatten(), nn.GroupNorm(2, 4), nn.Dropout2d()],
    ids=["linear", "upsample", "flatten", "groupnorm", "dropout2d"],
)
def test_convert_rejects_layers_without_rule(layer):
    network = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Sequential(layer))

    with pytest.raises(ConversionError, match=rf"1\.0 of class {type(layer).__name__}"):
        convert_to_pseudo3d(network)


def test_convert_rejects_unknown_conv_subclass():
    class ShiftedConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x.roll(1, dims=-1))

    with pytest.raises(ConversionError, match="ShiftedConv"):
        convert_to_pseudo3d(ShiftedConv(3, 3, 3))


def test_inflate_state_dict_adds_depth_axis():
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    converted = convert_to_pseudo3d(network)

    inflated = inflate_state_dict(network.state_dict(), converted.state_dict())

    assert inflated["0.weight"].shape == (4, 3, 1, 3, 3)
    assert inflated["1.running_var"].shape == (4,)


def test_inflate_state_dict_rejects_other_shapes():
    target = convert_to_pseudo3d(nn.Conv2d(3, 4, 3)).state_dict()

    with pytest.raises(ValueError, match="weight: shape"):
        inflate_state_dict(nn.Conv2d(3, 5, 3).state_dict(), target)


def test_convert_added_bias_uses_pytorch_initialisation_bound():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, bias=False)

    bias = convert_to_pseudo3d(conv, add_conv_bias=True).bias

    bound = 1 / (8 * 3 * 3) ** 0.5
    assert bias.abs().max().item() <= bound
    assert bias.std().item() > bound / 4  # uniform in +-bound, not zeros


def test_convert_inplace_shares_weight_storage():
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    storage = network[0].weight.data_ptr()

    converted = convert_to_pseudo3d(network, inplace=True)

    assert converted is network
    assert isinstance(converted[0], nn.Conv3d)
    assert converted[0].weight.data_ptr() == storage
