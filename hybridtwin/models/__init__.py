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
from .alexander_wahl2011 import alexander_wahl2011
from .baccam2006 import baccam2006, baccam2006_tcl
from .baker2013 import baker2013
from .depillis2009 import depillis2009
from .hernandez_vargas2012 import hernandez_vargas2012
from .kuznetsov1994 import kuznetsov1994
from .reynolds2006 import reynolds2006
from .sarscov2_cd8 import sarscov2_cd8
from .vaccine_asc import vaccine_asc

_FACTORIES: dict[str, Callable[[], Model]] = {
    "baccam2006": baccam2006,
    "baccam2006_tcl": baccam2006_tcl,
    "hernandez_vargas2012": hernandez_vargas2012,
    "reynolds2006": reynolds2006,
    "kuznetsov1994": kuznetsov1994,
    "depillis2009": depillis2009,
    "vaccine_asc": vaccine_asc,
    "baker2013": baker2013,
    "alexander_wahl2011": alexander_wahl2011,
    "sarscov2_cd8": sarscov2_cd8,
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
