"""Model registry: configurations and checkpoints name a model, :func:`build_model` builds it.

A registered model is an ``nn.Module`` class (or a function returning one) whose
instances have a ``config`` property: a JSON-serialisable dict of keyword arguments
such that ``build_model(name, **model.config)`` rebuilds the same architecture.
Registration sets ``model_name`` on the class, which checkpoints store.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = ["register_model", "build_model", "list_models"]

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_BUILTIN_MODEL_MODULES = ("gliomaseg.models.albunet", "gliomaseg.models.ucltig")


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Register a model class or factory function under ``name`` (decorator).

    Example::

        @register_model("mynet")
        class MyNet(nn.Module):
            def __init__(self, *, in_channels: int = 3, num_classes: int = 4): ...
            @property
            def config(self) -> dict: return {"in_channels": ..., "num_classes": ...}

    Raises:
        ValueError: the name is already registered to another object.
    """

    def decorator(factory: Factory) -> Factory:
        registered = _MODELS.get(name)
        if registered is not None and registered is not factory:
            raise ValueError(f"Model name {name!r} is already registered to {registered!r}")
        _MODELS[name] = factory
        if isinstance(factory, type):
            factory.model_name = name
        return factory

    return decorator


def _load_builtin_models() -> None:
    for module_name in _BUILTIN_MODEL_MODULES:
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:  # a missing dependency inside an existing module is a real error
                raise


def list_models() -> list[str]:
    """Return the names of the registered models, sorted."""
    _load_builtin_models()
    return sorted(_MODELS)


def build_model(name: str, **params: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword parameters ``params``.

    Returns:
        The model, with ``model_name`` set to ``name``.

    Raises:
        ValueError: no model has that name (the message lists the registered ones).
        TypeError: a parameter is not accepted by the model.
    """
    _load_builtin_models()
    if name not in _MODELS:
        raise ValueError(f"Unknown model {name!r}; registered models: {', '.join(sorted(_MODELS))}")
    model = _MODELS[name](**params)
    if getattr(model, "model_name", None) != name:
        model.model_name = name
    return model
