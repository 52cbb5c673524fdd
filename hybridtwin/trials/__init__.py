"""Virtual trials: virtual populations, trial designs, power and schedule optimisation.

See :mod:`hybridtwin.trials.population`, :mod:`hybridtwin.trials.design` and
:mod:`hybridtwin.trials.optimise`; ``hybridtwin trial DESIGN.yaml`` runs a design from the command line.
"""

from .design import Arm, TrialDesign, TrialResult, engine_inputs, power_curve, run_trial
from .optimise import OptimisationResult, optimise_schedule
from .population import CovariateModel, subgroup, virtual_population

__all__ = ["Arm", "CovariateModel", "TrialDesign", "TrialResult", "engine_inputs", "OptimisationResult", "optimise_schedule", "power_curve", "run_trial",
           "subgroup", "virtual_population"]
