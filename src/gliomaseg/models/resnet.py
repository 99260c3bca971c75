"""torchvision ResNet encoders (resnet18, resnet34, resnet50) with ImageNet weights."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn
from torchvision.models import ResNet

from gliomaseg.models.encoders import Encoder, register_encoder
from gliomaseg.models.weights import (
    IMAGENET,
    NO_WEIGHTS,
    download_state_dict,
    load_state_dict_file,
    load_state_dict_strict,
)

__all__ = ["ResNetEncoder", "build_resnet_encoder"]

_RESNETS: dict[str, tuple[Callable[..., ResNet], torchvision.models.WeightsEnum]] = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
}


def _last_batch_norm_channels(layer: nn.Sequential) -> int:
    norms = [m for m in layer[-1].modules() if isinstance(m, nn.BatchNorm2d)]
    return norms[-1].num_features


class ResNetEncoder(Encoder):
    """ResNet without ``avgpool`` and ``fc``, its 3x3 stride-2 stem max pooling replaced by 2x2 stride 2.

    Features: ``layer1`` at stride 4, ``layer2`` at 8, ``layer3`` at 16, ``layer4`` at
    32. The stem output (stride 2) is not a feature. The residual blocks are
    torchvision's, unchanged. State dict keys are torchvision's without ``fc.*``.
    """

    first_conv = "conv1"

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        self.out_channels = tuple(_last_batch_norm_channels(layer) for layer in (self.layer1, self.layer2, self.layer3, self.layer4))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f4 = self.layer1(x)
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        f32 = self.layer4(f16)
        return [f4, f8, f16, f32]


def build_resnet_encoder(name: str, weights: str) -> ResNetEncoder:
    """Build the torchvision ResNet ``name`` with ``weights`` (``imagenet``, ``none`` or a file path) as an encoder.

    A weight file contains a torchvision state dict of that ResNet (with or without
    ``fc.*``); keys and shapes must match exactly.
    """
    constructor, imagenet_weights = _RESNETS[name]
    resnet = constructor(weights=None)  # torchvision's initialisation: Kaiming normal fan-out, BN gamma 1, beta 0

    if weights == IMAGENET:
        state = download_state_dict(imagenet_weights.url, name)
        source = f"torchvision {imagenet_weights}"
    elif weights != NO_WEIGHTS:
        state = load_state_dict_file(weights)
        source = str(weights)
    else:
        state = None

    if state is not None:
        if "fc.weight" not in state:  # a state dict saved from an encoder: fc is not needed
            state = {**state, "fc.weight": resnet.fc.weight.detach(), "fc.bias": resnet.fc.bias.detach()}
        load_state_dict_strict(resnet, state, source)
    return ResNetEncoder(resnet)


def _register(name: str) -> None:
    _, imagenet_weights = _RESNETS[name]
    register_encoder(
        name,
        description=f"torchvision {name}",
        imagenet_source=f"torchvision {imagenet_weights} (downloaded from {imagenet_weights.url})",
    )(lambda weights: build_resnet_encoder(name, weights))


for _name in _RESNETS:
    _register(_name)
