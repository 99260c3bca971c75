"""Conversion of 2D networks into pseudo-3D networks that run slice by slice.

Every in-plane layer of a 2D network becomes the 3D layer whose kernel has depth 1:
a k x k convolution becomes a 1 x k x k convolution with the same weights, batch norm
keeps its statistics, pooling works per slice. The converted network therefore
computes, for each slice of a (N, C, D, H, W) volume, exactly what the 2D network
computes for that slice as an (N, C, H, W) image, and pretrained 2D weights load
unchanged (with an extra axis of length 1).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

__all__ = [
    "ConversionError",
    "Conv3dSameInPlane",
    "BatchNormAct3d",
    "convert_to_pseudo3d",
    "inflate_state_dict",
]


class ConversionError(TypeError):
    """A module has no pseudo-3D equivalent."""


class Conv3dSameInPlane(nn.Conv3d):
    """Depth-1 convolution with TensorFlow 'SAME' padding computed from H and W at run time.

    The pseudo-3D form of timm's ``Conv2dSame``: H and W are padded by
    ``max((ceil(L / s) - 1) * s + (k - 1) * d + 1 - L, 0)`` in total, the smaller half
    before and the larger half after, as TensorFlow does. Depth is never padded, so the
    kernel depth must be 1.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for axis in (-1, -2):  # F.pad takes the last axis first
            size = x.shape[axis]
            kernel, stride, dilation = self.kernel_size[axis], self.stride[axis], self.dilation[axis]
            total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv3d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class BatchNormAct3d(nn.BatchNorm3d):
    """Batch norm followed by dropout and activation submodules (``drop``, ``act``).

    The pseudo-3D form of timm's ``BatchNormAct2d``; its state dict keys are those of
    ``nn.BatchNorm3d`` so weights map 1:1.
    """

    def __init__(self, num_features: int, drop: nn.Module, act: nn.Module, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.drop = drop
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


# Leaf modules that act elementwise or per channel, whatever the number of spatial axes.
_DIMENSION_FREE: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Dropout,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Softplus,
)

def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _depth_padding(padding) -> str | tuple[int, int, int]:
    if isinstance(padding, str):  # "same" and "valid" keep their meaning with a depth-1 kernel
        return padding
    return (0, *_pair(padding))


def _convert_conv(conv: nn.Conv2d, add_bias: bool) -> nn.Conv3d:
    with_bias = conv.bias is not None or add_bias
    kwargs = dict(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=(1, *conv.kernel_size),
        stride=(1, *conv.stride),
        dilation=(1, *conv.dilation),
        groups=conv.groups,
        bias=with_bias,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    if type(conv) is nn.Conv2d:
        conv3d = skip_init(nn.Conv3d, padding=_depth_padding(conv.padding), **kwargs)
    else:  # timm Conv2dSame: padding is computed in forward
        conv3d = skip_init(Conv3dSameInPlane, padding=0, **kwargs)
    return _take_weights(conv3d, conv)


def _take_weights(conv3d: nn.Module, conv: nn.Module) -> nn.Module:
    """Give an uninitialised 3D convolution the 2D weights with a depth axis, sharing their storage.

    A bias that the 2D convolution lacks is initialised as PyTorch's ``reset_parameters``
    does: uniform in +-1/sqrt(fan_in).
    """
    conv3d.weight = nn.Parameter(conv.weight.detach().unsqueeze(2), requires_grad=conv.weight.requires_grad)
    if conv.bias is not None:
        conv3d.bias = nn.Parameter(conv.bias.detach(), requires_grad=conv.bias.requires_grad)
    elif conv3d.bias is not None:
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(conv3d.weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        with torch.no_grad():
            conv3d.bias.uniform_(-bound, bound)
    return conv3d


def _convert_conv_transpose(conv: nn.ConvTranspose2d, add_bias: bool) -> nn.ConvTranspose3d:
    conv3d = skip_init(
        nn.ConvTranspose3d,
        conv.in_channels,
        conv.out_channels,
        kernel_size=(1, *conv.kernel_size),
        stride=(1, *conv.stride),
        padding=(0, *conv.padding),
        output_padding=(0, *conv.output_padding),
        groups=conv.groups,
        bias=conv.bias is not None or add_bias,
        dilation=(1, *conv.dilation),
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    return _take_weights(conv3d, conv)


def _batch_norm_kwargs(bn: nn.BatchNorm2d) -> dict:
    device = bn.weight.device if bn.weight is not None else None
    return dict(eps=bn.eps, momentum=bn.momentum, affine=bn.affine, track_running_stats=bn.track_running_stats, device=device)


def _copy_state(source: nn.Module, target: nn.Module) -> nn.Module:
    target.load_state_dict(source.state_dict(), strict=True)
    return target


def _convert_batch_norm(bn: nn.BatchNorm2d, add_bias: bool) -> nn.BatchNorm3d:
    return _copy_state(bn, nn.BatchNorm3d(bn.num_features, **_batch_norm_kwargs(bn)))


def _convert_batch_norm_act(bn: nn.BatchNorm2d, add_bias: bool) -> BatchNormAct3d:
    drop = _convert(bn.drop, add_bias, "drop")
    act = _convert(bn.act, add_bias, "act")
    return _copy_state(bn, BatchNormAct3d(bn.num_features, drop, act, **_batch_norm_kwargs(bn)))


def _convert_max_pool(pool: nn.MaxPool2d, add_bias: bool) -> nn.MaxPool3d:
    return nn.MaxPool3d(
        kernel_size=(1, *_pair(pool.kernel_size)),
        stride=(1, *_pair(pool.stride)),
        padding=(0, *_pair(pool.padding)),
        dilation=(1, *_pair(pool.dilation)),
        return_indices=pool.return_indices,
        ceil_mode=pool.ceil_mode,
    )


def _convert_avg_pool(pool: nn.AvgPool2d, add_bias: bool) -> nn.AvgPool3d:
    return nn.AvgPool3d(
        kernel_size=(1, *_pair(pool.kernel_size)),
        stride=(1, *_pair(pool.stride)),
        padding=(0, *_pair(pool.padding)),
        ceil_mode=pool.ceil_mode,
        count_include_pad=pool.count_include_pad,
        divisor_override=pool.divisor_override,
    )


def _convert_adaptive_avg_pool(pool: nn.AdaptiveAvgPool2d, add_bias: bool) -> nn.AdaptiveAvgPool3d:
    # None keeps the input depth, so each slice is pooled on its own.
    return nn.AdaptiveAvgPool3d((None, *_pair(pool.output_size)))


def _convert_adaptive_max_pool(pool: nn.AdaptiveMaxPool2d, add_bias: bool) -> nn.AdaptiveMaxPool3d:
    return nn.AdaptiveMaxPool3d((None, *_pair(pool.output_size)), return_indices=pool.return_indices)


def _convert_constant_pad(pad: nn.ConstantPad2d, add_bias: bool) -> nn.ConstantPad3d:
    # nn.ZeroPad2d is a ConstantPad2d subclass with value 0.
    return nn.ConstantPad3d((*pad.padding, 0, 0), pad.value)


def _conversion_rules() -> dict[type[nn.Module], Callable[[nn.Module, bool], nn.Module]]:
    rules: dict[type[nn.Module], Callable[[nn.Module, bool], nn.Module]] = {
        nn.Conv2d: _convert_conv,
        nn.ConvTranspose2d: _convert_conv_transpose,
        nn.BatchNorm2d: _convert_batch_norm,
        nn.MaxPool2d: _convert_max_pool,
        nn.AvgPool2d: _convert_avg_pool,
        nn.AdaptiveAvgPool2d: _convert_adaptive_avg_pool,
        nn.AdaptiveMaxPool2d: _convert_adaptive_max_pool,
        nn.ConstantPad2d: _convert_constant_pad,
        nn.ZeroPad2d: _convert_constant_pad,
    }
    try:
        from timm.layers import BatchNormAct2d, Conv2dSame
    except ImportError:  # without timm, only torch.nn layers are converted
        return rules
    rules[Conv2dSame] = _convert_conv
    rules[BatchNormAct2d] = _convert_batch_norm_act
    return rules


def _is_dimension_free(module: nn.Module) -> bool:
    if type(module) in _DIMENSION_FREE:
        return True
    try:
        from timm.layers import DropPath
    except ImportError:
        return False
    return type(module) is DropPath


def convert_to_pseudo3d(module: nn.Module, add_conv_bias: bool = False, inplace: bool = False) -> nn.Module:
    """Return a pseudo-3D copy of a 2D module; the input module is left unchanged unless ``inplace``.

    Rules (matched on the exact class, so an unknown subclass with its own ``forward``
    is rejected rather than converted wrongly):

    - ``Conv2d`` k x k, stride s, padding p, dilation d, groups g (depthwise and grouped
      included, any ``padding_mode``) -> ``Conv3d`` (1, k, k), (1, s, s), (0, p, p),
      (1, d, d), g, with weight ``w.unsqueeze(2)``; timm's ``Conv2dSame`` ->
      :class:`Conv3dSameInPlane`; ``ConvTranspose2d`` likewise.
    - ``BatchNorm2d`` -> ``BatchNorm3d`` with the same eps, momentum, affine parameters
      and running statistics; timm's ``BatchNormAct2d`` -> :class:`BatchNormAct3d`.
    - ``MaxPool2d``, ``AvgPool2d`` -> 3D pools with depth-1 window and stride;
      ``AdaptiveAvg/MaxPool2d(o)`` -> ``Adaptive...3d((None, *o))``; ``ConstantPad2d``
      and ``ZeroPad2d`` pad H and W only.
    - Activations, ``Identity``, ``Dropout`` and timm's ``DropPath`` are kept.
    - Containers and composite modules (ResNet blocks, EfficientNet blocks) are copied
      with their children converted; their own ``forward`` must not depend on the number
      of spatial axes.

    Args:
        module: a 2D network or layer, in train or eval mode (the mode is kept).
        add_conv_bias: give every converted convolution a bias, initialised as PyTorch
            initialises ``Conv3d`` biases. Off by default so that torchvision weights map
            1:1; on reproduces the original AlbuNet3D code, whose ``Conv3d`` layers kept
            PyTorch's default ``bias=True``.
        inplace: convert without copying first. Composite modules of the input are then
            changed in place and converted layers share the input's parameter storage,
            so the input must not be used afterwards. Saves time and memory for large
            networks.

    Returns:
        The converted module, on the device and in the dtype of the input.

    Raises:
        ConversionError: a leaf module has no rule (for example ``Linear``, ``Flatten``,
            ``Upsample`` or a custom 2D layer); the message names its path and class.
    """
    return _convert(module if inplace else copy.deepcopy(module), add_conv_bias, path="")


def _convert(module: nn.Module, add_bias: bool, path: str) -> nn.Module:
    """Convert a module that the caller owns: composites are changed in place."""
    rule = _conversion_rules().get(type(module))
    if rule is not None:
        return rule(module, add_bias).train(module.training)
    if _is_dimension_free(module):
        return module

    children = dict(module.named_children())
    has_own_parameters = any(p is not None for p in module._parameters.values())
    if not children or has_own_parameters:
        raise ConversionError(
            f"No pseudo-3D rule for module {path or '<root>'} of class {type(module).__name__}; "
            "remove it from the network before conversion or add a rule to gliomaseg.models.convert"
        )

    for name, child in children.items():
        child_path = f"{path}.{name}" if path else name
        setattr(module, name, _convert(child, add_bias, child_path))
    return module


def inflate_state_dict(state_dict_2d: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a 2D state dict reshaped to load into a pseudo-3D model.

    Each tensor whose counterpart in ``target`` has one more axis gets a depth axis
    of length 1 inserted at position 2 (``(out, in, k, k)`` -> ``(out, in, 1, k, k)``);
    other tensors are returned unchanged. Keys present in only one of the two are
    returned as they are, so ``load_state_dict(strict=True)`` reports them.

    Raises:
        ValueError: a tensor's shape differs from the target's other than by that axis.
    """
    inflated: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict_2d.items():
        expected = target.get(key)
        if expected is not None and expected.dim() == tensor.dim() + 1 and tensor.dim() >= 2:
            tensor = tensor.unsqueeze(2)
        if expected is not None and tuple(expected.shape) != tuple(tensor.shape):
            raise ValueError(f"State dict entry {key}: shape {tuple(tensor.shape)} does not match the model's {tuple(expected.shape)}")
        inflated[key] = tensor
    return inflated
