"""SAEM from several starts, ranked by the marginal likelihood (a convergence assessment, as Monolix offers).

SAEM converges to *a* maximum of the likelihood; where the data inform some parameters weakly, different starts
can end at different ones. On kissler2021 (``experiments/kissler_miss.py``) a fit reached by another path had a
marginal log-likelihood 34 units above the usual one. :func:`multistart` runs SAEM from the twin as given and
from ``n_starts - 1`` perturbed starts (every estimated typical value shifted by ``spread`` standard normal draws
on the unconstrained scale; each run with its own seed), computes each fit's marginal log-likelihood by importance
sampling (:func:`~hybridtwin.estimation.marginal_loglik`), and returns the best twin with a table of all runs:
when the runs agree, the estimate does not depend on the start; when they do not, the table says by how much.

>>> from hybridtwin.estimation import SAEMConfig
>>> from hybridtwin.estimation.multistart import multistart
>>> # result = multistart(twin, data, SAEMConfig(n_explore=50, n_smooth=30, n_fisher=0), n_starts=3)
>>> # result.table[["start", "loglik", "se", "best"]]; result.twin is the best fit
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import pandas as pd
import torch

from ..data.dataset import Batch
from .marginal import marginal_loglik
from .saem import PopulationFit, SAEMConfig, fit_saem


@dataclass
class MultiStartResult:
    """``twin``/``fit``: the run with the highest marginal log-likelihood; ``twins``/``fits``: every run, in start
    order; ``table``: one row per run (``start``, ``shift`` -- the largest start perturbation --, ``loglik``,
    ``se``, ``best``, then every quantity of the population table by its name)."""

    twin: object
    fit: PopulationFit
    table: pd.DataFrame
    twins: list
    fits: list


def multistart(twin, data, config: SAEMConfig | None = None, n_starts: int = 4, spread: float = 0.5,
               n_draws: int = 200, seed: int = 0) -> MultiStartResult:
    """Run SAEM (``config``) from ``n_starts`` starts and rank the fits by their marginal log-likelihood.

    Start 0 is ``twin`` as given (the same fit :func:`fit_saem` would give with ``config``); start ``s > 0`` shifts
    every estimated typical value (per-patient and population-level parameters, unconstrained scale) by ``spread *
    N(0, 1)`` and uses the SAEM seed ``config.seed + s``. Parameters with a known population distribution (the
    time offset's prior) are not moved. ``twin`` itself is left untouched. ``n_draws``: importance-sampling draws
    per subject for each marginal log-likelihood."""
    if not isinstance(n_starts, int) or isinstance(n_starts, bool) or n_starts < 1:
        raise ValueError(f"n_starts must be a positive integer, got {n_starts!r}")
    if not isinstance(spread, (int, float)) or isinstance(spread, bool) or not spread >= 0:
        raise ValueError(f"spread must be a number >= 0, got {spread!r}")
    cfg = config or SAEMConfig()
    batch = data if isinstance(data, Batch) else twin.dataset(data).batch()
    gen = torch.Generator().manual_seed(seed)
    twins, fits, rows = [], [], []
    for s in range(n_starts):
        run = copy.deepcopy(twin)
        shift = 0.0
        if s:
            with torch.no_grad():
                for p in (run.mu, run.mu_population):
                    if p.numel():
                        d = spread * torch.randn(p.shape, generator=gen, dtype=p.dtype)
                        p.add_(d)
                        shift = max(shift, float(d.abs().max()))
                run.restore_known_population()
        fit = fit_saem(run, batch, replace(cfg, seed=cfg.seed + s))
        m = marginal_loglik(run, batch, n_draws=n_draws, seed=seed)
        table = run.population_table()
        rows.append({"start": s, "shift": shift, "loglik": m["loglik"], "se": m["se"],
                     **dict(zip(table["quantity"], table["estimate"]))})
        twins.append(run)
        fits.append(fit)
    out = pd.DataFrame(rows)
    best = int(out["loglik"].idxmax())
    out.insert(4, "best", out.index == best)
    return MultiStartResult(twins[best], fits[best], out, twins, fits)
