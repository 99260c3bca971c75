"""AlbuNet2D and AlbuNet3D: U-Nets with an ImageNet-pretrained encoder and a TernausNet/AlbuNet decoder.

Architecture of Wacker, Ladeira and Nascimento, "Transfer Learning for Brain Tumor
Segmentation" (arXiv:1912.12452), with the decoder of their public code
(joneswack/brats-pretraining, class ``AlbuNet3D34``): for ResNet34 and 16 base filters,

=========  ===============================  ==================================
step       input (channels @ stride)         operation -> output
=========  ===============================  ==================================
encoder    image                            layer1 64@4, layer2 128@8,
                                            layer3 256@16, layer4 512@32
depth1     layer4                           3x1x1 conv+BN+ReLU -> 512@32
center     depth1                           3x3 conv+BN+ReLU -> 128@32
dec5       [center, depth1] 640@32           up-block (mid 256) -> 128@16
dec4       [dec5, layer3] 384@16             up-block (mid 256) -> 128@8
depth2     dec4                             3x1x1 conv+BN+ReLU -> 128@8
dec3       [depth2, layer2] 256@8            up-block (mid 128) -> 32@4
dec2       [dec3, layer1] 96@4               up-block (mid 64) -> 64@2
depth3     dec2                             3x1x1 conv+BN+ReLU -> 64@2
dec1       dec2                             up-block (mid 64) -> 16@1
dec0       dec1                             3x3 conv+BN+ReLU -> 16@1
depth4     dec0                             3x1x1 conv+BN+ReLU -> 16@1
final      depth4                           1x1 conv -> num_classes logits
=========  ===============================  ==================================

An up-block is 3x3 conv+BN+ReLU, then a 4x4 stride-2 padding-1 transposed convolution
and ReLU. Depth layers exist only in AlbuNet3D, because the paper's 2D network disables
them. In AlbuNet3D, in-plane kernels k x k become 1 x k x k. Other encoders change only
the encoder channel counts. The stem max pooling of ResNet encoders is 2x2 with
stride 2 instead of 3x3.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gliomaseg.models.convert import convert_to_pseudo3d
from gliomaseg.models.encoders import build_encoder
from gliomaseg.models.registry import register_model
from gliomaseg.models.weights import normalize_weights_source

__all__ = ["AlbuNet", "AlbuNet2D", "AlbuNet3D", "AlbuNetDecoder", "DEPTH_LAYERS", "SIZE_MULTIPLE"]

DEPTH_LAYERS = (1, 2, 3, 4)
SIZE_MULTIPLE = 32  # the encoder halves H and W five times


class ConvBnRelu(nn.Sequential):
    """3x3 convolution (with bias), batch norm, ReLU; keeps H and W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Sequential):
    """ConvBnRelu, then a 4x4 stride-2 transposed convolution and ReLU: doubles H and W."""

    def __init__(self, in_channels: int, middle_channels: int, out_channels: int) -> None:
        super().__init__(
            ConvBnRelu(in_channels, middle_channels),
            nn.ConvTranspose2d(middle_channels, out_channels, kernel_size=4, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )


class DepthBlock(nn.Sequential):
    """3x1x1 convolution (depth padding 1, so depth is kept), batch norm, ReLU; not residual."""

    def __init__(self, channels: int) -> None:
        super().__init__(
            nn.Conv3d(channels, channels, kernel_size=(3, 1, 1), padding=(1, 0, 0)),
            nn.BatchNorm3d(channels),
            nn.ReLU(inplace=True),
        )


class AlbuNetDecoder(nn.Module):
    """TernausNet/AlbuNet decoder for encoder features at strides 4, 8, 16 and 32.

    Built in 2D; ``depth1`` to ``depth4`` are ``Identity`` until AlbuNet3D replaces
    them with :class:`DepthBlock`. Concatenation is always [decoder tensor, encoder skip].
    """

    def __init__(self, encoder_channels: Sequence[int], num_filters: int, num_classes: int) -> None:
        super().__init__()
        c4, c8, c16, c32 = encoder_channels
        nf = num_filters
        self.depth1: nn.Module = nn.Identity()
        self.center = ConvBnRelu(c32, nf * 8)
        self.dec5 = UpBlock(nf * 8 + c32, nf * 16, nf * 8)
        self.dec4 = UpBlock(nf * 8 + c16, nf * 16, nf * 8)
        self.depth2: nn.Module = nn.Identity()
        self.dec3 = UpBlock(nf * 8 + c8, nf * 8, nf * 2)
        self.dec2 = UpBlock(nf * 2 + c4, nf * 4, nf * 4)
        self.depth3: nn.Module = nn.Identity()
        self.dec1 = UpBlock(nf * 4, nf * 4, nf)
        self.dec0 = ConvBnRelu(nf, nf)
        self.depth4: nn.Module = nn.Identity()
        self.final = nn.Conv2d(nf, num_classes, kernel_size=1)
        self.depth_channels = {1: c32, 2: nf * 8, 3: nf * 4, 4: nf}

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        f4, f8, f16, f32 = features
        bottom = self.depth1(f32)
        x = self.center(bottom)
        x = self.dec5(torch.cat([x, bottom], dim=1))
        x = self.dec4(torch.cat([x, f16], dim=1))
        x = self.depth2(x)
        x = self.dec3(torch.cat([x, f8], dim=1))
        x = self.dec2(torch.cat([x, f4], dim=1))
        x = self.depth3(x)
        x = self.dec1(x)
        x = self.dec0(x)
        x = self.depth4(x)
        return self.final(x)


class AlbuNet(nn.Module):
    """AlbuNet in 2D or pseudo-3D; use :class:`AlbuNet2D` or :class:`AlbuNet3D`.

    The 3D network is the 2D network converted with
    :func:`~gliomaseg.models.convert.convert_to_pseudo3d` plus the enabled depth layers,
    so with depth 1 and no depth layers both compute the same function, and under the
    same random seed both start from the same in-plane weights.
    """

    model_name: str = ""
    spatial_dims: int = 2

    def __init__(
        self,
        *,
        encoder: str = "resnet34",
        encoder_weights: str | Path | None = "imagenet",
        in_channels: int = 3,
        num_classes: int = 4,
        num_filters: int = 16,
        depth_layers: Iterable[int] = (),
        encoder_conv_bias: bool = False,
        pad_input: bool = True,
    ) -> None:
        super().__init__()
        depth_layers = tuple(sorted(set(int(i) for i in depth_layers)))
        unknown = [i for i in depth_layers if i not in DEPTH_LAYERS]
        if unknown:
            raise ValueError(f"depth_layers {unknown} do not exist; choose from {list(DEPTH_LAYERS)}")
        if depth_layers and self.spatial_dims == 2:
            raise ValueError("AlbuNet2D has no depth layers; use AlbuNet3D for depth_layers")
        if encoder_conv_bias and self.spatial_dims == 2:
            raise ValueError("encoder_conv_bias applies to the converted encoder of AlbuNet3D only")
        if num_classes < 1 or num_filters < 1:
            raise ValueError(f"num_classes ({num_classes}) and num_filters ({num_filters}) must be positive")

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.pad_input = pad_input
        self._config: dict[str, Any] = {
            "encoder": encoder,
            "encoder_weights": normalize_weights_source(encoder_weights),
            "in_channels": in_channels,
            "num_classes": num_classes,
            "num_filters": num_filters,
            "depth_layers": list(depth_layers),
            "encoder_conv_bias": encoder_conv_bias,
            "pad_input": pad_input,
        }
        if self.spatial_dims == 2:
            del self._config["depth_layers"], self._config["encoder_conv_bias"]

        encoder_2d = build_encoder(encoder, encoder_weights, in_channels)
        decoder_2d = AlbuNetDecoder(encoder_2d.out_channels, num_filters, num_classes)
        if self.spatial_dims == 2:
            self.encoder, self.decoder = encoder_2d, decoder_2d
        else:
            self.encoder = convert_to_pseudo3d(encoder_2d, add_conv_bias=encoder_conv_bias, inplace=True)
            self.decoder = convert_to_pseudo3d(decoder_2d, inplace=True)
            for index in depth_layers:
                setattr(self.decoder, f"depth{index}", DepthBlock(self.decoder.depth_channels[index]))
        self.train()

    @property
    def config(self) -> dict[str, Any]:
        """Construction parameters (JSON-serialisable); ``build_model(model_name, **config)`` rebuilds the network."""
        return dict(self._config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits (softmax over axis 1 gives probabilities).

        Args:
            x: (N, C, H, W) for AlbuNet2D or (N, C, D, H, W) for AlbuNet3D, any depth D.
                H and W that are not multiples of 32 are zero-padded at their end
                (bottom and right) and the output is cropped back, unless the model was
                built with ``pad_input=False``.

        Returns:
            (N, num_classes, [D,] H, W) logits, the input's spatial shape.

        Raises:
            ValueError: wrong number of axes or channels, or (with ``pad_input=False``)
                H or W not a multiple of 32.
        """
        expected_dims = self.spatial_dims + 2
        if x.dim() != expected_dims:
            layout = "(N, C, H, W)" if self.spatial_dims == 2 else "(N, C, D, H, W)"
            raise ValueError(f"{type(self).__name__} expects a {expected_dims}D tensor {layout}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} was built for {self.in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")

        height, width = x.shape[-2:]
        pad_h = -height % SIZE_MULTIPLE
        pad_w = -width % SIZE_MULTIPLE
        if pad_h or pad_w:
            if not self.pad_input:
                raise ValueError(
                    f"Input H x W = {height} x {width} is not a multiple of {SIZE_MULTIPLE}; "
                    "crop or pad the input, or build the model with pad_input=True"
                )
            x = F.pad(x, (0, pad_w, 0, pad_h))

        logits = self.decoder(self.encoder(x))
        return logits[..., :height, :width]


@register_model("albunet2d")
class AlbuNet2D(AlbuNet):
    """AlbuNet for (N, C, H, W) slices, without depth layers as the paper describes it.

    The authors' code trained its "2D" model as AlbuNet3D on 1-slice patches, where the
    depth layers act as 1x1 conv + BN + ReLU layers; ``AlbuNet3D`` fed (N, C, 1, H, W)
    patches reproduces that variant.

    Args:
        encoder: encoder name (see :func:`gliomaseg.models.list_encoders`); default
            ``resnet34`` as in the paper.
        encoder_weights: ``"imagenet"``, ``"none"`` or a path to a state dict of the
            encoder's source network (for example a torchvision ResNet34 ``.pth``).
        in_channels: input modalities, 3 or more; channels after the third start from
            the mean of the pretrained RGB filters.
        num_classes: output classes (4: background, necrotic/non-enhancing core, edema,
            enhancing tumor).
        num_filters: decoder base width (16 in the published code).
        pad_input: pad H and W to multiples of 32 internally (True) or reject them.
    """

    spatial_dims = 2

    def __init__(
        self,
        *,
        encoder: str = "resnet34",
        encoder_weights: str | Path | None = "imagenet",
        in_channels: int = 3,
        num_classes: int = 4,
        num_filters: int = 16,
        pad_input: bool = True,
    ) -> None:
        super().__init__(
            encoder=encoder,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            num_classes=num_classes,
            num_filters=num_filters,
            pad_input=pad_input,
        )


@register_model("albunet3d")
class AlbuNet3D(AlbuNet):
    """Pseudo-3D AlbuNet for (N, C, D, H, W) volumes of any depth D; depth is never strided.

    Arguments as :class:`AlbuNet2D`, plus:

    Args:
        depth_layers: the 3x1x1 depth layers to build, by number: 1 after the
            encoder's stride-32 output, 2 after ``dec4``, 3 after ``dec2``, 4 after
            ``dec0``. All four by default, ``()`` for none.
        encoder_conv_bias: give the converted encoder convolutions a bias, as the
            published code does (8,512 extra parameters for ResNet34). Off by default.
    """

    spatial_dims = 3

    def __init__(
        self,
        *,
        encoder: str = "resnet34",
        encoder_weights: str | Path | None = "imagenet",
        in_channels: int = 3,
        num_classes: int = 4,
        num_filters: int = 16,
        depth_layers: Iterable[int] = DEPTH_LAYERS,
        encoder_conv_bias: bool = False,
        pad_input: bool = True,
    ) -> None:
        super().__init__(
            encoder=encoder,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            num_classes=num_classes,
            num_filters=num_filters,
            depth_layers=depth_layers,
            encoder_conv_bias=encoder_conv_bias,
            pad_input=pad_input,
        )
