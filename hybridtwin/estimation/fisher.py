"""Uncertainty of population estimates: the observed Fisher information from per-subject scores.

By Fisher's identity the score of subject ``i`` is ``s_i = E[grad_theta log p(y_i, z_i; theta) | y_i]``; at
the maximum-likelihood estimate the observed information is estimated by the empirical covariance of the
scores, ``I = sum_i (s_i - s_bar)(s_i - s_bar)'`` (Delattre & Kuhn 2023, "Estimating Fisher information
matrix in latent variable models based on the score function", ESAIM: Proceedings and Surveys). The scores
come from the SAEM chains at the estimate: the random-effect part in closed form, the observation model by
automatic differentiation (forward mode, ``torch.func.jacfwd``; no solve), and population parameters inside the ODE by
one backward pass through the batched solver per sample. The Monte Carlo error of each ``s_i`` (which
inflates ``I``, most along directions the data barely inform) is estimated from batch means of the chains and
removed (see :func:`information`).

The estimated quantities are named (``mu[beta]``, ``beta[p, age]``, ``log_omega[delta]``,
``cohort_shift[V0, cohort_2]``, ``log_sigma_add[log10_V]``, ``offset[log10_V, cohort_2]`` ...), all on the
unconstrained scale, and :meth:`HybridTwin.population_table` turns them into estimates, standard errors,
RSEs and confidence intervals on the natural scale.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from ..data.dataset import Batch
from .likelihood import observation_loglik, observation_parameters


def population_columns(twin) -> list[dict]:
    """The estimated population quantities of a twin, in a fixed order: name, kind, parameter, tensor, index.

    kind: ``typical`` (mu), ``effect`` (beta), ``omega`` (log omega), ``population`` (population-level model
    parameter), ``cohort`` (cohort shift), ``noise`` (log sigma), ``assay_scale`` (log scale), ``assay_offset``.
    """
    cols = []
    covs = twin.covariate_names if twin.config.covariate_effects else []
    known = getattr(twin, "known_population", {})  # a known distribution (e.g. the incubation period) is not estimated
    estimated = [(j, p) for j, p in enumerate(twin.patient_names) if j not in known]
    for j, p in estimated:
        cols.append(dict(name=f"mu[{p}]", kind="typical", parameter=p, tensor="mu", index=(j,)))
    for j, p in estimated:
        for c, cov in enumerate(covs):
            cols.append(dict(name=f"beta[{p}, {cov}]", kind="effect", parameter=p, covariate=cov, tensor="beta",
                             index=(j, c)))
    for j, p in estimated:
        cols.append(dict(name=f"log_omega[{p}]", kind="omega", parameter=p, tensor="log_omega", index=(j,)))
    for j, p in enumerate(twin.population_names):
        cols.append(dict(name=f"mu_population[{p}]", kind="population", parameter=p, tensor="mu_population",
                         index=(j,)))
    names = twin.model.parameter_names
    if len(twin.cohort_names) > 1:
        for p in twin.config.cohort_effects:
            for c in range(1, len(twin.cohort_names)):
                cols.append(dict(name=f"cohort_shift[{p}, {twin.cohort_names[c]}]", kind="cohort", parameter=p,
                                 cohort=twin.cohort_names[c], tensor="cohort_shift", index=(c, names.index(p))))
    om = twin.observation
    learnable = {n for n, _ in observation_parameters(twin)}
    for k, o in enumerate(om.observables):
        if "log_sigma_add" in learnable and bool(om.uses_add[k]):
            cols.append(dict(name=f"log_sigma_add[{o}]", kind="noise", parameter=o, tensor="observation.log_sigma_add",
                             index=(k,)))
        if "log_sigma_prop" in learnable and bool(om.uses_prop[k]):
            cols.append(dict(name=f"log_sigma_prop[{o}]", kind="noise", parameter=o,
                             tensor="observation.log_sigma_prop", index=(k,)))
        if "logit_miss" in learnable and bool(om.uses_miss[k]):
            cols.append(dict(name=f"logit_miss[{o}]", kind="miss", parameter=o, tensor="observation.logit_miss",
                             index=(k,)))
        for c in range(1, om.n_cohorts):
            if bool(om.calibrated[c, k]):
                for t, kind in (("log_scale", "assay_scale"), ("offset", "assay_offset")):
                    if t in learnable:
                        cols.append(dict(name=f"{t}[{o}, {twin.cohort_names[c]}]", kind=kind, parameter=o,
                                         cohort=twin.cohort_names[c], tensor=f"observation.{t}", index=(c, k)))
    return cols


def _tensor(twin, path: str) -> torch.Tensor:
    obj = twin
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def estimate_vector(twin, cols: list[dict] | None = None) -> torch.Tensor:
    """The current values of :func:`population_columns` (unconstrained scale) as one vector."""
    cols = cols if cols is not None else population_columns(twin)
    with torch.no_grad():
        return torch.tensor([float(_tensor(twin, c["tensor"])[c["index"]]) for c in cols], dtype=torch.float64)


class ScoreAccumulator:
    """Averages per-subject scores over posterior samples, in ``n_batches`` consecutive batches kept apart
    (batch means give the Monte Carlo error of each subject's score)."""

    def __init__(self, twin, batch: Batch, X: torch.Tensor, n_batches: int = 4):
        self.twin, self.batch, self.X = twin, batch, X
        self.cols = population_columns(twin)
        self.sums = [None] * n_batches
        self.counts = [0] * n_batches
        names = twin.model.parameter_names
        self.ode_cols = [i for i, c in enumerate(self.cols) if c["kind"] in ("population", "cohort")]
        self.ode_index = [names.index(self.cols[i]["parameter"]) for i in self.ode_cols]

    def scores(self, z: torch.Tensor, g: torch.Tensor, ok: torch.Tensor):
        """(B, Q) per-subject complete-data scores at ``z``; also the observables and solve status used (fresh
        from a solve when population parameters inside the ODE are estimated, else ``g``/``ok`` as given)."""
        return self._scores(z, g, ok, with_g=True)

    def _scores(self, z: torch.Tensor, g: torch.Tensor, ok: torch.Tensor, with_g: bool = False):
        twin, batch, X = self.twin, self.batch, self.X
        B = z.shape[0]
        out = torch.zeros(B, len(self.cols), dtype=torch.float64)
        with torch.no_grad():
            coef = torch.cat([twin.mu[None], twin.beta.T], 0)[: X.shape[1]]
            omega = twin.log_omega.exp()
            r = (z - X @ coef) / omega
        if self.ode_cols:  # d log p(y_i | z_i) / d z_full[i, j] by one backward pass through the solver
            zf = twin.z_full(z, batch.cohort).detach().requires_grad_(True)
            gg, status = twin.observables_at(twin.model.parameter_space.constrain(zf), batch)
            ll = observation_loglik(twin, gg, batch)
            ok = status == 0
            # every subject failed before its first output: nothing depends on zf, the scores are all zero
            dz = torch.autograd.grad(torch.where(ok, ll, torch.zeros_like(ll)).sum(), zf, allow_unused=True)[0]
            dz = torch.zeros_like(zf, dtype=torch.float64) if dz is None else dz.double()
            g = gg.detach()
        obs = {n: p.detach() for n, p in observation_parameters(twin)}
        jac = {}
        if obs:
            def f(params):
                ll = observation_loglik(twin, g, batch, params)
                return torch.where(ok, ll, torch.zeros_like(ll))

            # per-subject gradients w.r.t. a handful of observation parameters: forward mode costs one pass per
            # parameter, reverse mode one per subject (4x slower at 160 subjects, worse with more)
            n_par = sum(v.numel() for v in obs.values())
            jac = (torch.func.jacfwd if n_par < B else torch.func.jacrev)(f)(obs)
        for i, c in enumerate(self.cols):
            kind, idx = c["kind"], c["index"]
            if kind == "typical":
                col = r[:, idx[0]] / omega[idx[0]]
            elif kind == "effect":
                col = r[:, idx[0]] / omega[idx[0]] * X[:, 1 + idx[1]]
            elif kind == "omega":
                col = r[:, idx[0]] ** 2 - 1.0
            elif kind == "population":
                col = dz[:, self.ode_index[self.ode_cols.index(i)]]
            elif kind == "cohort":
                col = dz[:, idx[1]] * (batch.cohort == idx[0]).to(dz.dtype)
            else:
                col = jac[c["tensor"].split(".", 1)[1]][(slice(None), *idx)]
            # a failed solve's gradient can be NaN, and NaN * 0 is NaN: mask, do not multiply (one NaN score
            # would make the Fisher step NaN and every later solve fail)
            out[:, i] = torch.where(ok, col.double(), torch.zeros((), dtype=torch.float64))
        return (out, g, ok) if with_g else out

    def add(self, z: torch.Tensor, g: torch.Tensor, ok: torch.Tensor, part: int) -> None:
        """Add the scores at one posterior sample to batch ``part``."""
        s = self._scores(z, g, ok)
        self.sums[part] = s if self.sums[part] is None else self.sums[part] + s
        self.counts[part] += 1

    def result(self):
        """(mean scores (B, Q), tuple of batch means or None if fewer than 2 batches were filled, names)."""
        filled = [(s, n) for s, n in zip(self.sums, self.counts) if s is not None]
        total = sum(s for s, _ in filled) / max(sum(n for _, n in filled), 1)
        means = tuple(s / n for s, n in filled)
        return total, means if len(means) >= 2 else None, [c["name"] for c in self.cols]


def information(scores: torch.Tensor, batches: tuple | None = None, keep: float = 0.1) -> tuple[torch.Tensor, bool]:
    """Observed information ``sum_i (s_i - s_bar)(s_i - s_bar)'`` less its Monte Carlo part.

    Each ``s_i`` is a Monte Carlo mean; its error adds ``sum_i Var(s_i)`` to the matrix, which matters most
    where the data carry little information (a ridge of the likelihood), so leaving it in makes standard errors
    too small exactly there. ``Var(s_i)`` is estimated from the batch means (``batches``, at least 2) and
    removed in the whitened frame of the raw matrix, eigen-direction by eigen-direction, keeping at least
    ``keep`` of the raw information along each (the estimate of the Monte Carlo part is itself noisy).
    Returns (matrix, corrected?)."""
    s = scores - scores.mean(0)
    info = s.T @ s
    if not batches or len(batches) < 2:
        return info, False
    m = torch.stack(batches)  # (nb, B, Q)
    nb = m.shape[0]
    d = (m - m.mean(0)).reshape(-1, m.shape[-1])
    mc = d.T @ d / (nb * (nb - 1))
    Q = info.shape[0]
    jitter = 1e-12 * torch.diagonal(info).mean().clamp(min=1e-300) * torch.eye(Q, dtype=info.dtype)
    evals, evecs = torch.linalg.eigh(0.5 * (info + info.T) + jitter)
    if bool(evals.min() <= 0):
        return info, False
    half = evecs * torch.sqrt(evals)  # info = half half'
    inv_half = evecs / torch.sqrt(evals)
    a = inv_half.T @ mc @ inv_half  # Monte Carlo share, whitened
    lam, u = torch.linalg.eigh(0.5 * (a + a.T))
    factor = torch.clamp(1.0 - lam, min=keep, max=1.0)
    corrected = half @ (u * factor) @ u.T @ half.T
    return 0.5 * (corrected + corrected.T), True


def covariance(info: torch.Tensor, rcond: float = 1e-10) -> tuple[torch.Tensor, int]:
    """Inverse of the information (a pseudo-inverse on the well-determined subspace); returns (cov, rank)."""
    scale = torch.sqrt(torch.clamp(torch.diagonal(info), min=1e-300))
    corr = info / scale[:, None] / scale[None, :]
    evals, evecs = torch.linalg.eigh(0.5 * (corr + corr.T))
    keep = evals > rcond * evals.max().clamp(min=1e-300)
    inv = (evecs[:, keep] / evals[keep]) @ evecs[:, keep].T
    cov = inv / scale[:, None] / scale[None, :]
    cov = torch.where(torch.isfinite(cov), cov, torch.full_like(cov, math.nan))
    if not bool(keep.all()):  # directions the data cannot inform: infinite variance
        null = (evecs[:, ~keep] ** 2).sum(1) > 1e-3
        cov[null, :] = math.nan
        cov[:, null] = math.nan
    return cov, int(keep.sum())


def set_uncertainty(twin, fit) -> dict:
    """Compute the covariance of the population estimates from a :class:`PopulationFit` and store it in
    ``twin.uncertainty`` (read by ``population_table()`` and saved in the card). Returns the dict."""
    if fit.scores is None:
        raise ValueError("the fit has no scores: run fit_saem with n_fisher > 0 to get standard errors")
    cols = population_columns(twin)
    if [c["name"] for c in cols] != list(fit.score_names):
        raise ValueError("the fit's scores do not match the twin's estimated quantities (another twin?)")
    info, corrected = information(fit.scores, fit.score_batches)
    cov, rank = covariance(info)
    twin.uncertainty = {"method": "empirical Fisher information of per-subject scores (Delattre & Kuhn 2023)",
                        "monte_carlo_corrected": corrected, "rank": rank, "n_subjects": int(fit.scores.shape[0]),
                        "names": [c["name"] for c in cols], "estimate": estimate_vector(twin, cols).tolist(),
                        "cov": cov.tolist()}
    return twin.uncertainty


def correlation_table(twin, threshold: float = 0.9, level: float = 0.90) -> pd.DataFrame:
    """Pairs of estimated quantities whose estimates correlate more than ``threshold`` in absolute value, each
    with the combination of the two that the data inform best.

    For a pair (a, b) that combination is ``a + weight * b`` with ``weight = -cov(a, b) / var(b)``: the
    combination with the smallest standard error, ``se = se(a) * sqrt(1 - correlation**2)``. With a strong
    negative correlation and similar SEs the weight is near +1: the data see the *sum* (for effects on log beta
    and log p, the effect on log(beta * p)) far better than the split; near -1, the difference. ``combination``
    names it; ``estimate``, ``se``, ``lower``, ``upper`` give it with a ``level`` confidence interval, next to
    the SEs of the two alone (``se_first``, ``se_second``). Report the combination, or fix one of the pair,
    rather than reading the split.

    >>> import types
    >>> twin = types.SimpleNamespace(uncertainty={"names": ["a", "b", "c"], "estimate": [0.1, 0.2, 0.0],
    ...                              "cov": [[1.0, -0.95, 0.0], [-0.95, 1.0, 0.0], [0.0, 0.0, 1.0]]})
    >>> row = correlation_table(twin).iloc[0]
    >>> row["combination"], round(float(row["estimate"]), 2), round(float(row["se"]), 3)
    ('a + 0.95 * b', 0.29, 0.312)
    """
    from scipy.stats import norm

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    u = twin.uncertainty
    if not u:
        raise ValueError("the twin has no uncertainty: fit it with SAEM (hybridtwin.estimation.estimate) first")
    cov = np.asarray(u["cov"], dtype=float)
    est = np.asarray(u["estimate"], dtype=float)
    sd = np.sqrt(np.diag(cov))
    z = float(norm.ppf(0.5 + level / 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / sd[:, None] / sd[None, :]
    rows = []
    names = u["names"]
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if np.isfinite(corr[i, j]) and abs(corr[i, j]) > threshold:
                weight = -cov[i, j] / cov[j, j]
                value = est[i] + weight * est[j]
                se = float(sd[i] * math.sqrt(max(1.0 - corr[i, j] ** 2, 0.0)))
                rows.append(dict(first=names[i], second=names[j], correlation=float(corr[i, j]),
                                 combination=f"{names[i]} {'+' if weight >= 0 else '-'} {abs(weight):.2f} * {names[j]}",
                                 weight=float(weight), estimate=float(value), se=se, lower=float(value - z * se),
                                 upper=float(value + z * se), se_first=float(sd[i]), se_second=float(sd[j])))
    return pd.DataFrame(rows, columns=["first", "second", "correlation", "combination", "weight", "estimate", "se",
                                       "lower", "upper", "se_first", "se_second"])
