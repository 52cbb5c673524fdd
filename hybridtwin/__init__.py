"""hybridtwin: immune digital twins -- mechanistic immune ODEs, hybrid neural models, personalisation.

>>> import hybridtwin as ht
>>> df = ht.simulate("baccam2006", [0, 1, 2, 3])
>>> df.shape
(4, 6)
"""

from ._version import __version__
from . import conformal, data, datasets, estimation, models, personalise, virtual
from .checkpoint import load
from .config import BlackBoxConfig, ClosureConfig, EncoderConfig, NoiseConfig
from .dosing import BatchSchedule, Dose
from .models import Model, Parameter
from .parameters import ParameterSpace
from .simulation import simulate
from .solve import Solution, SolverConfig, Status, solve

__all__ = [
    "__version__", "conformal", "data", "datasets", "estimation", "models", "personalise", "virtual", "Model", "Parameter", "ParameterSpace", "Dose", "BatchSchedule",
    "simulate", "load", "solve", "SolverConfig", "Solution", "Status",
    "ClosureConfig", "BlackBoxConfig", "EncoderConfig", "NoiseConfig",
]
