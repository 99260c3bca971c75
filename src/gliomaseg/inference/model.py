"""A trained network with what prediction needs to feed it: channel order, patch size, label schema."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gliomaseg.data.cases import MODALITIES, Case
from gliomaseg.data.labels import NUM_CLASSES

log = logging.getLogger(__name__)

# Training patch sizes of the published AlbuNet models, used when a checkpoint has none.
DEFAULT_PATCH_2D = (1, 128, 128)
DEFAULT_PATCH_3D = (24, 128, 128)
SUPPORTED_NORMALIZATION = "zscore_brain"


class ModelInputError(ValueError):
    """A case cannot be fed to a model: its modalities do not match the model's input channels."""


@dataclass
class PredictionModel:
    """A network ready for sliding-window prediction.

    Attributes:
        network: the nn.Module in eval mode, returning (N, 4, [d,] h, w) logits.
        spatial_dims: 2 for networks on (N, C, H, W) slices, 3 for (N, C, D, H, W) volumes.
        channels: modality names in input channel order, for example ("flair", "t1c", "t2").
        patch_size: training patch size (d, h, w) in voxels; d is 1 for 2D networks.
        label_schema: label schema of the training label maps.
        checkpoint: the file the network was loaded from, or None.
        metadata: the checkpoint's metadata (empty for a network built in memory).
    """

    network: nn.Module
    spatial_dims: int
    channels: tuple[str, ...]
    patch_size: tuple[int, int, int]
    label_schema: str = "brats2017"
    checkpoint: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        self.patch_size = normalize_patch_size(self.patch_size, self.spatial_dims)
        unknown = [c for c in self.channels if c not in MODALITIES]
        if unknown:
            raise ModelInputError(f"{self.source}: unknown input channel(s) {unknown}; expected names among {list(MODALITIES)}")

    @property
    def source(self) -> str:
        """Checkpoint path, or a description of an in-memory network, for messages."""
        return f"checkpoint {self.checkpoint}" if self.checkpoint is not None else f"model {type(self.network).__name__}"

    def summary(self) -> dict[str, Any]:
        """Return the JSON-serialisable facts about the model that a prediction report records."""
        name = getattr(self.network, "model_name", "") or type(self.network).__name__
        model_entry = self.metadata.get("model", {"name": name})
        return {
            "path": str(self.checkpoint) if self.checkpoint is not None else None,
            "model": model_entry.get("name"),
            "model_params": model_entry.get("params", {}),
            "channels": list(self.channels),
            "patch_size": list(self.patch_size),
            "label_schema": self.label_schema,
            "normalization": self.metadata.get("normalization", SUPPORTED_NORMALIZATION),
            "created": self.metadata.get("created"),
            "gliomaseg_version": self.metadata.get("gliomaseg_version"),
        }

    def check_case(self, case: Case, substitute: dict[str, str] | None = None) -> None:
        """Check that `case` has every modality the model takes (after substitution).

        Raises:
            ModelInputError: a modality is missing; the message names the model's channels and
                the case's modalities.
        """
        substitute = substitute or {}
        available = set(case.modalities)
        missing = [c for c in self.channels if c not in available and substitute.get(c) not in available]
        if missing:
            raise ModelInputError(
                f"case {case.case_id} ({case.root}): {self.source} takes channels {list(self.channels)} in this "
                f"order, but the case has modalities {list(case.modalities)}; missing {missing}. Add the missing "
                f"files or choose a substitute, for example --substitute {missing[0]}=t1c."
            )


def normalize_patch_size(patch_size: Sequence[int] | None, spatial_dims: int) -> tuple[int, int, int]:
    """Return the patch size as (d, h, w); a 2D size (h, w) becomes (1, h, w).

    Raises:
        ValueError: the size does not have two or three positive entries, or a 2D network has
            a depth other than 1.
    """
    if patch_size is None:
        return DEFAULT_PATCH_2D if spatial_dims == 2 else DEFAULT_PATCH_3D
    size = tuple(int(s) for s in patch_size)
    if len(size) == 2:
        size = (1, *size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"patch size {list(patch_size)} must be (h, w) or (d, h, w) with positive entries")
    if spatial_dims == 2 and size[0] != 1:
        raise ValueError(f"patch size {list(patch_size)} has depth {size[0]}, but a 2D network takes depth 1")
    return size


def resolve_checkpoint_path(path: str | Path) -> Path:
    """Return `path`, or the checkpoint inside a training run folder (best, else last).

    Raises:
        FileNotFoundError: `path` is a folder without best.safetensors or last.safetensors.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    for name in ("best.safetensors", "last.safetensors"):
        if (path / name).is_file():
            log.info("using %s of run folder %s", name, path)
            return path / name
    raise FileNotFoundError(
        f"{path} is a folder without best.safetensors or last.safetensors; pass a checkpoint file "
        "written by gliomaseg train (for example RUN/best.safetensors)"
    )


def load_prediction_model(path: str | Path, device: str | torch.device = "cpu") -> PredictionModel:
    """Load a checkpoint written by gliomaseg.models.save_checkpoint for prediction.

    `path` may also be a training run folder; its best.safetensors (else last.safetensors)
    is loaded.

    Returns:
        A PredictionModel with the network in eval mode on `device`.

    Raises:
        FileNotFoundError: no such file.
        gliomaseg.models.CheckpointError: the file is not a usable checkpoint.
        ModelInputError: the metadata's channels do not fit the network or name unknown
            modalities, the network does not output the four model classes, or the
            checkpoint uses an intensity normalisation that prediction does not implement.
    """
    from gliomaseg.models import load_checkpoint

    path = resolve_checkpoint_path(path)
    network, metadata = load_checkpoint(path, map_location=device)
    channels = tuple(metadata["channels"])
    in_channels = metadata.get("in_channels")
    if in_channels is not None and in_channels != len(channels):
        raise ModelInputError(
            f"checkpoint {path}: the network takes {in_channels} input channels but the metadata names "
            f"{len(channels)} ({channels}); the checkpoint is inconsistent, save it again"
        )
    num_classes = metadata.get("num_classes")
    if num_classes is not None and num_classes != NUM_CLASSES:
        raise ModelInputError(
            f"checkpoint {path}: the network outputs {num_classes} classes, but prediction maps the "
            f"{NUM_CLASSES} model classes (background, core, edema, enhancing)"
        )
    normalization = metadata.get("normalization", SUPPORTED_NORMALIZATION)
    if normalization != SUPPORTED_NORMALIZATION:
        raise ModelInputError(
            f"checkpoint {path}: intensity normalisation {normalization!r} is not implemented for prediction; "
            f"only {SUPPORTED_NORMALIZATION!r} (z-score over the brain) is"
        )

    spatial_dims = int(getattr(network, "spatial_dims", 3))
    patch_size = metadata.get("patch_size")
    if patch_size is None:
        log.warning("checkpoint %s has no patch size; using %s", path, DEFAULT_PATCH_2D if spatial_dims == 2 else DEFAULT_PATCH_3D)
    return PredictionModel(
        network=network,
        spatial_dims=spatial_dims,
        channels=channels,
        patch_size=patch_size,
        label_schema=str(metadata.get("label_schema", "brats2017")),
        checkpoint=path,
        metadata=metadata,
    )
