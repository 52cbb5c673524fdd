"""Population estimation for twins: SAEM, standard errors, identifiability, degeneracy checks, amortisation.

>>> from hybridtwin.estimation import SAEMConfig
>>> SAEMConfig(n_explore=10).n_smooth
100
"""

from .fisher import correlation_table, population_columns, set_uncertainty
from .saem import PopulationFit, SAEMConfig, conditional_summary, fit_saem

__all__ = ["PopulationFit", "SAEMConfig", "conditional_summary", "correlation_table", "fit_saem",
           "population_columns", "set_uncertainty"]
