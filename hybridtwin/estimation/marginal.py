"""The marginal log-likelihood of a twin by importance sampling (Monolix's "-2LL by IS"), for comparing fits.

For each subject ``log p(y_i) = log E_q[p(y_i | z) p(z) / q(z)]`` with a Student-t proposal ``q`` (5 degrees of
freedom) centred on the subject's conditional mean with 1.5 times its conditional SD -- both taken from a
short MCMC run at the twin's current estimate (the SAEM kernels at fixed parameters). The Monte Carlo standard
error comes from the spread of the importance weights. AIC and BIC count the estimated population quantities.

Example
-------
>>> from hybridtwin.virtual import make_virtual_cohort
>>> from hybridtwin.twin import HybridTwin, TwinConfig
>>> from hybridtwin.estimation.marginal import marginal_loglik
>>> data = make_virtual_cohort("vaccine_asc", n_subjects=6, n_cohorts=1, seed=0)
>>> twin = HybridTwin.from_data(TwinConfig(model="vaccine_asc", covariate_effects=False), data)
>>> out = marginal_loglik(twin, data, n_draws=20, n_mcmc=4)
>>> sorted(out)[:3], out["n_subjects"]
(['aic', 'bic', 'loglik'], 6)
"""

from __future__ import annotations

import math

import torch

from ..data import CohortData
from ..data.dataset import Batch
from .likelihood import observation_loglik, prior_logpdf, solve_observables


def conditional_moments(twin, batch: Batch, n_mcmc: int = 30, seed: int = 0, kernels=(1, 1, 1)):
    """Each subject's conditional mean and SD of its unconstrained patient parameters at the twin's current
    estimate (MCMC with the SAEM kernels, parameters held fixed): ``(mean, sd)``, each (B, Pp)."""
    from .saem import _Chains

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mean, sd = twin.prior(batch.covariates)
    chains = _Chains(twin, batch, mean.clone(), gen)
    for _ in range(5):
        chains.step(mean, sd, kernels, adapt=True)
    s1, s2 = torch.zeros_like(mean), torch.zeros_like(mean)
    for _ in range(n_mcmc):
        chains.step(mean, sd, kernels, adapt=False)
        s1 += chains.z
        s2 += chains.z**2
    m = s1 / n_mcmc
    return m, torch.sqrt(torch.clamp(s2 / n_mcmc - m**2, min=1e-8))


def marginal_loglik(twin, data: CohortData | Batch, n_draws: int = 200, n_mcmc: int = 30, seed: int = 0,
                    chunk: int = 20) -> dict:
    """Importance-sampling estimate of the marginal log-likelihood; returns ``loglik``, its Monte Carlo
    ``se``, ``aic``, ``bic``, ``per_subject`` (tensor) and ``n_subjects``."""
    if n_draws < 2:
        raise ValueError(f"n_draws must be >= 2, got {n_draws}")
    batch = data if isinstance(data, Batch) else twin.dataset(data).batch()
    B = len(batch)
    center, spread = conditional_moments(twin, batch, n_mcmc=n_mcmc, seed=seed)
    spread = 1.5 * spread
    gen = torch.Generator().manual_seed(seed + 1)
    nu = 5.0
    t = torch.distributions.StudentT(torch.tensor(nu, dtype=center.dtype))
    with torch.no_grad():
        pm, ps = twin.prior(batch.covariates)
        logw = []
        for start in range(0, n_draws, chunk):
            k = min(chunk, n_draws - start)
            # Student-t draws: normal / sqrt(chi2 / nu), from our generator for reproducibility
            eps = torch.randn((k, *center.shape), generator=gen, dtype=center.dtype)
            chi2 = 2.0 * torch._standard_gamma(torch.full((k, B, 1), nu / 2, dtype=center.dtype))
            u = eps / torch.sqrt(chi2 / nu)
            z = center[None] + spread[None] * u
            log_q = (t.log_prob(u) - torch.log(spread)[None]).sum(-1)  # (k, B)
            idx = torch.arange(B).repeat(k)
            rep = batch.select(torch.arange(B).repeat(k))  # k copies of every subject
            g, ok = solve_observables(twin, z.reshape(k * B, -1), rep)
            ll = torch.where(ok, observation_loglik(twin, g, rep), torch.full((k * B,), -math.inf, dtype=g.dtype))
            lp = prior_logpdf(z.reshape(k * B, -1), pm[idx], ps[idx])
            logw.append((ll + lp).reshape(k, B) - log_q)
        logw = torch.cat(logw, 0)  # (n_draws, B)
    per_subject = torch.logsumexp(logw, 0) - math.log(n_draws)
    w = torch.softmax(logw, 0)
    ess = 1.0 / (w**2).sum(0)
    # delta-method Monte Carlo variance of log mean(w): var(w) / (n mean(w)^2)
    var = (torch.exp(logw - torch.logsumexp(logw, 0)) * n_draws).var(0) / n_draws
    from .fisher import population_columns

    n_par = len(population_columns(twin))
    n_obs = int(batch.mask.sum())
    total = float(per_subject.sum())
    return {"loglik": total, "se": float(torch.sqrt(var.sum())), "aic": -2 * total + 2 * n_par,
            "bic": -2 * total + n_par * math.log(max(n_obs, 1)), "per_subject": per_subject,
            "min_ess": float(ess.min()), "n_subjects": B}

