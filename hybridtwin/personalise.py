"""Personalising a trained twin to new patients, predicting with intervals, following a patient over time.

Four routes behind one interface (``method=``), so they can be compared; the default ``"auto"`` takes
``"encoder_is"`` when the patients have observations and ``"encoder"`` when they have covariates only:

- ``"encoder"``: the amortised posterior ``q(z | covariates, observations, doses, cohort)`` -- one
  forward pass for all patients (milliseconds);
- ``"map"``: per-patient maximum a posteriori fit of the patient parameters (L-BFGS on the negative log
  posterior, prior = the population model given covariates), with a Laplace (Gauss) approximation for the
  uncertainty; also the accuracy baseline;
- ``"encoder_is"``: the encoder's posterior corrected by importance sampling (neural importance sampling,
  Dax et al. 2023, Phys. Rev. Lett. 130, 171403): draws from the widened encoder posterior (mixed with the
  population prior, so no patient is left without support) are weighted by likelihood x prior / proposal;
  exact in the limit of many draws, and it reports the effective sample size. One batched solve of
  ``n_draws`` per patient (tens of milliseconds), and it repairs what a Gaussian encoder cannot represent
  (e.g. a curved or strongly correlated posterior from few samples);
- ``"map_is"``: the MAP + Laplace fit corrected by importance sampling: draws from the widened Laplace
  Gaussian mixed half and half with the population prior, weighted as in ``"encoder_is"``. From one or two
  samples a patient's posterior can be multimodal (a first value near the limit of detection fits both
  "still rising" and "already clearing"); MAP + Laplace keeps the branch the optimiser found, the prior's
  draws bring back the others, and with many samples the Laplace draws carry the weight. Costs a MAP fit
  plus one batched solve of ``n_draws`` (default 512) per patient;
- ``"library"``: matching against a library of pre-computed virtual patients drawn from the population
  model (simulated once per dosing regimen); each library member is weighted by its likelihood for the
  patient's observations and its prior density given the patient's covariates (importance sampling).

:func:`predict` returns trajectories in the input's long schema (``subject_id, time, observable``) with the
posterior-predictive median and interval (measurement noise included) and the model median, plus a table of
per-patient parameter estimates with intervals. :func:`update` refines one patient's posterior as new
measurements arrive.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .data import CohortData
from .data.dataset import Batch, SubjectDataset
from .losses import normal_kl, normal_log_prob
from .data.schema import (DEFAULT_COHORT, OBS_COLUMNS, check_doses, check_min_time, check_observations,
                          normalise_subject_ids)

METHODS = ("encoder", "map", "encoder_is", "map_is", "library")
#: ``method="auto"`` (the default of :func:`predict`): importance-corrected encoder where there are observations.
#: Measured in experiments/results/estimation.md: from the first 2-3 samples of baccam2006 patients the
#: Gaussian encoder alone forecasts 1.1-1.6x worse (RMSE) than the per-patient MAP, the corrected one within
#: 1.03x of it, at tens of milliseconds per patient
AUTO = "auto"


def resolve_method(method: str, batch: Batch) -> str:
    """The route ``method`` names for ``batch`` (``"auto"``: ``"encoder_is"`` if any row is observed, else
    ``"encoder"``, whose amortised prior needs no correction)."""
    if method == AUTO:
        return "encoder_is" if bool(batch.mask.any()) else "encoder"
    if method not in METHODS:
        raise ValueError(f"method must be one of {(AUTO, *METHODS)}, got {method!r}")
    return method


@dataclass
class Posterior:
    """Gaussian (encoder, map) or weighted-sample (library) posterior of the patient parameters."""

    subject_ids: list
    mean: torch.Tensor  # (B, Pp) unconstrained
    sd: torch.Tensor | None = None  # (B, Pp)
    samples: torch.Tensor | None = None  # (B, L, Pp) library members
    weights: torch.Tensor | None = None  # (B, L) normalised
    ess: torch.Tensor | None = None  # (B,) effective sample size of importance weights (encoder_is)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, B, Pp) draws."""
        if self.samples is None:
            eps = torch.randn((n, *self.mean.shape), generator=generator, dtype=self.mean.dtype)
            return self.mean[None] + self.sd[None] * eps
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (B, n)
        b = torch.arange(self.samples.shape[0])[:, None].expand_as(idx)
        return self.samples[b, idx].permute(1, 0, 2)


def _tables(twin, covariates: pd.DataFrame, observations, doses,
            reference_cohort: bool = False) -> tuple[SubjectDataset, list]:
    """New patients' tables encoded for ``twin``: a SubjectDataset and the subject order (that of ``covariates``).

    The cohort label of a patient (it selects the cohort's calibration and the encoder's cohort input) is
    taken, in order, from

    1. the ``cohort`` column of ``observations`` (one label per subject, as in training data);
    2. else the ``cohort`` column of ``covariates`` -- unless the twin was trained with a covariate named
       ``cohort``: that column is then the covariate and stays one (the label must come from observations);
    3. else (no cohort information at all): for a twin trained on one cohort, that cohort; for a twin that
       knows several, a ``ValueError`` naming the patients -- the cohort selects an assay calibration and
       cohort-specific typical values, so guessing it would give a silently wrong prediction -- unless the
       caller asks for the reference cohort (the first training cohort) with ``reference_cohort=True``.

    A label that is not one of the twin's cohorts raises a ``ValueError`` (naming the subjects and the known
    cohorts), and so do observations and covariates that disagree on a patient's cohort.
    """
    if not isinstance(covariates, pd.DataFrame) or "subject_id" not in covariates.columns:
        raise ValueError("covariates must be a DataFrame with a subject_id column (one row per patient)")
    covariates = covariates.assign(subject_id=normalise_subject_ids(covariates["subject_id"], "covariates"))
    if covariates["subject_id"].duplicated().any():
        dup = covariates.loc[covariates["subject_id"].duplicated(), "subject_id"].tolist()
        raise ValueError(f"covariates must have one row per subject; repeated: {dup[:10]}")
    ids = covariates["subject_id"].tolist()
    if observations is not None and len(observations):
        obs = check_observations(observations, twin.model)
        stray = set(obs["subject_id"]) - set(ids)
        if stray:
            raise ValueError(f"observations for subject(s) {sorted(stray, key=str)[:10]} without a covariate row")
        unknown = set(obs["observable"]) - set(twin.config.observables)
        if unknown:
            raise ValueError(f"observable(s) {sorted(unknown)} were not fitted by this twin ({list(twin.config.observables)})")
    else:
        obs = pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(OBS_COLUMNS, (object, float, str, float, str, float, bool))})
    dose_table = check_doses(doses, twin.model if doses is not None else None)
    stray = set(dose_table["subject_id"]) - set(ids)
    if stray:
        raise ValueError(f"doses for subject(s) {sorted(stray, key=str)[:10]} without a covariate row")
    pre = twin.preprocessor
    cohort_is_covariate = pre is not None and "cohort" in [*pre.numeric_, *pre.categorical_]
    used = {"subject_id", "cohort", *([*pre.numeric_, *pre.categorical_] if pre is not None else [])}
    extra = [c for c in covariates.columns if c not in used]
    if extra:
        warnings.warn(f"covariate column(s) {extra} were not used to train this twin and are ignored "
                      f"(its covariates: {[*pre.numeric_, *pre.categorical_] if pre is not None else []})",
                      UserWarning, stacklevel=3)
    known = twin.cohort_names or [DEFAULT_COHORT]
    from_obs = {}
    if len(obs) and "cohort" in observations.columns:  # validated: present on every row, one per subject
        from_obs = obs.groupby("subject_id", sort=False)["cohort"].first().to_dict()
    from_cov = {}
    if "cohort" in covariates.columns and not cohort_is_covariate:
        from_cov = {s: str(c) for s, c in zip(ids, covariates["cohort"]) if pd.notna(c)}
    clash = sorted((s for s in from_obs if s in from_cov and from_cov[s] != from_obs[s]), key=str)
    if clash:
        raise ValueError(f"subject(s) {clash[:10]}: the cohort of the observations differs from the covariates' "
                         "'cohort' column")
    labels = {**from_cov, **from_obs}
    unknown = sorted((s for s, c in labels.items() if c not in known), key=str)
    if unknown:
        raise ValueError(f"cohort(s) {sorted({labels[s] for s in unknown})} of subject(s) {unknown[:10]} are not cohorts "
                         f"of this twin (known: {known}); give one of these, or no cohort to use the reference "
                         f"cohort {known[0]!r}")
    unlabelled = [s for s in ids if s not in labels]
    if not isinstance(reference_cohort, bool):
        raise ValueError(f"reference_cohort must be True or False, got {reference_cohort!r}")
    if unlabelled and len(known) > 1 and not reference_cohort:
        where = "observations" if cohort_is_covariate else "observations or covariates"
        raise ValueError(f"{len(unlabelled)} subject(s) have no cohort label (no 'cohort' column in the {where}): "
                         f"{[str(s) for s in unlabelled[:10]]}; this twin knows the cohorts {known}, which differ in "
                         f"assay calibration and typical values. Give each patient its cohort, or pass "
                         f"reference_cohort=True (CLI: --reference-cohort) to use the reference cohort {known[0]!r}")
    cohorts = [labels.get(s, known[0]) for s in ids]
    if len(obs):
        obs = obs.assign(cohort=obs["subject_id"].map(dict(zip(ids, cohorts))))
    dropped = ["cohort"] if "cohort" in covariates.columns and not cohort_is_covariate else []
    dropped += [c for c in extra if c != "cohort"]
    data = CohortData(obs, dose_table, covariates.drop(columns=dropped), {})
    check_min_time(obs, twin.min_data_time, "observations")  # before the model's clock: name the subjects, fail early
    if len(dose_table):
        check_min_time(dose_table, twin.min_data_time, "doses")
    ds = SubjectDataset(data, model=twin.model, preprocessor=twin.preprocessor, observables=list(twin.config.observables),
                        cohorts=known, dtype=twin.dtype, subjects=ids, subject_cohorts=cohorts)
    return ds, ids


def _grid_batch(obs_batch: Batch, rows: pd.DataFrame, ids: list, observables: list) -> Batch:
    """A batch whose rows are the prediction points (subject_id, time, observable) of ``rows``."""
    pos = {s: i for i, s in enumerate(ids)}
    rows = rows.assign(_b=rows["subject_id"].map(pos), _k=rows["observable"].map({o: i for i, o in enumerate(observables)}))
    if rows["_b"].isna().any() or rows["_k"].isna().any():
        raise ValueError("prediction rows name unknown subjects or observables")
    rows = rows.sort_values(["_b", "time", "_k"], kind="stable")
    counts = rows.groupby("_b").size().reindex(range(len(ids)), fill_value=0).to_numpy()
    T = max(1, int(counts.max()))
    B = len(ids)
    times, obs_idx = np.zeros((B, T)), np.zeros((B, T), dtype=np.int64)
    mask = np.arange(T)[None, :] < counts[:, None]
    b = rows["_b"].to_numpy(int)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    times[b, slot], obs_idx[b, slot] = rows["time"].to_numpy(float), rows["_k"].to_numpy(int)
    last = np.where(counts > 0, times[np.arange(B), np.maximum(counts - 1, 0)], 0.0)
    times = np.where(mask, times, last[:, None])
    dt = obs_batch.times.dtype
    return Batch(obs_batch.subject_ids, torch.tensor(times, dtype=dt), torch.zeros(B, T, dtype=dt),
                 torch.from_numpy(obs_idx), torch.zeros(B, T, dtype=torch.bool), torch.full((B, T), float("nan"), dtype=dt),
                 torch.from_numpy(mask), obs_batch.covariates, obs_batch.cohort, obs_batch.schedule,
                 obs_batch.observable_names, obs_batch.cohort_names), rows


def _neg_log_posterior(twin, z, batch) -> torch.Tensor:
    """Per-subject -log p(y | z) - log p(z | x) (B,)."""
    g, status = twin.observables_at(twin.theta(z, batch.cohort), batch)
    ll = twin.observation.log_likelihood(g, batch.values, batch.observable, batch.cohort, batch.censored, batch.lloq,
                                         batch.mask).sum(1)
    pm, ps = twin.prior(batch.covariates)
    lp = normal_log_prob(z, pm, ps)
    bad = status != 0
    return torch.where(bad, torch.full_like(ll, 1e10), -(ll + lp))


#: step of the central differences of the gradient that give the Laplace Hessian where the solver route has no exact
#: second derivatives (unconstrained scale; larger steps than ~1e-4 keep adaptive-step noise in the gradient small)
FD_STEP = 1e-3


def second_derivatives_exact(solver) -> bool:
    """Whether differentiating twice through ``solver`` (a :class:`~hybridtwin.solve.SolverConfig`) is exact.

    rodas4 (also inside ``method="auto"``, for stiff subjects) solves its stage systems with a once-differentiable
    LU step, and torchdiffeq's adjoint computes gradients by a separate backward solve: both give exact first
    derivatives but silently wrong second ones (measured: Hessian entries off by a factor of two, off-diagonals
    zero), so the Laplace approximation must not take them from double backward. A fused (``torch.compile``-d)
    step refuses double backward outright."""
    return not (solver.adjoint or solver.fused or solver.method in ("rodas4", "auto"))


def _hessian_blocks(twin, batch: Batch, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient (B, P) and the (B, P, P) per-patient Hessian blocks of the negative log posterior at ``z``
    (B, P); it is a sum of per-patient terms, so P products with unit vector j in every patient's row at once give
    every block.

    Where the solver route differentiates twice exactly (:func:`second_derivatives_exact`) these are
    Hessian-vector products, run as one vectorised backward pass (``is_grads_batched``; measured 3.6x
    faster than one by one for 3 baccam2006 patients, 2.0 vs 7.4 s; one by one is the fallback where an operation
    has no batching rule). Elsewhere they are
    central differences of the (exact) gradient with step :data:`FD_STEP`: 2P gradient evaluations."""
    P = z.shape[1]
    basis = torch.eye(P, dtype=z.dtype, device=z.device)[:, None, :].expand(P, *z.shape).contiguous()  # (P, B, P)

    def gradient(x: torch.Tensor, graph: bool = False) -> torch.Tensor:
        """at ``x``; with ``graph`` ``x`` must be a leaf that requires grad (the graph is kept for a second pass)"""
        if not graph:
            x = x.detach().requires_grad_(True)
        g = torch.autograd.grad(_neg_log_posterior(twin, x, batch).sum(), x, create_graph=graph)[0]
        return g if graph else g.detach()

    if not second_derivatives_exact(twin.config.solver):
        h = FD_STEP
        pairs = [(gradient(z + h * basis[j]), gradient(z - h * basis[j])) for j in range(P)]
        H = torch.stack([(up - down) / (2 * h) for up, down in pairs], dim=1)  # row j = d grad / d z_j
        return sum(up + down for up, down in pairs) / (2 * P), H  # each pair's mean is the gradient to O(h^2)
    z = z.detach().requires_grad_(True)
    grad = gradient(z, graph=True)
    try:
        H = torch.autograd.grad(grad, z, basis, is_grads_batched=True, retain_graph=True)[0].transpose(0, 1)
    except (RuntimeError, NotImplementedError):  # an operation without a batching rule: one product at a time
        H = torch.stack([torch.autograd.grad(grad, z, basis[j], retain_graph=j < P - 1)[0] for j in range(P)], dim=1)
    return grad.detach(), H


#: fit_map warns where the remaining Newton step to the mode exceeds this many posterior SDs (not converged: max_iter
#: ran out, or L-BFGS on the sum over patients stopped while some patients were still away from their modes)
MAP_TOLERANCE_SD = 0.1


def _lbfgs(twin, batch: Batch, z0: torch.Tensor, max_iter: int) -> torch.Tensor:
    """L-BFGS on the sum of the patients' negative log posteriors from ``z0``; the (B, P) end point."""
    z = z0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6,
                            tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = _neg_log_posterior(twin, z, batch).sum()
        loss.backward()
        # a patient whose solve fails scores 1e10 (the line search backs off), but NaN derivatives inside the
        # solver can reach its gradient (0 x NaN), and one NaN entry makes the joint direction NaN: it counts as 0
        if not bool(torch.isfinite(z.grad).all()):
            z.grad = torch.nan_to_num(z.grad, nan=0.0, posinf=0.0, neginf=0.0)
        return loss

    opt.step(closure)
    return z.detach()


def _laplace(twin, batch: Batch, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Laplace SDs at ``z`` (the prior's where a Hessian block is not positive definite), whether each block is,
    and the Newton step that remains to each patient's mode in posterior SDs (B, P)."""
    g, H = _hessian_blocks(twin, batch, z)
    P = z.shape[1]
    H = 0.5 * (H + H.transpose(1, 2)) + 1e-8 * torch.eye(P, dtype=H.dtype)
    prior_sd = twin.prior(batch.covariates)[1].detach()
    # the Laplace approximation needs a minimum: where a block is not positive definite (the optimiser stopped
    # short, or at a saddle) its inverse's diagonal may be negative or tiny -- intervals of zero width
    pd_ok = torch.isfinite(H).all(dim=(1, 2))
    pd_ok &= torch.linalg.eigvalsh(torch.where(pd_ok[:, None, None], H, torch.eye(P, dtype=H.dtype))).min(1).values > 0
    safe = torch.where(pd_ok[:, None, None], H, torch.eye(P, dtype=H.dtype))
    sd = torch.sqrt(torch.clamp(torch.diagonal(torch.linalg.inv(safe), dim1=1, dim2=2), min=1e-12))
    sd = torch.where(pd_ok[:, None] & torch.isfinite(sd), sd, prior_sd)
    step = torch.linalg.solve(safe, g[..., None])[..., 0] / sd
    return sd, pd_ok, step


def fit_map(twin, batch: Batch, init: torch.Tensor | None = None, max_iter: int = 100) -> Posterior:
    """Per-patient MAP by L-BFGS (the objective is a sum of independent per-patient terms) + Laplace sd.

    One L-BFGS run over every patient at once is fast, but its line search moves all of them by one step length:
    a patient at a wall (parameters where the solve fails) or far from their mode can stop the others short of
    theirs. Patients left without a minimum, or more than :data:`MAP_TOLERANCE_SD` posterior SDs from it, are
    therefore fitted again one at a time from where the joint run left them (kept where that lowers their own
    objective). Warns, naming the patients, where a fit still has no minimum (indefinite Hessian: prior SDs
    kept) or is still that far from the mode."""
    with torch.no_grad():
        z0 = init if init is not None else twin.prior(batch.covariates)[0]
    z = _lbfgs(twin, batch, z0, max_iter)
    sd, pd_ok, step = _laplace(twin, batch, z)
    retry = ~pd_ok | ~(step.abs().amax(1) <= MAP_TOLERANCE_SD)  # (NaN counts as far)
    if len(batch) > 1 and bool(retry.any()):
        idx = torch.nonzero(retry).flatten()
        sub = batch.select(idx)
        with torch.no_grad():
            before = _neg_log_posterior(twin, z[idx], sub)
        for j, i in enumerate(idx.tolist()):
            one = batch.select(torch.tensor([i]))
            zi = _lbfgs(twin, one, z[i:i + 1], max_iter)
            with torch.no_grad():
                if float(_neg_log_posterior(twin, zi, one)[0]) < float(before[j]):
                    z[i] = zi[0]
        # the Laplace terms are per patient: only the refitted ones change
        sd[idx], pd_ok[idx], step[idx] = _laplace(twin, sub, z[idx])
    if not bool(pd_ok.all()):
        bad = [batch.subject_ids[i] for i in torch.nonzero(~pd_ok).flatten().tolist()]
        warnings.warn(f"MAP: no minimum reached for {len(bad)} patient(s) (e.g. {bad[:5]}; the Hessian there is not "
                      "positive definite), so the Laplace approximation does not apply: their parameter SDs are the "
                      "prior's (wide); raise max_iter or use method='map_is' / 'library'", UserWarning, stacklevel=2)
    far = pd_ok & ~(step.abs().amax(1) <= MAP_TOLERANCE_SD)  # (NaN counts as far)
    if bool(far.any()):
        bad = [batch.subject_ids[i] for i in torch.nonzero(far).flatten().tolist()]
        warnings.warn(f"MAP: not converged for {len(bad)} patient(s) (e.g. {bad[:5]}): the mode is still more than "
                      f"{MAP_TOLERANCE_SD:g} posterior SD away (a Newton step of up to "
                      f"{float(torch.nan_to_num(step.abs().amax(1)[far], nan=math.inf).max()):.2g} SD) where L-BFGS "
                      f"stopped (max_iter={max_iter}, also when fitted alone), so their intervals are centred off the "
                      "mode: raise max_iter, start elsewhere (init=) or use method='map_is'", UserWarning,
                      stacklevel=2)
    return Posterior(batch.subject_ids, z.detach(), sd.detach())


def library_posterior(twin, batch: Batch, size: int = 2000, grid_points: int = 400, inflate: float = 1.5,
                      seed: int = 0, min_ess: float = 0.0, max_size: int = 64_000) -> Posterior:
    """Importance-weighted library of virtual patients (one library simulation per distinct dosing regimen).

    ``min_ess``: grow the library (doubling it, new draws from the same proposal) until every patient's effective
    sample size reaches ``min_ess`` or the library has ``max_size`` members. A patient with several informative
    samples concentrates their weight on a few members, and the Monte Carlo error of their forecast grows with it;
    the default 0 keeps ``size`` members whatever the ESS (``Posterior.ess`` reports it).
    """
    if not isinstance(size, int) or size < 2:
        raise ValueError(f"size must be an integer >= 2, got {size!r}")
    if not (isinstance(min_ess, (int, float)) and min_ess >= 0) or isinstance(min_ess, bool):
        raise ValueError(f"min_ess must be a number >= 0, got {min_ess!r}")
    if not isinstance(max_size, int) or max_size < size:
        raise ValueError(f"max_size must be an integer >= size ({size}), got {max_size!r}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pm, ps = twin.prior(batch.covariates)
        center = pm.mean(0)
        spread = torch.sqrt(ps.mean(0) ** 2 + pm.var(0, unbiased=False)) * inflate
        lib = center + spread * torch.randn((size, center.shape[0]), generator=gen, dtype=center.dtype)
        loglik = _library_loglik(twin, batch, lib, grid_points)
        while True:
            log_q = normal_log_prob(lib, center, spread)  # (L,)
            log_prior = normal_log_prob(lib[None], pm[:, None], ps[:, None])
            weights, ess = _normalise(loglik + log_prior - log_q[None], batch.subject_ids, "library member")
            if not min_ess or float(ess.min()) >= min_ess or len(lib) >= max_size:
                break
            more = center + spread * torch.randn((min(len(lib), max_size - len(lib)), center.shape[0]),
                                                 generator=gen, dtype=center.dtype)
            lib = torch.cat([lib, more])
            loglik = torch.cat([loglik, _library_loglik(twin, batch, more, grid_points)], dim=1)
        mean = weights @ lib
        sd = torch.sqrt(torch.clamp(weights @ lib**2 - mean**2, min=1e-12))
    return Posterior(batch.subject_ids, mean, sd, lib[None].expand(len(batch), -1, -1), weights, ess)


def _library_loglik(twin, batch: Batch, lib: torch.Tensor, grid_points: int) -> torch.Tensor:
    """(B, L) log-likelihood of each patient's data under each library member (``-inf`` where its solve
    failed): each member simulated once per (regimen, cohort) on a grid, interpolated to the patients' rows."""
    size = lib.shape[0]
    B = len(batch)
    horizon = float(batch.times[batch.mask].max()) if bool(batch.mask.any()) else twin.time_scale
    # from the earliest row: a twin with a time offset reads data from before day 0 (to -upper), and rows
    # outside the grid would be extrapolated from its first segment
    start = min(0.0, float(batch.times[batch.mask].min())) if bool(batch.mask.any()) else 0.0
    grid = torch.linspace(start, max(horizon, start + 1e-6), grid_points, dtype=batch.times.dtype)
    s = batch.schedule
    # one library simulation per (regimen, cohort): cohorts may differ in typical values (cohort_effects)
    keys = [tuple(torch.cat([s.bolus_time[b], s.bolus_amount[b], s.bolus_target[b].to(s.bolus_time.dtype),
                             s.inf_start[b], s.inf_rate[b]]).tolist()) + (int(batch.cohort[b]),) for b in range(B)]
    groups: dict = {}
    for b, k in enumerate(keys):
        groups.setdefault(k, []).append(b)
    loglik = torch.zeros(B, size, dtype=lib.dtype)
    K = len(twin.config.observables)
    for members in groups.values():
        b0 = members[0]
        theta = twin.theta(lib, batch.cohort[[b0] * size])
        one = Batch([None] * size, grid.expand(size, -1), torch.zeros(size, grid_points, dtype=grid.dtype),
                    torch.zeros(size, grid_points, dtype=torch.long), torch.zeros(size, grid_points, dtype=torch.bool),
                    torch.zeros(size, grid_points, dtype=grid.dtype), torch.ones(size, grid_points, dtype=torch.bool),
                    batch.covariates[[b0] * size], batch.cohort[[b0] * size], s.select(torch.full((size,), b0)),
                    batch.observable_names, batch.cohort_names)
        curves = []
        failed = torch.zeros(size, dtype=torch.bool)
        for k in range(K):
            one.observable = torch.full_like(one.observable, k)
            g_k, status = twin.observables_at(theta, one)  # (L, G); 0 where the member's solve failed
            curves.append(g_k)
            failed |= status != 0
        curves = torch.stack(curves, dim=-1)  # (L, G, K)
        for b in members:
            m = batch.mask[b]
            t, k = batch.times[b][m], batch.observable[b][m]
            pos = torch.clamp(torch.searchsorted(grid, t.contiguous()), 1, grid_points - 1)
            w = ((t - grid[pos - 1]) / (grid[pos] - grid[pos - 1]))[None, :]
            g = curves[:, pos - 1, k] * (1 - w) + curves[:, pos, k] * w  # (L, n)
            n = g.shape[1]
            ll = twin.observation.log_likelihood(
                g, batch.values[b][m].expand(size, n), k.expand(size, n), batch.cohort[[b] * size],
                batch.censored[b][m].expand(size, n), batch.lloq[b][m].expand(size, n), torch.ones(size, n, dtype=torch.bool))
            # a member whose solve failed has no curve (its zeros would read as "below every limit")
            loglik[b] = torch.where(failed, torch.full((size,), -math.inf, dtype=ll.dtype), ll.sum(1))
    return loglik


def _normalise(logw: torch.Tensor, ids: list, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, effective sample size) from (B, L) log importance weights (NaN: not evaluable). A patient with
    no evaluable draw (every solve failed, or a zero likelihood everywhere) keeps uniform weights -- the proposal --
    with an effective sample size of 0 and a warning naming them, never a confident-looking posterior."""
    logw = torch.nan_to_num(logw, nan=-math.inf, posinf=-math.inf, neginf=-math.inf)  # (default: finite)
    some = torch.isfinite(logw).any(1)
    w = torch.softmax(torch.where(some[:, None], logw, torch.zeros_like(logw)), dim=1)
    ess = torch.where(some, 1.0 / (w**2).sum(1), torch.zeros_like(w[:, 0]))
    if not bool(some.all()):
        none = [ids[i] for i in torch.nonzero(~some).flatten().tolist()]
        warnings.warn(f"importance sampling: no {what} could be evaluated for {len(none)} patient(s) (e.g. "
                      f"{none[:5]}): every solve failed or the likelihood is zero everywhere, so their posterior is "
                      "only the proposal (effective sample size 0); check their data or use method='map'",
                      UserWarning, stacklevel=3)
    return w, ess


def importance_posterior(twin, batch: Batch, n_draws: int = 256, inflate: float = 1.5, defensive: float = 0.1,
                         seed: int = 0, max_solves: int = 50_000,
                         proposal: tuple[torch.Tensor, torch.Tensor] | None = None) -> Posterior:
    """The encoder's posterior corrected by importance sampling (``method="encoder_is"``).

    The proposal is the mixture ``(1 - defensive) N(encoder mean, (inflate * encoder sd)^2) + defensive *
    prior(covariates)`` (defensive importance sampling: the weights stay bounded where the encoder is
    overconfident); every draw is weighted by ``p(y | z) p(z | x) / q(z)``. Returns weighted samples with
    their effective sample size ``ess`` per patient (near ``n_draws``: the encoder was already right; a few:
    increase ``n_draws``). ``max_solves`` bounds the ODE solves per batched call (memory). ``proposal``: the
    ``(mean, sd)`` (each ``(B, P)``, unconstrained scale) of the Gaussian part instead of the encoder's, e.g. a
    MAP + Laplace fit (``method="map_is"``).

    >>> from hybridtwin.virtual import make_virtual_cohort
    >>> from hybridtwin.twin import HybridTwin, TwinConfig
    >>> data = make_virtual_cohort("baccam2006", n_subjects=3, seed=0)
    >>> twin = HybridTwin.from_data(TwinConfig(model="baccam2006"), data)
    >>> post = importance_posterior(twin, twin.dataset(data).batch(), n_draws=32)
    >>> tuple(post.samples.shape), bool((post.ess >= 1).all() and (post.ess <= 32).all())
    ((3, 32, 6), True)
    """
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 2:
        raise ValueError(f"n_draws must be an integer >= 2, got {n_draws!r}")
    if not (isinstance(inflate, (int, float)) and math.isfinite(inflate) and inflate > 0):
        raise ValueError(f"inflate must be a positive number, got {inflate!r}")
    if not (isinstance(defensive, (int, float)) and 0 <= defensive < 1):
        raise ValueError(f"defensive must be in [0, 1), got {defensive!r}")
    gen = torch.Generator().manual_seed(seed)
    B = len(batch)
    with torch.no_grad():
        em, es = twin.posterior(batch) if proposal is None else (t.detach() for t in proposal)
        if em.shape != (B, len(twin.patient_names)) or es.shape != em.shape or not bool((es > 0).all()):
            raise ValueError(f"proposal must be (mean, sd) of shape {(B, len(twin.patient_names))} with sd > 0, got "
                             f"{tuple(em.shape)} and {tuple(es.shape)}")
        qs = es * inflate
        pm, ps = twin.prior(batch.covariates)
        n_prior = int(round(defensive * n_draws))
        eps = torch.randn((n_draws, *em.shape), generator=gen, dtype=em.dtype)
        z = torch.cat([pm[None] + ps[None] * eps[:n_prior], em[None] + qs[None] * eps[n_prior:]], 0)  # (K, B, P)
        parts = [normal_log_prob(z, em[None], qs[None]) + math.log1p(-defensive)]
        if defensive > 0:
            parts.append(normal_log_prob(z, pm[None], ps[None]) + math.log(defensive))
        log_q = torch.logsumexp(torch.stack(parts), 0)  # (K, B)
        log_prior = normal_log_prob(z, pm[None], ps[None])
        loglik = torch.empty(n_draws, B, dtype=em.dtype)
        per_call = max(1, max_solves // max(B, 1))
        for start in range(0, n_draws, per_call):
            zk = z[start:start + per_call]
            K = zk.shape[0]
            g, status = twin.observables_at(twin.theta(zk.reshape(K * B, -1), batch.cohort.repeat(K)), batch, repeats=K)
            ll = twin.observation.log_likelihood(g, batch.values.repeat(K, 1), batch.observable.repeat(K, 1),
                                                 batch.cohort.repeat(K), batch.censored.repeat(K, 1),
                                                 batch.lloq.repeat(K, 1), batch.mask.repeat(K, 1)).sum(1)
            loglik[start:start + K] = torch.where(status == 0, ll, torch.full_like(ll, -math.inf)).reshape(K, B)
        w, ess = _normalise((loglik + log_prior - log_q).T, batch.subject_ids, "draw")  # (B, K)
        samples = z.permute(1, 0, 2)  # (B, K, P)
        mean = torch.einsum("bk,bkp->bp", w, samples)
        sd = torch.sqrt(torch.clamp(torch.einsum("bk,bkp->bp", w, samples**2) - mean**2, min=1e-12))
    _warn_low_ess(batch.subject_ids, torch.where(ess > 0, ess, torch.full_like(ess, math.inf)), n_draws)
    return Posterior(batch.subject_ids, mean, sd, samples, w, ess)


def map_importance_posterior(twin, batch: Batch, n_draws: int = 512, inflate: float = 1.5, defensive: float = 0.5,
                             seed: int = 0, max_iter: int = 100, **options) -> Posterior:
    """MAP + Laplace corrected by importance sampling (``method="map_is"``): :func:`fit_map` from the encoder's
    mean, then :func:`importance_posterior` with the Laplace Gaussian (SDs times ``inflate``) as the proposal,
    mixed with the population prior at weight ``defensive`` (default one half: the prior's draws are what
    recovers a second posterior mode the MAP missed).

    >>> from hybridtwin.virtual import make_virtual_cohort
    >>> from hybridtwin.twin import HybridTwin, TwinConfig
    >>> data = make_virtual_cohort("vaccine_asc", n_subjects=3, seed=0)
    >>> twin = HybridTwin.from_data(TwinConfig(model="vaccine_asc"), data)
    >>> post = map_importance_posterior(twin, twin.dataset(data).batch(), n_draws=64, max_iter=20)
    >>> tuple(post.samples.shape), bool((post.ess >= 1).all())
    ((3, 64, 7), True)
    """
    with torch.no_grad():
        init = twin.posterior(batch)[0]
    laplace = fit_map(twin, batch, init=init, max_iter=max_iter)
    return importance_posterior(twin, batch, n_draws=n_draws, inflate=inflate, defensive=defensive, seed=seed,
                                proposal=(laplace.mean, laplace.sd), **options)


#: below this effective sample size a patient's importance-sampled posterior rests on a handful of draws
MIN_ESS = 10.0


def _warn_low_ess(ids, ess: torch.Tensor, n_draws: int) -> None:
    """Warn, naming the patients, where the importance weights collapse onto a few draws (the encoder's
    proposal misses the posterior, e.g. for patients unlike the training data): intervals would be too narrow."""
    low = torch.nonzero(ess < MIN_ESS).flatten().tolist()
    if low:
        shown = [ids[i] for i in low[:5]]
        warnings.warn(f"importance sampling: effective sample size below {MIN_ESS:g} of {n_draws} draws for "
                      f"{len(low)} of {len(ids)} patient(s) (e.g. {shown}): their posterior rests on a few draws "
                      "and its intervals are too narrow; use method='map' for them or raise n_draws",
                      UserWarning, stacklevel=3)


def posterior(twin, batch: Batch, method: str = AUTO, **options) -> Posterior:
    """The posterior of the patient parameters of every subject in ``batch`` by the chosen route (see
    :func:`resolve_method` for ``"auto"``)."""
    method = resolve_method(method, batch)
    if method == "encoder":
        with torch.no_grad():
            mean, sd = twin.posterior(batch)
        return Posterior(batch.subject_ids, mean, sd)
    if method == "map":
        with torch.no_grad():
            init = twin.posterior(batch)[0]
        return fit_map(twin, batch, init=init, **options)
    if method == "encoder_is":
        return importance_posterior(twin, batch, **options)
    if method == "map_is":
        return map_importance_posterior(twin, batch, **options)
    return library_posterior(twin, batch, **options)


def predict(twin, covariates: pd.DataFrame, observations: pd.DataFrame | None = None, doses: pd.DataFrame | None = None,
            times=None, method: str = AUTO, n_samples: int = 200, level: float = 0.90, seed: int = 0,
            given: Posterior | None = None, reference_cohort: bool = False,
            **options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Personalise and predict; returns ``(trajectories, parameters)``.

    covariates: one row per new patient (``subject_id`` + the training covariates; optional ``cohort``).
    observations, doses: the patients' data so far (canonical long tables). times: a 1-D grid (every patient,
    every observable) or a table of rows ``subject_id, time, observable`` to predict.
    method: the personalisation route (module docstring); ``"auto"`` is resolved per call, and the route taken is
    recorded in ``trajectories.attrs["method"]``.
    given: a posterior from :func:`update` to use instead of personalising again.
    reference_cohort: patients without a cohort label use the twin's reference cohort (otherwise a twin that
    knows several cohorts refuses them; see :func:`_tables`).
    trajectories: ``subject_id, time, observable, median, lower, upper`` (posterior predictive, noise included)
    and ``model_median`` (the noise-free observable). parameters: ``subject_id, parameter, median, lower, upper``
    (constrained scale). For a twin with missed samples (``TwinConfig.miss``) the measurement's quantiles include
    them: one that falls on a missed sample is ``-inf`` ("not detected", below any limit of quantification).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    ds, ids = _tables(twin, covariates, observations, doses, reference_cohort)
    batch = ds.batch()
    method = resolve_method(method, batch)
    if given is not None:
        post = _aligned(given, ids, "given", "or None to personalise them here")
        method = "given"
    else:
        post = posterior(twin, batch, method, **options)
    obs_names = list(twin.config.observables)
    if times is None:
        times = np.linspace(0.0, twin.model.default_t_end, 101)
    if isinstance(times, pd.DataFrame):
        rows = times[["subject_id", "time", "observable"]].copy()
    else:
        grid = np.asarray(times, dtype=float)
        if grid.ndim != 1 or not np.isfinite(grid).all() or (grid < twin.min_data_time).any():
            raise ValueError(f"times must be a 1-D grid of finite times >= {twin.min_data_time:g} or a table of "
                             "prediction rows")
        rows = pd.DataFrame([(s, t, o) for s in ids for t in grid for o in obs_names], columns=["subject_id", "time", "observable"])
    pbatch, rows = _grid_batch(batch, rows, ids, obs_names)
    gen = torch.Generator().manual_seed(seed)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    with torch.no_grad():
        z = post.sample(n_samples, gen)  # (S, B, Pp)
        S, B, P = z.shape
        theta = twin.theta(z.reshape(S * B, P), pbatch.cohort.repeat(S))
        g, status = twin.observables_at(theta, pbatch, repeats=S)
        g = g.reshape(S, B, -1)
        ok = (status == 0).reshape(S, B)
        y = twin.observation.sample(g, pbatch.observable.expand(S, -1, -1), pbatch.cohort.expand(S, -1), generator=gen)
        mu = twin.observation.calibrate(g, pbatch.observable.expand(S, -1, -1), pbatch.cohort.expand(S, -1))
        nan = torch.tensor(float("nan"), dtype=g.dtype)
        y = torch.where(ok[..., None], y, nan)
        mu = torch.where(ok[..., None], mu, nan)
        # a missed sample (twin with ``miss``) is drawn as -inf, "not detected"; linear interpolation next to it
        # would give NaN, so such twins take the nearest draw's value
        q = torch.nanquantile(y, torch.tensor([0.5, lo_q, hi_q], dtype=y.dtype), dim=0,
                              interpolation="nearest" if twin.observation.has_miss else "linear")  # (3, B, T)
        med_model = torch.nanquantile(mu, 0.5, dim=0)
        params = theta.reshape(S, B, -1)
        pq = torch.quantile(params, torch.tensor([0.5, lo_q, hi_q], dtype=params.dtype), dim=0)
    b = rows["_b"].to_numpy(int)
    counts = np.bincount(b, minlength=B)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    traj = rows[["subject_id", "time", "observable"]].reset_index(drop=True)
    bt, st = torch.as_tensor(np.array(b)), torch.as_tensor(np.array(slot))
    traj["median"], traj["lower"], traj["upper"] = (q[i][bt, st].numpy() for i in range(3))
    traj["model_median"] = med_model[bt, st].numpy()
    names = twin.model.parameter_names
    par = pd.DataFrame([(ids[i], n, float(pq[0, i, j]), float(pq[1, i, j]), float(pq[2, i, j]))
                        for i in range(B) for j, n in enumerate(names) if n in twin.patient_names],
                       columns=["subject_id", "parameter", "median", "lower", "upper"])
    traj.attrs["method"] = par.attrs["method"] = method
    _check_nan_rows(traj, ok, ids)
    return traj, par


def _check_nan_rows(traj: pd.DataFrame, ok: torch.Tensor, ids: list) -> None:
    """Predictions that could not be computed are never silent: NaN rows warn with the subjects (and the
    share of their posterior draws whose solve failed); a prediction with no finite row at all is an error."""
    nan = traj["median"].isna() | traj["lower"].isna() | traj["upper"].isna()
    if not bool(nan.any()):
        return
    failed_share = 1.0 - ok.double().mean(0)  # (B,)
    subjects = list(dict.fromkeys(traj.loc[nan, "subject_id"].tolist()))
    pos = {s: i for i, s in enumerate(ids)}
    shown = ", ".join(f"{s!s} ({float(failed_share[pos[s]]):.0%} of draws failed to solve)" for s in subjects[:10])
    if bool(nan.all()):
        raise ValueError(f"no prediction could be computed: every row is NaN (subjects {shown}); the solver failed "
                         "for these patients' parameters -- check their covariates and doses, or the solver settings "
                         "(max_steps, tolerances) of the twin")
    warnings.warn(f"{int(nan.sum())} of {len(traj)} prediction rows are NaN for {len(subjects)} subject(s): {shown}",
                  RuntimeWarning, stacklevel=3)


def _aligned(post: Posterior, ids: list, name: str, alternative: str) -> Posterior:
    """``post`` with its rows in the order of ``ids`` (matched by subject id); a patient it does not hold is an
    error naming them."""
    if list(post.subject_ids) == list(ids):
        return post
    known = {str(s): i for i, s in enumerate(post.subject_ids)}
    missing = [s for s in ids if str(s) not in known]
    if missing or len(known) != len(post.subject_ids):
        held = list(post.subject_ids)
        raise ValueError(f"{name} has no posterior for patient(s) {missing[:5]} (it holds {held[:5]}"
                         f"{' ...' if len(held) > 5 else ''}); pass the posterior computed for these patients, "
                         f"{alternative}")
    order = torch.tensor([known[str(s)] for s in ids])
    pick = lambda t: None if t is None else t[order]  # noqa: E731
    return Posterior(list(ids), post.mean[order], pick(post.sd), pick(post.samples), pick(post.weights), pick(post.ess))


def update(twin, posterior_state: Posterior | None, covariates: pd.DataFrame, observations: pd.DataFrame,
           doses: pd.DataFrame | None = None, steps: int = 100, lr: float = 0.05, n_samples: int = 8,
           seed: int = 0, reference_cohort: bool = False) -> Posterior:
    """Refine patients' Gaussian posteriors with all their observations so far (a few Adam steps on the
    variational mean and log-sd, starting from ``posterior_state`` or, if None, the encoder);
    ``reference_cohort`` as in :func:`predict`. ``posterior_state`` is matched to the observations' patients by
    subject id (any order); a patient it does not hold is an error. (A draw whose solve fails has a constant zero
    curve, so it adds nothing to the gradient.)"""
    ds, ids = _tables(twin, covariates, observations, doses, reference_cohort)
    batch = ds.batch()
    with torch.no_grad():  # a given state's rows follow its own patients: match them to the observations'
        start = (posterior(twin, batch, "encoder") if posterior_state is None
                 else _aligned(posterior_state, ids, "posterior_state", "or None to start from the encoder"))
        mean0, sd0 = start.mean.clone(), start.sd.clone()
    mean = mean0.requires_grad_(True)
    log_sd = torch.log(sd0).requires_grad_(True)
    opt = torch.optim.Adam([mean, log_sd], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    pm, ps = (t.detach() for t in twin.prior(batch.covariates))
    for _ in range(steps):
        opt.zero_grad()
        sd = log_sd.exp()
        eps = torch.randn((n_samples, *mean.shape), generator=gen, dtype=mean.dtype)
        z = (mean[None] + sd[None] * eps).reshape(-1, mean.shape[1])
        g, status = twin.observables_at(twin.theta(z, batch.cohort.repeat(n_samples)), batch, repeats=n_samples)
        K = n_samples
        ll = twin.observation.log_likelihood(g, batch.values.repeat(K, 1), batch.observable.repeat(K, 1),
                                             batch.cohort.repeat(K), batch.censored.repeat(K, 1),
                                             batch.lloq.repeat(K, 1), batch.mask.repeat(K, 1)).sum(1).reshape(K, -1)
        kl = normal_kl(mean, sd, pm, ps)
        loss = -(ll.mean(0) - kl).sum()
        loss.backward()
        opt.step()
    twin.zero_grad(set_to_none=True)
    return Posterior(ids, mean.detach(), log_sd.detach().exp())
