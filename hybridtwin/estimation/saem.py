"""Population estimation by stochastic approximation EM (SAEM), the algorithm Monolix is built on.

The twin is a nonlinear mixed-effects model: ``z_i = mu + beta x_i + eta_i`` with ``eta_i ~ N(0, diag(omega^2))``
for the patient parameters (unconstrained scale), and parameters ``phi`` without between-patient variability
(population-level model parameters, per-cohort shifts of typical values, noise SDs, assay calibration,
closure networks). SAEM maximises the marginal likelihood ``prod_i int p(y_i | z_i; phi) p(z_i; mu, beta,
omega) dz_i`` without approximating the integral (Delyon, Lavielle & Moulines 1999; Kuhn & Lavielle 2005):

1. **simulation**: a few Metropolis-Hastings moves of every subject's ``z_i`` targeting ``p(z_i | y_i)`` --
   independent proposals from the population distribution, joint random walks and one-coordinate random
   walks (Monolix's three kernels), all subjects at once (one batched ODE solve per move);
2. **stochastic approximation** of the sufficient statistics ``X'Z`` and ``sum z^2`` with step 1 during
   ``n_explore`` iterations, then ``1/k`` during ``n_smooth`` iterations (the estimates converge);
3. **maximisation**: ``mu``, ``beta`` (least squares, or ridge with the twin's ``covariate_penalty``) and
   ``omega`` in closed form; ``phi`` by Fisher-scoring steps along Fisher's identity gradient
   ``E[grad log p(y, z)]`` at the current samples (the per-subject scores give both the gradient and its
   empirical information, so the step is scale-free and accounts for correlated parameters such as a cohort's
   inoculum and its assay offset), with the same step-size schedule; closure networks by Adam. During exploration
   ``omega`` may shrink by at most ``anneal`` per iteration (simulated annealing, as in Monolix), so
   the chains explore before the variances settle.

After the iterations the chains keep running at the estimate for ``n_fisher`` iterations to give each
subject's conditional mean and SD of ``z_i`` and the per-subject scores, from which
:mod:`hybridtwin.estimation.fisher` computes standard errors.

Example
-------
>>> from hybridtwin.virtual import make_virtual_cohort
>>> from hybridtwin.twin import HybridTwin, TwinConfig
>>> from hybridtwin.estimation import SAEMConfig, fit_saem
>>> data = make_virtual_cohort("vaccine_asc", n_subjects=12, n_cohorts=2, seed=0)
>>> twin = HybridTwin.from_data(TwinConfig(model="vaccine_asc", fixed=("delta_Ag", "K_Ag", "rho_M", "M_max",
...     "alpha_S", "alpha_L", "delta_L")), data)
>>> fit = fit_saem(twin, data, SAEMConfig(n_explore=3, n_smooth=2, n_fisher=2, init_steps=0, progress=False))
>>> int(fit.history["n_failed"].iloc[-1]), tuple(fit.posterior_mean.shape)
(0, (12, 4))
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pandas as pd
import torch

from ..data import CohortData
from ..data.dataset import Batch
from .likelihood import (closure_parameters, design_matrix, observation_loglik, observation_parameters,
                         ode_population_parameters, prior_logpdf, solve_observables)

#: quantities without random effects, updated by Fisher scoring (see :class:`SAEMConfig`)
PHI_KINDS = ("population", "cohort", "noise", "miss", "assay_scale", "assay_offset")


@dataclass(frozen=True)
class SAEMConfig:
    """Settings of :func:`fit_saem` (Monolix-like defaults scaled for a laptop).

    n_explore, n_smooth: iterations with step 1 and with decreasing steps ``1/k``; n_burn: MCMC-only
    iterations before the first update. kernels: moves per iteration of (independent proposals from the
    population distribution, joint random walk, one-coordinate random walk). omega_start: initial
    between-patient SD on the unconstrained scale (large, so the chains explore). anneal: during exploration
    omega shrinks by at most this factor per iteration. Parameters without random effects (population-level
    model parameters, cohort shifts, noise, assay calibration) take Fisher-scoring steps ``gamma I^-1 g`` along
    the per-subject scores (``max_step`` caps each step on the unconstrained scale); closure networks take
    Adam steps of size ``lr * gamma``. From iteration ``newton_start`` (None: never) every population quantity
    takes damped Fisher-scoring steps on the marginal likelihood instead (``newton_damping`` times the step
    while exploring, times ``gamma`` after; each capped at ``newton_max_step``), with per-subject scores
    averaged over iterations with weight ``score_memory``: this converges in tens of iterations where
    EM-type updates crawl (patients whose data leave their parameters uncertain).
    init_steps: Adam steps of a pooled fit (every subject at the typical values) before SAEM, to start from
    data rather than the model defaults (0: start from the twin's current values); ``init_cohort_terms``: let
    that pooled fit also move the per-cohort shifts and assay calibration (off by default: without covariate
    effects they would absorb each cohort's covariate mix). n_fisher: iterations at
    the estimate for conditional means and scores (0: no standard errors). seed, progress: as usual.
    """

    n_explore: int = 150
    n_smooth: int = 100
    n_burn: int = 5
    kernels: tuple = (1, 1, 1)
    omega_start: float = 0.5
    anneal: float = 0.95
    lr: float = 0.05
    max_step: float = 1.0
    newton_start: int | None = 50
    newton_damping: float = 0.5
    newton_max_step: float = 0.2
    score_memory: float = 0.3
    init_steps: int = 30
    init_cohort_terms: bool = False
    n_fisher: int = 80
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        for name in ("n_explore", "n_smooth", "n_burn", "init_steps", "n_fisher", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"SAEMConfig.{name} must be an integer >= 0, got {v!r}")
        if self.n_explore + self.n_smooth < 1:
            raise ValueError("SAEMConfig needs at least one iteration (n_explore + n_smooth >= 1)")
        k = tuple(self.kernels)
        if len(k) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in k) or sum(k) == 0:
            raise ValueError(f"SAEMConfig.kernels must be 3 non-negative integers, not all 0, got {self.kernels!r}")
        object.__setattr__(self, "kernels", k)
        if not isinstance(self.init_cohort_terms, bool):
            raise ValueError(f"SAEMConfig.init_cohort_terms must be True or False, got {self.init_cohort_terms!r}")
        if not (0 < self.anneal <= 1):
            raise ValueError(f"SAEMConfig.anneal must be in (0, 1], got {self.anneal!r}")
        if self.newton_start is not None and (isinstance(self.newton_start, bool) or not isinstance(
                self.newton_start, int) or self.newton_start < 0):
            raise ValueError(f"SAEMConfig.newton_start must be an integer >= 0 or None, got {self.newton_start!r}")
        if not (isinstance(self.score_memory, (int, float)) and 0 < self.score_memory <= 1):
            raise ValueError(f"SAEMConfig.score_memory must be in (0, 1], got {self.score_memory!r}")
        for name in ("omega_start", "lr", "max_step", "newton_damping", "newton_max_step"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"SAEMConfig.{name} must be a positive number, got {v!r}")


@dataclass
class PopulationFit:
    """What :func:`fit_saem` returns besides updating the twin in place.

    history: one row per iteration (complete-data log-likelihood, typical values, omegas, noise SDs,
    acceptance rates, the ODE solver's mean and largest steps per subject solve, wall seconds). subject_ids, posterior_mean, posterior_sd: each subject's conditional mean / SD of its
    unconstrained patient parameters at the estimate. scores: (B, Q) per-subject scores of the estimated
    quantities ``score_names`` (for the Fisher information), with ``score_batches`` the means over consecutive
    batches of the chain (Monte Carlo error). failed: subjects whose solve still failed at the end. seconds: wall time.
    amortisation: the encoder's training history when :func:`~hybridtwin.estimation.estimate` amortised it;
    diagnostics: the degeneracy findings.
    """

    history: pd.DataFrame
    subject_ids: list
    posterior_mean: torch.Tensor
    posterior_sd: torch.Tensor
    scores: torch.Tensor | None = None
    score_batches: tuple | None = None
    score_names: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    seconds: float = 0.0
    config: SAEMConfig | None = None
    amortisation: pd.DataFrame | None = None
    diagnostics: list = field(default_factory=list)


class _Chains:
    """The Metropolis-Hastings state of every subject: z, observables g, solve ok, log-likelihood."""

    def __init__(self, twin, batch: Batch, z: torch.Tensor, gen: torch.Generator):
        self.twin, self.batch, self.gen = twin, batch, gen
        self.z = z.detach().clone()
        self.g, self.ok = solve_observables(twin, self.z, batch)
        self.refresh()
        P = z.shape[1]
        self.rw_scale = torch.full((1,), 0.5, dtype=z.dtype)
        self.coord_scale = torch.full((P,), 1.0, dtype=z.dtype)
        self.coord = 0

    def refresh(self) -> None:
        """Recompute the log-likelihood of the current states (after the observation model changed)."""
        with torch.no_grad():
            ll = observation_loglik(self.twin, self.g, self.batch)
        self.ll = torch.where(self.ok, ll, torch.full_like(ll, -math.inf))

    def _try(self, z_new: torch.Tensor, log_prior_ratio: torch.Tensor | None) -> torch.Tensor:
        g, ok = solve_observables(self.twin, z_new, self.batch)
        with torch.no_grad():
            ll = torch.where(ok, observation_loglik(self.twin, g, self.batch), torch.full_like(self.ll, -math.inf))
        log_ratio = ll - self.ll if log_prior_ratio is None else ll - self.ll + log_prior_ratio
        u = torch.rand(log_ratio.shape, generator=self.gen, dtype=log_ratio.dtype)
        acc = torch.log(u) < torch.nan_to_num(log_ratio, nan=-math.inf)
        acc = acc & torch.isfinite(ll)
        self.z = torch.where(acc[:, None], z_new, self.z)
        self.g = torch.where(acc[:, None], g.detach(), self.g)
        self.ok = torch.where(acc, ok, self.ok)
        self.ll = torch.where(acc, ll, self.ll)
        return acc

    def _eps(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen, dtype=self.z.dtype)

    def step(self, mean: torch.Tensor, sd: torch.Tensor, kernels: tuple, adapt: bool) -> dict:
        """Run the kernels once; returns acceptance rates."""
        rates = {}
        for _ in range(kernels[0]):  # independent proposal from the population distribution
            acc = self._try(mean + sd * self._eps(self.z.shape), None)
            rates["accept_prior"] = float(acc.double().mean())
        for _ in range(kernels[1]):  # joint random walk
            z_new = self.z + self.rw_scale * sd * self._eps(self.z.shape)
            acc = self._try(z_new, prior_logpdf(z_new, mean, sd) - prior_logpdf(self.z, mean, sd))
            rate = float(acc.double().mean())
            rates["accept_joint"] = rate
            if adapt:
                self.rw_scale = torch.clamp(self.rw_scale * math.exp(0.4 * (rate - 0.3)), 0.01, 5.0)
        for _ in range(kernels[2]):  # one coordinate at a time (cycling)
            j = self.coord % self.z.shape[1]
            self.coord += 1
            z_new = self.z.clone()
            z_new[:, j] = z_new[:, j] + self.coord_scale[j] * sd[:, j] * self._eps(self.z.shape[:1])
            acc = self._try(z_new, prior_logpdf(z_new, mean, sd) - prior_logpdf(self.z, mean, sd))
            rate = float(acc.double().mean())
            rates["accept_coord"] = rate
            if adapt:
                self.coord_scale[j] = torch.clamp(self.coord_scale[j] * math.exp(0.4 * (rate - 0.4)), 0.01, 5.0)
        return rates


def _step_size(k: int, cfg: SAEMConfig) -> float:
    """SAEM's step: 1 while exploring, then 1/(number of smoothing iterations so far)."""
    return 1.0 if k < cfg.n_explore else 1.0 / (k - cfg.n_explore + 1)


def _regression(Sxz, Szz, XtX, n: int, omega: torch.Tensor, ridge: float):
    """Closed-form M-step: coefficients (D, Pp) and residual SDs (Pp,) from the sufficient statistics."""
    D, P = Sxz.shape
    R = torch.eye(D, dtype=XtX.dtype)
    R[0, 0] = 0.0  # the intercept (typical value) is not penalised
    A = XtX[None] + (2.0 * n * ridge) * (omega**2)[:, None, None] * R[None]  # (Pp, D, D)
    coef = torch.linalg.solve(A, Sxz.T[..., None])[..., 0].T  # (D, Pp)
    var = (Szz - 2.0 * (coef * Sxz).sum(0) + torch.einsum("dp,de,ep->p", coef, XtX, coef)) / n
    return coef, torch.sqrt(torch.clamp(var, min=1e-10))


def _record(twin, k: int, gamma: float, chains: _Chains, prior_mean, sd, rates: dict) -> dict:
    row = {"iteration": k, "step": gamma, "n_failed": int((~chains.ok).sum())}
    ok = chains.ok
    row["complete_loglik"] = float((chains.ll[ok] + prior_logpdf(chains.z, prior_mean, sd)[ok]).sum())
    with torch.no_grad():
        typical = twin.theta(twin.mu[None].to(twin.dtype))[0]
    for j, n in enumerate(twin.patient_names):
        row[f"typical[{n}]"] = float(typical[twin.model.parameter_names.index(n)])
        row[f"omega[{n}]"] = float(twin.log_omega[j].detach().exp())
    for n in twin.population_names:
        row[f"typical[{n}]"] = float(typical[twin.model.parameter_names.index(n)])
    for k_obs, (name, d) in enumerate(twin.observation.describe().items()):
        for key in ("sigma_additive", "sigma_proportional", "miss_probability"):
            if key in d:
                row[f"{key}[{name}]"] = d[key]
    from .fisher import estimate_vector, population_columns

    cols = population_columns(twin)
    row.update({f"est:{c['name']}": v for c, v in zip(cols, estimate_vector(twin, cols).tolist())
                if c["kind"] in PHI_KINDS or c["kind"] == "effect"})
    row.update(rates)
    return row


def _pooled_start(twin, batch: Batch, steps: int, progress: bool, cohort_terms: bool = False) -> None:
    """A few Adam steps of a pooled fit (every subject at its typical values, no random effects).

    Unless ``cohort_terms``, the per-cohort quantities (cohort shifts of typical values, assay scale/offset)
    stay where they are (neutral: shift 0, scale 1, offset 0): a pooled fit without covariate effects would
    make them absorb each cohort's covariate mix (an older cohort's different growth shows up as an assay
    offset), a start SAEM leaves only slowly where the design barely separates the two."""
    params = [twin.mu] + [p for n, p in ode_population_parameters(twin, closures=False)
                          if cohort_terms or n != "cohort_shift"]
    params += [p for n, p in observation_parameters(twin) if cohort_terms or n not in ("log_scale", "offset")]
    opt = torch.optim.Adam(params, lr=0.1)
    from tqdm.auto import tqdm

    x = torch.nan_to_num(batch.covariates)
    for _ in tqdm(range(steps), desc="pooled start", disable=not progress, leave=False):
        opt.zero_grad()
        z = twin.mu + x @ twin.beta.detach().T
        g, ok = solve_observables(twin, z, batch, grad=True)
        ll = observation_loglik(twin, g, batch)
        loss = -torch.where(ok, ll, torch.zeros_like(ll)).sum() / ok.sum().clamp(min=1)
        if not torch.isfinite(loss):
            break
        loss.backward()
        opt.step()
    twin.zero_grad(set_to_none=True)


def _em_step(twin, acc, chains, phi, X, XtX, N, D, ridge, cfg, k, gamma, stats) -> None:
    """SAEM's M-step: stochastic approximation of the sufficient statistics, closed-form mu, beta, omega
    (with annealing while exploring), Fisher scoring for the parameters without random effects."""
    from .fisher import _tensor

    stats["Sxz"] = stats["Sxz"] + gamma * (X.T @ chains.z - stats["Sxz"])
    stats["Szz"] = stats["Szz"] + gamma * ((chains.z**2).sum(0) - stats["Szz"])
    omega_old = twin.log_omega.detach().exp()
    coef, omega = _regression(stats["Sxz"], stats["Szz"], XtX, N, omega_old, ridge)
    if k < cfg.n_explore:
        omega = torch.maximum(omega, cfg.anneal * omega_old)
    with torch.no_grad():
        twin.mu.copy_(coef[0])
        if D > 1:
            twin.beta.copy_(coef[1:].T)
        twin.log_omega.copy_(torch.log(omega))
    twin.restore_known_population()
    if phi:  # Fisher scoring along E[grad log p(y, z)] for the parameters without random effects
        S = acc.scores(chains.z, chains.g, chains.ok)[0][:, phi]
        grad, info = S.sum(0), S.T @ S
        info = info + 1e-8 * torch.diagonal(info).mean().clamp(min=1e-12) * torch.eye(len(phi), dtype=info.dtype)
        step = torch.clamp(gamma * torch.linalg.lstsq(info, grad[:, None]).solution[:, 0], -cfg.max_step,
                           cfg.max_step)
        with torch.no_grad():
            for i, d in zip(phi, step.tolist()):
                col = acc.cols[i]
                _tensor(twin, col["tensor"])[col["index"]] += d
        chains.refresh()


def _newton_step(twin, acc, chains, sbar, cfg, a: float, ridge: float, N: int):
    """Fisher scoring on the marginal likelihood for every population quantity: the per-subject scores are
    averaged over iterations (``score_memory``) to estimate each subject's observed-data score
    ``E[grad log p(y_i, z_i) | y_i]``; their sum is the gradient and their covariance the observed information
    (as for the standard errors), so the step is Newton-like instead of EM-like -- EM slows to a crawl when the
    data leave much of each patient's parameters uncertain. Returns the updated averaged scores."""
    from .fisher import _tensor

    S = acc.scores(chains.z, chains.g, chains.ok)[0]
    sbar = S if sbar is None else sbar + cfg.score_memory * (S - sbar)
    grad = sbar.sum(0)
    centred = sbar - sbar.mean(0)
    info = centred.T @ centred
    if ridge:
        for i, c in enumerate(acc.cols):
            if c["kind"] == "effect":
                grad[i] -= 2.0 * N * ridge * float(_tensor(twin, c["tensor"])[c["index"]])
                info[i, i] += 2.0 * N * ridge
    info = info + 1e-6 * torch.diagonal(info).mean().clamp(min=1e-12) * torch.eye(len(grad), dtype=info.dtype)
    step = torch.clamp(a * cfg.newton_damping * torch.linalg.lstsq(info, grad[:, None]).solution[:, 0],
                       -cfg.newton_max_step, cfg.newton_max_step)
    with torch.no_grad():
        for c, d in zip(acc.cols, step.tolist()):
            _tensor(twin, c["tensor"])[c["index"]] += d
    chains.refresh()
    return sbar


def fit_saem(twin, data: CohortData | Batch, config: SAEMConfig | None = None, progress: bool | None = None,
             callback=None) -> PopulationFit:
    """Estimate the twin's population model by SAEM on ``data`` (all subjects in one batch); updates the twin
    in place (``mu``, ``beta``, ``omega``, population parameters, cohort shifts, noise, calibration, closures)
    and returns a :class:`PopulationFit`. See the module docstring.

    callback: optional ``callback(iteration, twin, chains)`` called after every iteration (e.g. to log).
    """
    cfg = config or SAEMConfig()
    show = cfg.progress if progress is None else progress
    from tqdm.auto import tqdm

    start = time.perf_counter()
    batch = data if isinstance(data, Batch) else twin.dataset(data).batch()
    if len(batch) < 2:
        raise ValueError(f"SAEM needs at least 2 subjects to estimate between-patient variability, got {len(batch)}")
    if not twin.patient_names:
        raise ValueError("the twin has no patient parameters (every parameter is fixed or population-level): "
                         "there are no random effects to estimate; declare at least one patient parameter")
    gen = torch.Generator().manual_seed(cfg.seed)
    dt = twin.dtype
    X = design_matrix(batch).to(dt)
    if not twin.config.covariate_effects:
        X = X[:, :1]
    N, D = X.shape
    XtX = X.T @ X
    ridge = float(twin.config.covariate_penalty)
    if ridge == 0.0 and torch.linalg.matrix_rank(XtX) < D:
        raise ValueError("the covariate design matrix (intercept + encoded covariates) is rank deficient: some "
                         "covariates are constant or collinear in the training subjects; drop them or set "
                         "covariate_penalty > 0")
    if cfg.init_steps:
        _pooled_start(twin, batch, cfg.init_steps, show, cfg.init_cohort_terms)
    with torch.no_grad():
        twin.log_omega.copy_(torch.maximum(twin.log_omega, torch.full_like(twin.log_omega, math.log(cfg.omega_start))))
    twin.restore_known_population()  # a known distribution (e.g. the incubation period) is not annealed either
    from .fisher import ScoreAccumulator

    acc = ScoreAccumulator(twin, batch, X)
    phi = [i for i, c in enumerate(acc.cols) if c["kind"] in PHI_KINDS]
    ode_phi = bool(acc.ode_cols)
    nets = [p for _, p in closure_parameters(twin)]
    opt_nets = torch.optim.Adam(nets, lr=cfg.lr) if nets else None

    def prior():
        with torch.no_grad():
            coef = torch.cat([twin.mu[None], twin.beta.T], 0)[:D]
            return X @ coef, twin.log_omega.exp().expand(N, -1)

    mean, sd = prior()
    chains = _Chains(twin, batch, mean.clone(), gen)
    for _ in range(cfg.n_burn):
        chains.step(mean, sd, cfg.kernels, adapt=True)
    stats = {"Sxz": X.T @ chains.z, "Szz": (chains.z**2).sum(0)}
    sbar = None
    rows = []
    total = cfg.n_explore + cfg.n_smooth
    net_skips = 0  # closure steps skipped for a non-finite gradient
    bar = tqdm(range(total), desc="SAEM", disable=not show)
    for k in bar:
        t_iter = time.perf_counter()
        with twin.count_solver_steps() as tally:  # solver effort: does the fit move into stiff dynamics?
            gamma = _step_size(k, cfg)
            if ode_phi or nets:  # the population parameters inside the ODE changed: fresh observables for the chains
                chains.g, chains.ok = solve_observables(twin, chains.z, batch)
                chains.refresh()
            mean, sd = prior()
            rates = chains.step(mean, sd, cfg.kernels, adapt=k < cfg.n_explore)
            if cfg.newton_start is not None and k >= cfg.newton_start:
                sbar = _newton_step(twin, acc, chains, sbar, cfg, 1.0 if k < cfg.n_explore else gamma, ridge, N)
            else:
                _em_step(twin, acc, chains, phi, X, XtX, N, D, ridge, cfg, k, gamma, stats)
            if opt_nets is not None:  # closure networks: Adam along the same gradient
                for group in opt_nets.param_groups:
                    group["lr"] = cfg.lr * gamma
                opt_nets.zero_grad()
                # a subject whose solve fails at its chain state would send a NaN gradient through the masked sum
                # (the mask zeroes its value, not NaN derivatives inside the solver): it enters at its prior mean
                z_net = torch.where(chains.ok[:, None], chains.z, mean)
                g, ok = solve_observables(twin, z_net, batch, grad=True)
                ll = observation_loglik(twin, g, batch)
                (-torch.where(ok & chains.ok, ll, torch.zeros_like(ll)).sum() / N).backward()
                if all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in nets):
                    opt_nets.step()
                else:  # one NaN step would leave every weight NaN and every later solve failing
                    net_skips += 1
        mean, sd = prior()
        rows.append(_record(twin, k, gamma, chains, mean, sd, rates))
        rows[-1].update(solver_steps_per_solve=tally["steps"] / max(tally["solves"], 1),
                        solver_steps_max=tally["max_steps"], seconds=time.perf_counter() - t_iter)
        if opt_nets is not None:
            rows[-1]["closure_steps_skipped"] = net_skips
        if show and k % 10 == 0:
            bar.set_postfix(ll=f"{rows[-1]['complete_loglik']:.1f}", failed=rows[-1]["n_failed"])
        if callback is not None:
            callback(k, twin, chains)
    twin.zero_grad(set_to_none=True)
    if ode_phi or nets:  # the chains' observables must reflect the final population parameters
        chains.g, chains.ok = solve_observables(twin, chains.z, batch)
        chains.refresh()
    s1 = torch.zeros_like(chains.z)
    s2 = torch.zeros_like(chains.z)
    n_post = max(cfg.n_fisher, 1)
    mean, sd = prior()
    for m in tqdm(range(n_post), desc="conditional distributions", disable=not show, leave=False):
        chains.step(mean, sd, cfg.kernels, adapt=False)
        s1 += chains.z
        s2 += chains.z**2
        if cfg.n_fisher:
            acc.add(chains.z, chains.g, chains.ok, part=min(m * 4 // n_post, 3))
    post_mean = s1 / n_post
    post_sd = torch.sqrt(torch.clamp(s2 / n_post - post_mean**2, min=0.0))
    failed = [batch.subject_ids[i] for i in torch.nonzero(~chains.ok).flatten().tolist()]
    fit = PopulationFit(history=pd.DataFrame(rows), subject_ids=list(batch.subject_ids), posterior_mean=post_mean,
                        posterior_sd=post_sd, failed=failed, config=cfg)
    if cfg.n_fisher:
        fit.scores, fit.score_batches, fit.score_names = acc.result()
    fit.seconds = time.perf_counter() - start
    return fit


def conditional_summary(twin, fit: PopulationFit, batch: Batch) -> pd.DataFrame:
    """Per patient parameter: omega, the SD of the conditional means and the eta-shrinkage
    ``1 - sd(E[eta_i | y_i]) / omega`` (Monolix's definition; near 1: the data say little about it)."""
    x = torch.nan_to_num(batch.covariates).to(fit.posterior_mean.dtype)
    with torch.no_grad():
        m = twin.mu + (x @ twin.beta.T if twin.beta.shape[1] else 0.0)
        eta = fit.posterior_mean - m
        omega = twin.log_omega.exp()
    sd_eta = eta.std(0)
    return pd.DataFrame({"parameter": twin.patient_names, "omega": omega.numpy(), "sd_conditional_mean": sd_eta.numpy(),
                         "shrinkage": (1 - sd_eta / omega).numpy(),
                         "mean_conditional_sd": fit.posterior_sd.mean(0).numpy()})

