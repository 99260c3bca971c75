"""UCL-TIG cascaded anisotropic networks (WNet, TNet, ENet) of Wang, Li, Ourselin and Vercauteren.

Wang et al., "Automatic Brain Tumor Segmentation using Cascaded Anisotropic Convolutional
Neural Networks", BrainLes 2017 (arXiv 1709.00382). The layer list follows the authors' code
(GitHub ``taigw/brats17``, ``util/MSNet.py``) and their released BraTS 2017 checkpoints: at
width 32, WNet and TNet have 214,470 trainable parameters and ENet 204,396, as here.

All three networks are one architecture, :class:`MSNet`, on (N, C, D, H, W) tensors whose D
is the slice axis of the network's view:

- 10 pre-activation residual blocks of two intra-slice 1x3x3 convolutions (dilations
  1, 1 | 1, 1 | 1, 2, 3 | 3, 2, 1 in the four groups), each block BN -> PReLU -> conv ->
  BN -> PReLU -> conv, plus the input (zero-padded on channels when narrower);
- 4 inter-slice 3x1x1 "fuse" convolutions without depth padding, so D shrinks by 8
  (19 input slices -> 11 output slices);
- 2 stride-(1,2,2) 1x3x3 downsampling convolutions (ENet: only the second);
- three prediction heads after fuse 2, 3 and 4, brought to the input's in-plane size by
  1x3x3 stride-2 transposed convolutions, concatenated (2 + 4 + 8 = 14 channels) and
  classified by a final 1x3x3 convolution;
- batch norm and per-channel PReLU (slope initialised to 0) after every convolution except
  the final one; no biases.

:class:`UclTigNet` wraps an MSNet for one view. It takes (N, C, D, H, W) in the canonical
grid of :func:`gliomaseg.data.preprocessing.preprocess_case` (D inferior-superior,
H posterior-anterior, W left-right) and permutes it so the view's slice axis is depth. The
logits come back in the canonical grid, with that axis shortened by 8 (4 slices each side).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gliomaseg.models.registry import register_model

__all__ = [
    "STAGES",
    "VIEWS",
    "STAGE_REGIONS",
    "DEFAULT_PATCH_SIZES",
    "DEPTH_MARGIN",
    "ResidualBlock",
    "MSNet",
    "UclTigNet",
    "build_ucltig_network",
    "build_wnet",
    "build_tnet",
    "build_enet",
    "output_shape",
    "view_axes",
    "slice_axis",
    "to_view",
    "from_view",
]

STAGES = ("wnet", "tnet", "enet")
VIEWS = ("axial", "sagittal", "coronal")
# The region each stage segments, as named in gliomaseg.data.labels.REGIONS.
STAGE_REGIONS = {"wnet": "whole_tumor", "tnet": "tumor_core", "enet": "enhancing_tumor"}
# Training patch (slices, height, width) in the view's own axes, from the authors' configs.
DEFAULT_PATCH_SIZES = {"wnet": (19, 144, 144), "tnet": (19, 96, 96), "enet": (19, 64, 64)}
# Slices lost on each side of the slice axis by the four unpadded 3x1x1 convolutions.
DEPTH_MARGIN = 4

# Canonical spatial axes (D, H, W) listed in the order the view sees them (slice axis first).
# Sagittal slices are left-right (W), coronal slices posterior-anterior (H), as the authors'
# transposes of [z, y, x] volumes: (2, 0, 1) and (1, 0, 2).
_VIEW_AXES = {"axial": (0, 1, 2), "sagittal": (2, 0, 1), "coronal": (1, 0, 2)}

# (dilation of each block) per residual group; a fuse convolution follows each group.
_GROUP_DILATIONS = ((1, 1), (1, 1), (1, 2, 3), (3, 2, 1))
# Output channels of the three prediction heads, concatenated before the final convolution.
_HEAD_CHANNELS = (2, 4, 8)


def _check_view(view: str) -> str:
    if view not in _VIEW_AXES:
        raise ValueError(f"unknown view {view!r}; use one of {', '.join(VIEWS)}")
    return view


def view_axes(view: str) -> tuple[int, int, int]:
    """Return the canonical spatial axes (0 = D, 1 = H, 2 = W) in the view's order, slice axis first."""
    return _VIEW_AXES[_check_view(view)]


def slice_axis(view: str) -> int:
    """Return the canonical spatial axis (0 = D, 1 = H, 2 = W) along which the view's slices are stacked."""
    return view_axes(view)[0]


def to_view(array: np.ndarray | torch.Tensor, view: str) -> np.ndarray | torch.Tensor:
    """Permute the last three (D, H, W) axes of a canonical array into the view's (slice, row, column) order."""
    lead = array.ndim - 3
    order = (*range(lead), *(lead + a for a in view_axes(view)))
    return array.permute(order) if isinstance(array, torch.Tensor) else np.transpose(array, order)


def from_view(array: np.ndarray | torch.Tensor, view: str) -> np.ndarray | torch.Tensor:
    """Undo :func:`to_view`: permute the last three axes from the view's order back to (D, H, W)."""
    lead = array.ndim - 3
    inverse = tuple(int(i) for i in np.argsort(view_axes(view)))
    order = (*range(lead), *(lead + a for a in inverse))
    return array.permute(order) if isinstance(array, torch.Tensor) else np.transpose(array, order)


def _intra_slice_conv(in_channels: int, out_channels: int, dilation: int = 1, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(
        in_channels,
        out_channels,
        kernel_size=(1, 3, 3),
        stride=(1, stride, stride),
        padding=(0, dilation, dilation),
        dilation=(1, dilation, dilation),
        bias=False,
    )


class _ConvNormAct(nn.Sequential):
    """Convolution (or transposed convolution) -> batch norm -> PReLU, the authors' post-activation layer."""

    def __init__(self, conv: nn.Module, channels: int) -> None:
        super().__init__(conv, nn.BatchNorm3d(channels, eps=1e-5, momentum=0.1), nn.PReLU(channels, init=0.0))


def _upsample(in_channels: int, out_channels: int) -> _ConvNormAct:
    # Kernel 1x3x3, stride (1,2,2): padding 1 and output padding 1 give exactly twice the size.
    conv = nn.ConvTranspose3d(
        in_channels,
        out_channels,
        kernel_size=(1, 3, 3),
        stride=(1, 2, 2),
        padding=(0, 1, 1),
        output_padding=(0, 1, 1),
        bias=False,
    )
    return _ConvNormAct(conv, out_channels)


class ResidualBlock(nn.Module):
    """Pre-activation residual block of two dilated 1x3x3 convolutions.

    x -> BN -> PReLU -> conv -> BN -> PReLU -> conv, plus x. A narrower input is zero-padded on
    the channel axis (half of the missing channels before, the rest after) before the sum.
    Shape (N, C_in, D, H, W) -> (N, C_out, D, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__()
        if in_channels > out_channels:
            raise ValueError(f"a residual block cannot narrow {in_channels} to {out_channels} channels")
        self.branch = nn.Sequential(
            nn.BatchNorm3d(in_channels),
            nn.PReLU(in_channels, init=0.0),
            _intra_slice_conv(in_channels, out_channels, dilation),
            nn.BatchNorm3d(out_channels),
            nn.PReLU(out_channels, init=0.0),
            _intra_slice_conv(out_channels, out_channels, dilation),
        )
        self.pad = (out_channels - in_channels) // 2, out_channels - in_channels - (out_channels - in_channels) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if any(self.pad):
            # F.pad lists the last axis first; the channel axis is the fifth from the end.
            shortcut = F.pad(x, (0, 0, 0, 0, 0, 0, *self.pad))
        return self.branch(x) + shortcut


class MSNet(nn.Module):
    """The anisotropic multi-scale network of WNet, TNet and ENet, in its own view's axes.

    Args:
        in_channels: input modalities (4 in the original: FLAIR, T1, T1c, T2).
        num_classes: output classes (2: background and the stage's region).
        width: channels of every residual block and fuse layer (32 in the original).
        downsample_twice: True for WNet and TNet, False for ENet (the first downsampling is
            skipped, so the first prediction head is a plain 1x3x3 convolution).

    Shapes: (N, in_channels, S, H, W) -> logits (N, num_classes, S - 8, H, W), for S >= 9 and
    H, W divisible by 4 (downsample_twice) or 2.
    """

    def __init__(self, in_channels: int = 4, num_classes: int = 2, width: int = 32, downsample_twice: bool = True) -> None:
        super().__init__()
        if width < in_channels:
            raise ValueError(f"width {width} must be at least the number of input channels {in_channels}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.width = width
        self.downsample_twice = downsample_twice

        self.block1 = nn.Sequential(ResidualBlock(in_channels, width), ResidualBlock(width, width))
        self.fuse1 = _ConvNormAct(nn.Conv3d(width, width, (3, 1, 1), bias=False), width)
        self.down1 = _ConvNormAct(_intra_slice_conv(width, width, stride=2), width) if downsample_twice else nn.Identity()
        self.block2 = nn.Sequential(*(ResidualBlock(width, width, d) for d in _GROUP_DILATIONS[1]))
        self.fuse2 = _ConvNormAct(nn.Conv3d(width, width, (3, 1, 1), bias=False), width)
        self.down2 = _ConvNormAct(_intra_slice_conv(width, width, stride=2), width)
        self.block3 = nn.Sequential(*(ResidualBlock(width, width, d) for d in _GROUP_DILATIONS[2]))
        self.fuse3 = _ConvNormAct(nn.Conv3d(width, width, (3, 1, 1), bias=False), width)
        self.block4 = nn.Sequential(*(ResidualBlock(width, width, d) for d in _GROUP_DILATIONS[3]))
        self.fuse4 = _ConvNormAct(nn.Conv3d(width, width, (3, 1, 1), bias=False), width)

        c1, c2, c3 = _HEAD_CHANNELS
        if downsample_twice:
            self.head1 = _upsample(width, c1)
            self.head2 = nn.Sequential(_upsample(width, c2), _upsample(c2, c2))
            self.head3 = nn.Sequential(_upsample(width, c3), _upsample(c3, c3))
        else:
            self.head1 = _intra_slice_conv(width, c1)
            self.head2 = _upsample(width, c2)
            self.head3 = _upsample(width, c3)
        self.final = _intra_slice_conv(c1 + c2 + c3, num_classes)
        self.reset_parameters()

    @property
    def in_plane_multiple(self) -> int:
        """The number H and W must be divisible by."""
        return 4 if self.downsample_twice else 2

    def reset_parameters(self) -> None:
        """Initialise as the authors' NiftyNet layers: truncated normal weights, std sqrt(2 / fan-in), PReLU slope 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                fan_in = math.prod(module.kernel_size) * (
                    module.in_channels if isinstance(module, nn.Conv3d) else module.out_channels
                )
                std = math.sqrt(2.0 / fan_in)
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, S, H, W), got {tuple(x.shape)}")
        slices, height, width = x.shape[2:]
        multiple = self.in_plane_multiple
        if slices < 2 * DEPTH_MARGIN + 1 or height % multiple or width % multiple:
            raise ValueError(
                f"input of {slices}x{height}x{width} voxels: need at least {2 * DEPTH_MARGIN + 1} slices "
                f"and in-plane sizes divisible by {multiple}"
            )

        x = self.fuse1(self.block1(x))
        f1 = self.fuse2(self.block2(self.down1(x)))
        f2 = self.fuse3(self.block3(self.down2(f1)))
        f3 = self.fuse4(self.block4(f2))

        # Heads 1 and 2 keep the central slices that head 3 (after one more fuse layer) still has.
        p1 = self.head1(f1[:, :, 2:-2])
        p2 = self.head2(f2[:, :, 1:-1])
        p3 = self.head3(f3)
        return self.final(torch.cat([p1, p2, p3], dim=1))


class UclTigNet(nn.Module):
    """One stage's network for one view, on tensors in the canonical (D, H, W) grid.

    Args:
        stage: "wnet", "tnet" or "enet".
        view: "axial", "sagittal" or "coronal"; its slice axis is the network's depth.
        in_channels, num_classes, width: as in :class:`MSNet`.

    Shapes: (N, C, D, H, W) -> logits (N, num_classes, D', H', W') with the view's slice axis
    shortened by 8 (axial: D' = D - 8; sagittal: W' = W - 8; coronal: H' = H - 8). The two
    other axes must be divisible by :attr:`in_plane_multiple`.
    """

    def __init__(self, stage: str, view: str = "axial", in_channels: int = 4, num_classes: int = 2, width: int = 32) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"unknown UCL-TIG stage {stage!r}; use one of {', '.join(STAGES)}")
        self.stage = stage
        self.view = _check_view(view)
        self.net = MSNet(in_channels, num_classes, width, downsample_twice=stage != "enet")
        self.model_name = f"ucltig_{stage}"

    @property
    def config(self) -> dict[str, int | str]:
        """Keyword arguments that rebuild this network with ``build_model(self.model_name, **config)``."""
        return {
            "view": self.view,
            "in_channels": self.net.in_channels,
            "num_classes": self.net.num_classes,
            "width": self.net.width,
        }

    @property
    def in_channels(self) -> int:
        return self.net.in_channels

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    @property
    def in_plane_multiple(self) -> int:
        return self.net.in_plane_multiple

    @property
    def slice_axis(self) -> int:
        """Canonical spatial axis (0 = D, 1 = H, 2 = W) that the network shortens by 8."""
        return slice_axis(self.view)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return from_view(self.net(to_view(x, self.view).contiguous()), self.view)


def build_ucltig_network(
    stage: str, view: str = "axial", in_channels: int = 4, num_classes: int = 2, width: int = 32
) -> UclTigNet:
    """Build a randomly initialised UCL-TIG network for one stage and view (see :class:`UclTigNet`)."""
    return UclTigNet(stage, view, in_channels, num_classes, width)


def output_shape(input_shape: Sequence[int], view: str) -> tuple[int, int, int]:
    """Return the canonical (D, H, W) output shape of a view's network for a canonical input shape."""
    shape = [int(s) for s in input_shape]
    shape[slice_axis(view)] -= 2 * DEPTH_MARGIN
    return tuple(shape)


@register_model("ucltig_wnet")
def build_wnet(view: str = "axial", in_channels: int = 4, num_classes: int = 2, width: int = 32) -> UclTigNet:
    """Build the whole-tumor network of the UCL-TIG cascade for one view."""
    return UclTigNet("wnet", view, in_channels, num_classes, width)


@register_model("ucltig_tnet")
def build_tnet(view: str = "axial", in_channels: int = 4, num_classes: int = 2, width: int = 32) -> UclTigNet:
    """Build the tumor-core network of the UCL-TIG cascade for one view."""
    return UclTigNet("tnet", view, in_channels, num_classes, width)


@register_model("ucltig_enet")
def build_enet(view: str = "axial", in_channels: int = 4, num_classes: int = 2, width: int = 32) -> UclTigNet:
    """Build the enhancing-tumor network of the UCL-TIG cascade for one view."""
    return UclTigNet("enet", view, in_channels, num_classes, width)
