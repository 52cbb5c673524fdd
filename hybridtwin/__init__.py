"""hybridtwin: immune digital twins -- mechanistic immune ODEs, hybrid neural models, personalisation."""

__version__ = "0.1.0"

from . import models
from .models import Model, Parameter
from .parameters import ParameterSpace

__all__ = ["__version__", "models", "Model", "Parameter", "ParameterSpace"]
