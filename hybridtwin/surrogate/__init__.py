"""Neural surrogate emulators of the exact simulator, certified against it (see :mod:`.emulator`).

- :class:`Domain` / :class:`ParameterDomain`: what is emulated (model, patient parameter ranges, a
  :class:`~hybridtwin.scenarios.ScenarioSpace`, output times and outputs).
- :func:`fit_surrogate`: exact simulations over a space-filling design, a deep ensemble trained on them
  (:class:`TimedEnsemble` by default when scenarios have factors, :class:`EnsembleMLP` otherwise).
- :func:`certify`: errors against the exact engine on fresh pairs (median, 95th percentile, worst; ensemble
  calibration), stored in the surrogate's card.
- :class:`Surrogate`: the engine protocol (``run(population, scenarios, times)``), out-of-domain queries
  flagged or routed to the exact engine; :func:`save` / :func:`load`.
- :func:`refine`: active learning -- new exact simulations where the ensemble disagrees most.
"""

from .domain import Domain, ParameterDomain, twin_domain
from .emulator import (Surrogate, certificate_table, certify, fit_surrogate, load, read_card, refine, save,
                       simulate_domain, simulate_unit)
from .network import EnsembleMLP, SeparableEnsemble, TimedEnsemble

__all__ = ["Domain", "EnsembleMLP", "ParameterDomain", "SeparableEnsemble", "Surrogate", "TimedEnsemble",
           "certificate_table", "certify", "fit_surrogate", "load", "read_card", "refine", "save", "simulate_domain",
           "simulate_unit", "twin_domain"]
