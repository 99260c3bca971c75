"""Reading encoder weight files and downloading ImageNet weights."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn

__all__ = [
    "WeightsUnavailableError",
    "IMAGENET",
    "NO_WEIGHTS",
    "normalize_weights_source",
    "download_state_dict",
    "load_state_dict_file",
    "load_state_dict_strict",
]

log = logging.getLogger(__name__)

IMAGENET = "imagenet"
NO_WEIGHTS = "none"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be obtained (for example, no network access)."""


def normalize_weights_source(weights: str | Path | None) -> str:
    """Return ``"imagenet"``, ``"none"`` or the weight file path as a string.

    ``None`` and the keywords in any letter case are accepted; anything else is taken as
    a file path (checked when the weights are loaded).
    """
    if weights is None:
        return NO_WEIGHTS
    text = str(weights)
    if text.lower() in (IMAGENET, NO_WEIGHTS):
        return text.lower()
    return text


def download_state_dict(url: str, encoder: str) -> dict[str, torch.Tensor]:
    """Download a state dict through torch.hub's cache (``$TORCH_HOME/hub/checkpoints``).

    A file already in the cache is read without network access.

    Raises:
        WeightsUnavailableError: the download failed. The message explains how to pass
            a local copy of the file instead.
    """
    file_name = url.rsplit("/", 1)[-1]
    try:
        return torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True, map_location="cpu")
    except (URLError, OSError, RuntimeError) as error:
        raise WeightsUnavailableError(
            f"Could not download the ImageNet weights of encoder {encoder} from {url} ({error}). "
            "The machine is probably offline. On a machine with network access, download that file "
            f"(or copy {file_name} from its torch hub cache, ~/.cache/torch/hub/checkpoints/), bring it here "
            f"and pass its path as encoder_weights='/path/to/{file_name}', or use encoder_weights='none'."
        ) from error


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` file or a PyTorch ``.pth``/``.pt`` file.

    PyTorch files are read with ``torch.load(weights_only=True)``, which unpickles only
    tensors and plain containers, so a file cannot run code. A dict whose only entry is
    ``"state_dict"`` or ``"model"`` is unwrapped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Encoder weight file {path} not found; pass encoder_weights='imagenet', 'none' or the path of an existing file"
        )

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        raise ValueError(f"Encoder weight file {path} could not be read as a state dict: {error}") from error

    if isinstance(state, dict) and len(state) == 1 and next(iter(state)) in ("state_dict", "model"):
        state = next(iter(state.values()))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"Encoder weight file {path} does not contain a state dict (a mapping of names to tensors)")
    return state


def load_state_dict_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict whose keys and shapes must match the module exactly.

    Raises:
        ValueError: keys are missing or unexpected, or shapes differ; the message names
            the source and the first differing keys.
    """
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key} {tuple(state_dict[key].shape)} (expected {tuple(tensor.shape)})"
        for key, tensor in expected.items()
        if key in state_dict and state_dict[key].shape != tensor.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensors of the wrong shape, e.g. {wrong_shape[:3]}")
    if problems:
        raise ValueError(f"Weights from {source} do not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)
    log.info("Loaded %d tensors from %s into %s", len(state_dict), source, type(module).__name__)
