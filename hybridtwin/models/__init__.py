"""Library of published mechanistic immune models and the registry to find them.

>>> import hybridtwin.models as hm
>>> "baccam2006" in hm.available()
True
>>> hm.get("baccam2006").state_names
['T', 'I1', 'I2', 'V']
"""

from __future__ import annotations

from typing import Callable

from ..parameters import Parameter, ParameterSpace
from .base import Intervention, Model, ModelDefinitionError, Named, log10_observable
from .baccam2006 import baccam2006, baccam2006_tcl

_FACTORIES: dict[str, Callable[[], Model]] = {
    "baccam2006": baccam2006,
    "baccam2006_tcl": baccam2006_tcl,
}
_CACHE: dict[str, Model] = {}


def available() -> list[str]:
    """Names of all registered models (built-in and user-registered), in registration order."""
    return list(_FACTORIES)


def get(name: str | Model) -> Model:
    """The model registered under ``name`` (a :class:`Model` passed in is returned unchanged)."""
    if isinstance(name, Model):
        return name
    if name not in _FACTORIES:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available())}")
    if name not in _CACHE:
        _CACHE[name] = _FACTORIES[name]()
    return _CACHE[name]


def register(model: Model, overwrite: bool = False) -> Model:
    """Make a user-defined model available to :func:`get`, the CLI and the quickstart by its name."""
    if not isinstance(model, Model):
        raise TypeError(f"register() takes a Model, got {type(model).__name__}")
    if model.name in _FACTORIES and not overwrite:
        raise ValueError(f"a model named {model.name!r} is already registered; pass overwrite=True to replace it")
    _FACTORIES[model.name] = lambda m=model: m
    _CACHE[model.name] = model
    return model


__all__ = [
    "Model", "Parameter", "ParameterSpace", "Intervention", "ModelDefinitionError", "Named", "log10_observable",
    "available", "get", "register",
]
