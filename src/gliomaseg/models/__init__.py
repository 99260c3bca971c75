"""Segmentation networks: AlbuNet2D/AlbuNet3D, their encoders, the model registry and checkpoints."""

from gliomaseg.models.albunet import AlbuNet2D, AlbuNet3D
from gliomaseg.models.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)
from gliomaseg.models.encoders import list_encoders
from gliomaseg.models.registry import build_model, list_models, register_model
from gliomaseg.models.summary import count_parameters, summary

__all__ = [
    "AlbuNet2D",
    "AlbuNet3D",
    "build_model",
    "register_model",
    "list_models",
    "list_encoders",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_metadata",
    "CheckpointError",
    "CheckpointMismatchError",
    "summary",
    "count_parameters",
]
