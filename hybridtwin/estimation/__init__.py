"""Population estimation for twins: SAEM, standard errors, identifiability, degeneracy checks, amortisation.

:func:`estimate` runs them in order; the pieces are public for finer control.

>>> from hybridtwin.estimation import SAEMConfig
>>> SAEMConfig(n_explore=10).n_smooth
100
"""

from .amortise import AmortiseConfig, amortise
from .api import estimate
from .checks import DegeneracyWarning, degeneracy_checks, identifiability
from .fisher import correlation_table, population_columns, set_uncertainty
from .marginal import marginal_loglik
from .multistart import MultiStartResult, multistart
from .saem import PopulationFit, SAEMConfig, conditional_summary, fit_saem

__all__ = ["AmortiseConfig", "DegeneracyWarning", "MultiStartResult", "PopulationFit", "SAEMConfig", "amortise", "conditional_summary",
           "correlation_table", "degeneracy_checks", "estimate", "fit_saem", "identifiability", "marginal_loglik",
           "multistart", "population_columns", "set_uncertainty"]
