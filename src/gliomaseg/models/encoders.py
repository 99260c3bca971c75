"""Encoder interface and registry: ImageNet classification backbones cut into U-Net encoders.

An encoder is a 2D network that maps an (N, C, H, W) image to four feature maps at
strides 4, 8, 16 and 32. AlbuNet builds its decoder from the encoder's channel counts
and converts both to pseudo-3D for AlbuNet3D, so an encoder only needs 2D layers that
has a rule in :func:`gliomaseg.models.convert.convert_to_pseudo3d`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gliomaseg.models.weights import normalize_weights_source

__all__ = [
    "Encoder",
    "EncoderSpec",
    "register_encoder",
    "list_encoders",
    "get_encoder_spec",
    "build_encoder",
    "extend_input_channels",
]

_BUILTIN_ENCODER_MODULES = ("gliomaseg.models.resnet", "gliomaseg.models.efficientnet_lite")


class Encoder(nn.Module):
    """Base class of U-Net encoders.

    Subclasses set ``out_channels`` (channels of the feature maps at strides 4, 8, 16,
    32) and ``first_conv`` (attribute name of the convolution that reads the input) and
    implement ``forward(x) -> [f4, f8, f16, f32]``. Their state dict keys are those of
    the classification network they come from, minus the classifier head, so a
    checkpoint of that network loads with strict key matching.
    """

    out_channels: tuple[int, int, int, int]
    first_conv: str

    @property
    def in_channels(self) -> int:
        return getattr(self, self.first_conv).in_channels


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder.

    ``build(weights)`` returns a 2D :class:`Encoder` with 3 input channels; ``weights``
    is ``"imagenet"``, ``"none"`` or a path to a state dict file.
    """

    name: str
    build: Callable[[str], Encoder]
    description: str
    imagenet_source: str


_ENCODERS: dict[str, EncoderSpec] = {}


def register_encoder(name: str, description: str, imagenet_source: str) -> Callable[[Callable[[str], Encoder]], Callable[[str], Encoder]]:
    """Register an encoder builder under ``name`` (decorator).

    Raises:
        ValueError: the name is already registered.
    """

    def decorator(build: Callable[[str], Encoder]) -> Callable[[str], Encoder]:
        if name in _ENCODERS:
            raise ValueError(f"Encoder {name!r} is already registered")
        _ENCODERS[name] = EncoderSpec(name, build, description, imagenet_source)
        return build

    return decorator


def _load_builtin_encoders() -> None:
    for module_name in _BUILTIN_ENCODER_MODULES:
        importlib.import_module(module_name)


def list_encoders() -> list[str]:
    """Return the names of the registered encoders, sorted."""
    _load_builtin_encoders()
    return sorted(_ENCODERS)


def get_encoder_spec(name: str) -> EncoderSpec:
    """Return the registered encoder ``name``.

    Raises:
        ValueError: no encoder has that name; the message lists the registered ones.
    """
    _load_builtin_encoders()
    if name not in _ENCODERS:
        raise ValueError(f"Unknown encoder {name!r}; registered encoders: {', '.join(sorted(_ENCODERS))}")
    return _ENCODERS[name]


def build_encoder(name: str, weights: str | Path | None = "imagenet", in_channels: int = 3) -> Encoder:
    """Build a 2D encoder with its weights and ``in_channels`` input channels.

    Args:
        name: a name from :func:`list_encoders`.
        weights: ``"imagenet"`` (pretrained ImageNet weights; see each encoder's
            ``imagenet_source`` for where they come from), ``"none"`` / ``None``
            (random initialisation) or the path of a state dict file in the format of
            the source network.
        in_channels: number of input channels, at least 3. Beyond 3, see
            :func:`extend_input_channels`.

    Raises:
        ValueError: unknown name, ``in_channels`` below 3, or an unusable weight file.
        FileNotFoundError: the weight file does not exist.
        gliomaseg.models.weights.WeightsUnavailableError: ImageNet weights could not be
            downloaded.
    """
    spec = get_encoder_spec(name)
    encoder = spec.build(normalize_weights_source(weights))
    if in_channels != 3:
        extend_input_channels(encoder, in_channels)
    return encoder


def extend_input_channels(encoder: Encoder, in_channels: int) -> None:
    """Give the encoder's first convolution ``in_channels`` inputs, in place.

    The filters of the first three (RGB) input channels are kept unchanged; each added
    channel starts from the mean of the three RGB filters. The convolution keeps its
    class (so a TensorFlow-'SAME' convolution stays one).

    Raises:
        ValueError: ``in_channels`` is below 3.
    """
    conv = getattr(encoder, encoder.first_conv)
    if in_channels < 3:
        raise ValueError(
            f"in_channels={in_channels} is not supported: ImageNet encoders read 3 channels (RGB); "
            "pass 3 or more modalities"
        )
    if in_channels == conv.in_channels:
        return
    if conv.groups != 1:
        raise ValueError(f"The first convolution of the encoder is grouped (groups={conv.groups}) and cannot be extended")

    weight = conv.weight.detach()
    rgb = weight[:, :3]
    extra = rgb.mean(dim=1, keepdim=True).expand(-1, in_channels - 3, *rgb.shape[2:])
    conv.weight = nn.Parameter(torch.cat([rgb, extra], dim=1).contiguous())
    conv.in_channels = in_channels
