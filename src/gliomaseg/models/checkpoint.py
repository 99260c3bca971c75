"""Model checkpoints: one ``.safetensors`` file with the weights and JSON metadata in its header.

The header's metadata entry ``"gliomaseg"`` is a JSON object with everything prediction
needs to rebuild and feed the model:

==================  ==========================================================
key                 value
==================  ==========================================================
format_version      integer, :data:`FORMAT_VERSION`
model               ``{"name": registry name, "params": model.config}``
num_classes         output channels of the model
in_channels         input channels of the model
channels            modality names in input channel order, e.g. ["flair", "t1c", "t2"]
normalization       intensity normalisation of the inputs, e.g. "zscore_brain"
label_schema        label schema of the training label maps, e.g. "brats2017"
patch_size          training patch size, [D, H, W] or [H, W]
training            training configuration (dict)
gliomaseg_version   package version that wrote the file
torch_version       torch version that wrote the file
created             UTC time of writing, ISO 8601
extra               any other metadata the caller passed (dict)
==================  ==========================================================

Weights are read with safetensors only, so loading a checkpoint never unpickles data.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import gliomaseg
from gliomaseg.data.io import default_file_mode
from gliomaseg.models.registry import build_model

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "CheckpointError",
    "CheckpointMismatchError",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_metadata",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_KEY = "gliomaseg"
SUFFIX = ".safetensors"
_REQUIRED_CALLER_KEYS = ("channels", "label_schema", "patch_size")
_OPTIONAL_CALLER_DEFAULTS: dict[str, Any] = {"normalization": "zscore_brain", "training": {}}
_RESERVED_KEYS = {
    "format_version",
    "model",
    "num_classes",
    "in_channels",
    "gliomaseg_version",
    "torch_version",
    "created",
    "extra",
}


class CheckpointError(ValueError):
    """A checkpoint file is missing parts, corrupt, or not a gliomaseg checkpoint."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not match what the caller expects (architecture, channel order, ...)."""


def _model_identity(model: nn.Module) -> tuple[str, dict[str, Any]]:
    name = getattr(model, "model_name", "")
    config = getattr(model, "config", None)
    if not name or not isinstance(config, Mapping):
        raise TypeError(
            f"{type(model).__name__} cannot be saved as a checkpoint: it needs a registry name (model_name) "
            "and a config dict; build it with gliomaseg.models.build_model"
        )
    return name, dict(config)


def _build_metadata(model: nn.Module, metadata: Mapping[str, Any]) -> dict[str, Any]:
    missing = [key for key in _REQUIRED_CALLER_KEYS if key not in metadata]
    if missing:
        raise ValueError(f"Checkpoint metadata is missing {missing}; pass them in the metadata dict")
    reserved = sorted(_RESERVED_KEYS & set(metadata))
    if reserved:
        raise ValueError(f"Checkpoint metadata keys {reserved} are filled in by save_checkpoint; remove them")

    name, config = _model_identity(model)
    channels = list(metadata["channels"])
    in_channels = config.get("in_channels", getattr(model, "in_channels", None))
    if in_channels is not None and len(channels) != in_channels:
        raise ValueError(f"metadata channels {channels} name {len(channels)} modalities but the model has {in_channels} input channels")

    known = {*_REQUIRED_CALLER_KEYS, *_OPTIONAL_CALLER_DEFAULTS}
    patch_size = metadata["patch_size"]
    return {
        "format_version": FORMAT_VERSION,
        "model": {"name": name, "params": config},
        "num_classes": config.get("num_classes", getattr(model, "num_classes", None)),
        "in_channels": in_channels,
        "channels": channels,
        "normalization": metadata.get("normalization", _OPTIONAL_CALLER_DEFAULTS["normalization"]),
        "label_schema": metadata["label_schema"],
        "patch_size": None if patch_size is None else [int(s) for s in patch_size],
        "training": dict(metadata.get("training", {})),
        "gliomaseg_version": gliomaseg.__version__,
        "torch_version": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "extra": {key: value for key, value in metadata.items() if key not in known},
    }


def save_checkpoint(path: str | Path, model: nn.Module, metadata: Mapping[str, Any]) -> Path:
    """Write the model's weights and metadata to one ``.safetensors`` file, atomically.

    The file is written to a temporary name in the same folder and renamed, so a reader
    never sees a partial checkpoint and an interrupted save leaves any older file intact.

    Args:
        path: output file; must end in ``.safetensors``. Parent folders are created.
        model: a model built by :func:`~gliomaseg.models.build_model` (it needs
            ``model_name`` and ``config``).
        metadata: ``channels`` (modality names in input order), ``label_schema``,
            ``patch_size`` (required); ``normalization`` (default ``"zscore_brain"``),
            ``training`` (dict, default empty); other keys are kept under ``extra``.
            Values must be JSON-serialisable.

    Returns:
        The path written.

    Raises:
        ValueError: wrong suffix, missing or reserved metadata keys, a channel list that
            does not match the model's input channels, or metadata that is not JSON.
        TypeError: the model has no registry name or config.
    """
    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"Checkpoint path {path} must end in {SUFFIX}")
    header = _build_metadata(model, metadata)
    try:
        header_json = json.dumps(header, sort_keys=True)
    except TypeError as error:
        raise ValueError(f"Checkpoint metadata is not JSON-serialisable: {error}") from error

    # Cloning gives every tensor its own contiguous storage, which safetensors requires.
    state = {key: tensor.detach().to("cpu", copy=True).contiguous() for key, tensor in model.state_dict().items()}

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(temp_name, default_file_mode())
    os.close(handle)
    try:
        save_file(state, temp_name, metadata={METADATA_KEY: header_json})
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    log.info("Saved checkpoint %s (model %s, %d tensors)", path, header["model"]["name"], len(state))
    return path


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """Return the metadata of a checkpoint without loading its weights.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: the file is not a safetensors file, is truncated, has no
            gliomaseg metadata, or was written by a newer checkpoint format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} not found")
    try:
        with safe_open(path, framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"Checkpoint {path} is not a readable safetensors file (truncated or corrupt?): {error}") from error

    if METADATA_KEY not in header:
        raise CheckpointError(f"{path} is a safetensors file without gliomaseg metadata; it is not a gliomaseg checkpoint")
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"Checkpoint {path}: the gliomaseg metadata is not valid JSON ({error})") from error

    version = metadata.get("format_version") if isinstance(metadata, dict) else None
    if not isinstance(version, int):
        raise CheckpointError(f"Checkpoint {path}: the metadata has no integer format_version")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint {path} has format version {version}, newer than this gliomaseg "
            f"({gliomaseg.__version__}, format {FORMAT_VERSION}); upgrade gliomaseg"
        )
    for key in ("model", "channels"):
        if key not in metadata:
            raise CheckpointError(f"Checkpoint {path}: the metadata has no {key!r} entry")
    return metadata


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _differences(metadata: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    model = metadata["model"]
    params = model.get("params", {})
    differences = []
    for key, wanted in expected.items():
        if key == "model" and isinstance(wanted, str):
            actual, wanted = model.get("name"), wanted
        elif key == "model":
            actual = {"name": model.get("name"), **{k: params.get(k) for k in wanted if k != "name"}}
            wanted = {k: _jsonable(v) for k, v in wanted.items()}
        elif key in metadata:
            actual, wanted = metadata[key], _jsonable(wanted)
        elif key in params:
            actual, wanted = params[key], _jsonable(wanted)
        else:
            raise ValueError(f"Unknown checkpoint property {key!r} in expected; use metadata keys {sorted(metadata)} or model parameters {sorted(params)}")
        if actual != wanted:
            differences.append(f"{key} is {actual!r} but {wanted!r} was expected")
    return differences


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    expected: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint and load its weights with strict key matching.

    The model is built with ``encoder_weights="none"`` (its weights come from the file,
    so nothing is downloaded) and returned in eval mode.

    Args:
        path: a file written by :func:`save_checkpoint`.
        map_location: device for the weights, e.g. ``"cpu"`` or ``"cuda:0"``.
        expected: properties the checkpoint must have, for example
            ``{"channels": ["flair", "t1c", "t2"], "model": "albunet3d"}``. A key is a
            metadata key (``channels``, ``label_schema``, ``patch_size``, ...) or a model
            parameter (``encoder``, ``in_channels``, ...). The value of ``model`` is a
            registry name or a dict of ``name`` and parameters.

    Returns:
        ``(model, metadata)``.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointMismatchError: the checkpoint differs from ``expected``; the message
            lists every difference.
        CheckpointError: the file is corrupt or truncated, or its weights do not fit
            the architecture in its metadata.
    """
    path = Path(path)
    metadata = read_checkpoint_metadata(path)
    if expected:
        differences = _differences(metadata, expected)
        if differences:
            raise CheckpointMismatchError(f"Checkpoint {path} does not match: " + "; ".join(differences))

    name = metadata["model"]["name"]
    params = dict(metadata["model"].get("params", {}))
    if "encoder_weights" in params:
        params["encoder_weights"] = "none"
    model = build_model(name, **params)

    try:
        state = load_file(path, device=str(map_location))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"Checkpoint {path}: the weights could not be read (truncated or corrupt?): {error}") from error
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"Checkpoint {path}: the weights do not fit model {name} with parameters {params}: {error}") from error

    model.to(map_location).eval()
    log.info("Loaded checkpoint %s (model %s, created %s)", path, name, metadata.get("created"))
    return model, metadata
