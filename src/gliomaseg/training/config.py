"""Training configurations: defaults, shipped YAML files, `key=value` overrides and checks.

A configuration is a nested dict. `DEFAULT_CONFIG` contains every key with its default (the
AlbuNet2D setting of Wacker et al.). A YAML file or dict only needs the keys it changes. The
files in `gliomaseg/configs/` are the paper's four variants and can be named without a path
(`albunet2d_imagenet`). docs/train.md documents every key.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG: dict[str, Any] = {
    "seed": 1,
    "data": {
        "dataset": None,
        "label_schema": None,
        "channels": ["flair", "t1c", "t2"],
        "substitute": {},
        "validation_fraction": 0.2,
        "split_file": None,
    },
    "model": {"name": "albunet2d", "params": {"encoder_weights": "imagenet"}},
    "patches": {"size": [1, 128, 128], "batch_size": 64, "tumor_fraction": 0.0},
    "augmentation": {
        "enabled": True,
        "rotation": {"prob": 0.1, "degrees": 15.0},
        "scaling": {"prob": 0.1, "range": [0.8, 1.25]},
        "elastic": {"prob": 0.1, "spacing": [32.0, 32.0], "magnitude": [0.0, 4.0]},
        "flip": {"prob": 0.5, "axes": [1, 2]},
        "brightness": {"prob": 0.15, "range": [0.7, 1.5]},
        "gamma": {"prob": 0.15, "range": [0.5, 2.0]},
        "noise": {"prob": 0.15, "std": 0.1},
        "blur": {"prob": 0.15, "sigma": [0.5, 1.5]},
    },
    "loss": {"include_background": False, "cross_entropy_weight": 0.0},
    "optimizer": {"lr": 1.0e-3, "weight_decay": 0.0},
    "training": {
        "epochs": 50,
        "batches_per_epoch": 100,
        "max_minutes": None,
        "device": "auto",
        "devices": 1,
        "num_nodes": 1,
        "strategy": "auto",
        "precision": "auto",
        "channels_last": "auto",
        "num_workers": "auto",
        "deterministic": False,
        "progress_bar": True,
    },
    "validation": {"patches": 100, "batch_size": None},
}

# Sections whose entries are free-form: overrides may add keys there.
_OPEN_SECTIONS = ("model.params", "data.substitute", "augmentation")
_PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true")
_DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A training configuration is missing, unreadable or has an invalid value."""


def shipped_configs() -> list[str]:
    """Return the names of the configurations shipped in gliomaseg/configs/, sorted."""
    folder = resources.files("gliomaseg") / "configs"
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read the configuration {path}: {error}") from error
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"configuration {path} must be a YAML mapping of sections, not {type(content).__name__}")
    return content


def read_config_source(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Read a configuration without defaults from a dict, a YAML path or a shipped name.

    Returns:
        (the mapping as written, a short name for run folders).

    Raises:
        ConfigError: the path does not exist and no shipped configuration has that name.
    """
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source)), "run"
    path = Path(source)
    if path.is_file():
        return _read_yaml(path), path.stem
    name = str(source)
    if name in shipped_configs():
        return _read_yaml(Path(str(resources.files("gliomaseg") / "configs" / f"{name}.yaml"))), name
    raise ConfigError(f"configuration {source!r} is neither a file nor a shipped configuration; shipped: {', '.join(shipped_configs())}")


def merge(base: Mapping[str, Any], update: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """Return `base` updated recursively with `update`; unknown keys raise ConfigError outside open sections."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        dotted = f"{path}.{key}" if path else str(key)
        open_section = any(dotted == s or dotted.startswith(s + ".") or path == s or path.startswith(s + ".") for s in _OPEN_SECTIONS)
        if key not in merged and not open_section:
            known = ", ".join(sorted(f"{path}.{k}" if path else k for k in merged))
            raise ConfigError(f"unknown configuration key {dotted!r}; known keys here: {known}")
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value, dotted)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_overrides(overrides: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Turn `["a.b=1", "c=[1, 2]"]` (values parsed as YAML) or `{"a.b": 1}` into a nested dict.

    Raises:
        ConfigError: an entry has no `=` or an empty key.
    """
    if not overrides:
        return {}
    items: list[tuple[str, Any]] = []
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        for entry in overrides:
            key, sep, text = str(entry).partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"override {entry!r} is not of the form key=value, e.g. training.epochs=5")
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as error:
                raise ConfigError(f"override {entry!r}: the value is not valid YAML ({error})") from error
            items.append((key.strip(), value))
    nested: dict[str, Any] = {}
    for key, value in items:
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_config(config: Mapping[str, Any]) -> None:
    """Check types and ranges of a resolved configuration.

    Raises:
        ConfigError: naming the key, the invalid value and the valid range.
    """
    data, patches, training = config["data"], config["patches"], config["training"]
    _require(isinstance(config["seed"], int), f"seed must be an integer, got {config['seed']!r}")
    _require(data["dataset"] not in (None, ""), "data.dataset is not set; pass --set data.dataset=PATH (a folder of cases)")
    _require(isinstance(data["channels"], list) and len(data["channels"]) > 0, f"data.channels must be a non-empty list of modalities, got {data['channels']!r}")
    _require(0.0 <= float(data["validation_fraction"]) < 1.0, f"data.validation_fraction must be in [0, 1), got {data['validation_fraction']}")

    size = patches["size"]
    _require(isinstance(size, list) and len(size) == 3 and all(isinstance(s, int) and s > 0 for s in size), f"patches.size must be three positive integers [D, H, W], got {size!r}")
    _require(isinstance(patches["batch_size"], int) and patches["batch_size"] > 0, f"patches.batch_size must be a positive integer, got {patches['batch_size']!r}")
    _require(0.0 <= float(patches["tumor_fraction"]) <= 1.0, f"patches.tumor_fraction must be in [0, 1], got {patches['tumor_fraction']}")
    if config["model"]["name"] == "albunet2d":
        _require(size[0] == 1, f"model albunet2d takes 2D patches; patches.size must start with depth 1, got {size}")

    _require(float(config["optimizer"]["lr"]) > 0, f"optimizer.lr must be positive, got {config['optimizer']['lr']}")
    _require(float(config["optimizer"]["weight_decay"]) >= 0, f"optimizer.weight_decay must be >= 0, got {config['optimizer']['weight_decay']}")
    for key in ("epochs", "batches_per_epoch", "devices", "num_nodes"):
        _require(isinstance(training[key], int) and training[key] > 0, f"training.{key} must be a positive integer, got {training[key]!r}")
    minutes = training["max_minutes"]
    _require(minutes is None or float(minutes) > 0, f"training.max_minutes must be positive or null, got {minutes!r}")
    _require(training["device"] in _DEVICES, f"training.device must be one of {', '.join(_DEVICES)}, got {training['device']!r}")
    _require(str(training["precision"]) in _PRECISIONS, f"training.precision must be one of {', '.join(_PRECISIONS)}, got {training['precision']!r}")
    _require(training["channels_last"] in ("auto", True, False), f"training.channels_last must be auto, true or false, got {training['channels_last']!r}")
    workers = training["num_workers"]
    _require(workers == "auto" or (isinstance(workers, int) and workers >= 0), f"training.num_workers must be auto or an integer >= 0, got {workers!r}")
    validation = config["validation"]
    _require(isinstance(validation["patches"], int) and validation["patches"] > 0, f"validation.patches must be a positive integer, got {validation['patches']!r}")
    batch = validation["batch_size"]
    _require(batch is None or (isinstance(batch, int) and batch > 0), f"validation.batch_size must be a positive integer or null, got {batch!r}")


def resolve_config(
    source: str | Path | Mapping[str, Any],
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """Merge defaults, a configuration and overrides, then check the result.

    Args:
        source: a dict, a YAML file, or the name of a shipped configuration.
        overrides: `key=value` strings (dotted keys, YAML values) or a dict of dotted keys.

    Returns:
        (resolved configuration, name of the source).

    Raises:
        ConfigError: unreadable source, unknown keys or invalid values.
    """
    written, name = read_config_source(source)
    config = merge(DEFAULT_CONFIG, written)
    config = merge(config, parse_overrides(overrides))
    validate_config(config)
    return config, name


def dump_config(config: Mapping[str, Any], path: str | Path) -> None:
    """Write a configuration as YAML (keys in their defined order)."""
    Path(path).write_text(yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None))
