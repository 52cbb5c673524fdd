"""One call from data to an estimated, checked and amortised twin: :func:`estimate`."""

from __future__ import annotations

import time

from ..data import CohortData
from ..data.dataset import Batch
from .amortise import AmortiseConfig, amortise
from .checks import degeneracy_checks
from .fisher import set_uncertainty
from .saem import PopulationFit, SAEMConfig, fit_saem


def estimate(twin, data: CohortData | Batch, saem: SAEMConfig | None = None,
             amortisation: AmortiseConfig | bool | None = None, checks: bool = True) -> PopulationFit:
    """Estimate the twin's population model by SAEM, its standard errors (``twin.uncertainty``), run the
    degeneracy checks (``twin.diagnostics``, raised as warnings) and amortise the encoder on simulations
    from the fitted model; updates ``twin`` in place and returns the :class:`PopulationFit`.

    amortisation: an :class:`AmortiseConfig`, ``None`` for the defaults, or ``False`` to leave the encoder.

    Example
    -------
    >>> import warnings
    >>> from hybridtwin.virtual import make_virtual_cohort
    >>> from hybridtwin.twin import HybridTwin, TwinConfig
    >>> from hybridtwin.estimation import AmortiseConfig, SAEMConfig, estimate
    >>> data = make_virtual_cohort("vaccine_asc", n_subjects=12, n_cohorts=2, seed=0)
    >>> twin = HybridTwin.from_data(TwinConfig(model="vaccine_asc", fixed=("delta_Ag", "K_Ag", "rho_M", "M_max",
    ...     "alpha_S", "alpha_L", "delta_L"), covariate_effects=False), data)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # so few iterations on 12 patients: expect findings
    ...     fit = estimate(twin, data, SAEMConfig(n_explore=2, n_smooth=2, n_fisher=4, init_steps=0, progress=False),
    ...                    AmortiseConfig(n_simulations=24, epochs=1, batch_size=12, progress=False))
    >>> table = twin.population_table()
    >>> bool(table.loc[table.kind == "omega", "se"].notna().all())
    True
    """
    start = time.perf_counter()
    batch = data if isinstance(data, Batch) else twin.dataset(data).batch()
    fit = fit_saem(twin, batch, saem)
    if fit.scores is not None:
        set_uncertainty(twin, fit)
    if checks:
        fit.diagnostics = degeneracy_checks(twin, batch, fit)
        twin.diagnostics = [{k: v for k, v in d.items()} for d in fit.diagnostics]
    if amortisation is not False:
        cfg = amortisation if isinstance(amortisation, AmortiseConfig) else AmortiseConfig(
            progress=fit.config.progress if fit.config else True)
        fit.amortisation = amortise(twin, batch, cfg)
    fit.seconds = time.perf_counter() - start
    return fit
