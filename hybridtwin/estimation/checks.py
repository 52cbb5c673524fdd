"""Degeneracy checks and an identifiability check for a fitted twin.

:func:`degeneracy_checks` looks for the signs of a fit that explains the data away instead of describing it,
each reported with its numbers (and raised as a :class:`DegeneracyWarning`):

- ``noise_vs_spread``: the residual SD is at least half the data's own SD (the model explains little);
- ``omega_collapsed``: a between-patient SD below 0.01 (the random effect has vanished);
- ``at_bound``: a typical value within 1 % (on its unconstrained scale) of a declared bound, or many
  subjects' conditional means outside the bounds;
- ``flat_population_curve``: the typical patient's predicted course spans less than a quarter of the range of
  the data's binned medians over time;
- ``failed_subjects``: subjects whose solve fails at the estimate;
- ``high_shrinkage``: eta-shrinkage above 0.5 (the design says little about that random effect);
- ``solver_effort_grew``: the ODE solver's mean steps per subject solve grew at least ``EFFORT_GROWTH``-fold from
  the fit's first iterations to its last (and to at least ``EFFORT_FLOOR`` steps): the estimate moved into stiff
  dynamics, each iteration got slower, and predictions from the twin will be slow too (a closure replacing a rate
  can multiply it by up to e^20 unless ``constraint="bounded"``).

:func:`identifiability` asks which model parameters the *design* can inform: the Fisher information of the
typical values from the sensitivities of every observation (central differences on the unconstrained scale)
and the fitted noise SD, for the estimated parameters jointly and for each fixed parameter as if it were
estimated too, plus correlations. Parameters with a large standard error on the log scale are listed so they
can be fixed deliberately.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import torch

from ..data import CohortData
from ..data.dataset import Batch
from .likelihood import solve_observables


class DegeneracyWarning(UserWarning):
    """A fitted twin shows a sign of degeneracy (see :func:`degeneracy_checks`)."""


def _batch(twin, data) -> Batch:
    return data if isinstance(data, Batch) else twin.dataset(data).batch()


def _typical_z(twin, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        return twin.prior(batch.covariates)[0]


def _noise_sd(twin, k: int, level: float) -> float:
    om = twin.observation
    sa = float(om.log_sigma_add[k].detach().exp()) if bool(om.uses_add[k]) else 0.0
    sp = float(om.log_sigma_prop[k].detach().exp()) if bool(om.uses_prop[k]) else 0.0
    return math.sqrt(sa**2 + (sp * level) ** 2)


def degeneracy_checks(twin, data: CohortData | Batch, fit=None, emit: bool = True) -> list[dict]:
    """Run the checks of the module docstring; returns one dict per finding (``check``, ``message`` and the
    numbers) and, with ``emit``, raises each as a :class:`DegeneracyWarning`. ``fit``: the
    :class:`~hybridtwin.estimation.PopulationFit` (for conditional means and shrinkage), optional."""
    batch = _batch(twin, data)
    found = []
    space = twin.model.parameter_space
    with torch.no_grad():
        zt = _typical_z(twin, batch)
        g, ok = solve_observables(twin, zt, batch)
        mu = twin.observation.calibrate(g, batch.observable, batch.cohort)
    for k, name in enumerate(twin.observation.observables):
        rows = batch.mask & (batch.observable == k)
        vals = batch.values[rows]
        unc = batch.values[rows & ~batch.censored]
        if unc.numel() < 3:
            continue
        spread = float(unc.std())
        level = float(unc.abs().mean())
        sd = _noise_sd(twin, k, level)
        if sd >= 0.5 * spread:
            found.append(dict(check="noise_vs_spread", observable=name, noise_sd=sd, data_sd=spread,
                              message=f"{name}: residual SD {sd:.3g} is {sd / spread:.0%} of the data's SD "
                                      f"{spread:.3g}: the model explains little of the variation (a degenerate fit?)"))
        # population curve vs the data's course over time (binned medians; censored values at their limit)
        t = batch.times[rows]
        pred = mu[rows & ok[:, None]] if bool(ok.any()) else mu[rows]
        tp = batch.times[rows & ok[:, None]]
        n_bins = int(min(8, max(2, t.unique().numel() // 2)))
        edges = torch.quantile(t, torch.linspace(0, 1, n_bins + 1, dtype=t.dtype))
        dm, pm = [], []
        for b in range(n_bins):
            lo, hi = edges[b], edges[b + 1]
            sel = (t >= lo) & ((t <= hi) if b == n_bins - 1 else (t < hi))
            selp = (tp >= lo) & ((tp <= hi) if b == n_bins - 1 else (tp < hi))
            if int(sel.sum()) >= 3 and int(selp.sum()) >= 1:
                dm.append(float(vals[sel].median()))
                pm.append(float(pred[selp].median()))
        if len(dm) >= 2:
            data_range, pred_range = max(dm) - min(dm), max(pm) - min(pm)
            if data_range > 2 * sd and pred_range < 0.25 * data_range:
                found.append(dict(check="flat_population_curve", observable=name, predicted_range=pred_range,
                                  data_range=data_range,
                                  message=f"{name}: the typical patient's prediction spans {pred_range:.3g} over "
                                          f"time while the data's binned medians span {data_range:.3g}: the "
                                          "population curve is flatter than the data"))
    for j, name in enumerate(twin.patient_names):
        omega = float(twin.log_omega[j].detach().exp())
        if omega < 0.01:
            found.append(dict(check="omega_collapsed", parameter=name, omega=omega,
                              message=f"{name}: between-patient SD {omega:.2g} has collapsed to ~0; fit it as a "
                                      "population parameter or check the data inform it"))
    with torch.no_grad():
        zfull = twin.z_full(twin.mu[None].to(twin.dtype))[0]
    for name in twin.patient_names + twin.population_names:
        p = space[name]
        j = space.index(name)
        for bound, label in ((p.lower, "lower"), (p.upper, "upper")):
            if bound is None or not math.isfinite(bound) or (p.transform == "log" and bound <= 0):
                continue
            zb = float(p.to_unconstrained(torch.tensor(bound, dtype=torch.float64))) if p.transform != "logit" else None
            if p.transform == "logit":
                near = abs(float(torch.sigmoid(zfull[j])) - (0.0 if label == "lower" else 1.0)) < 0.01
            else:
                near = abs(float(zfull[j]) - zb) < 0.01 * max(1.0, abs(zb))
            if near:
                value = float(space.constrain(zfull[None])[0, j])
                found.append(dict(check="at_bound", parameter=name, value=value, bound=bound,
                                  message=f"{name}: typical value {value:.4g} sits at its {label} bound {bound:.4g}"))
    if fit is not None:
        post = fit.posterior_mean
        for j, name in enumerate(twin.patient_names):
            p = space[name]
            zlo, zhi = p.unconstrained_bounds()  # compared unconstrained: constrain() holds values at the bounds
            out = (post[:, j] < zlo) | (post[:, j] > zhi)
            share = float(out.double().mean())
            if share > 0.05:
                found.append(dict(check="at_bound", parameter=name, share_outside=share,
                                  message=f"{name}: {share:.0%} of the subjects' conditional means lie outside the "
                                          f"declared bounds [{p.lower}, {p.upper}]"))
        from .saem import conditional_summary

        shrink = conditional_summary(twin, fit, batch)
        for _, row in shrink.iterrows():
            if row["shrinkage"] > 0.5:
                found.append(dict(check="high_shrinkage", parameter=row["parameter"], shrinkage=float(row["shrinkage"]),
                                  message=f"{row['parameter']}: eta-shrinkage {row['shrinkage']:.0%}: the data say "
                                          "little about this patient's value (individual estimates stay near the "
                                          "population; consider fixing its variability)"))
        effort = _solver_effort(fit.history, closures=tuple(getattr(twin.config, "closures", ())))
        if effort is not None:
            found.append(effort)
        if fit.failed:
            found.append(dict(check="failed_subjects", subjects=list(map(str, fit.failed[:20])), n=len(fit.failed),
                              message=f"{len(fit.failed)} subject(s) fail to solve at the estimate: "
                                      f"{list(map(str, fit.failed[:10]))}"))
    if emit:
        for f in found:
            warnings.warn(f["message"], DegeneracyWarning, stacklevel=2)
    return found


#: ``solver_effort_grew`` fires when the mean steps per solve grew this many times over the fit ...
EFFORT_GROWTH = 4.0
#: ... and ended at least this high (a few dozen steps more is no stiffness)
EFFORT_FLOOR = 200.0


def _solver_effort(history: pd.DataFrame | None, window: int = 3, closures: tuple = ()) -> dict | None:
    """The ``solver_effort_grew`` finding from a fit's history (medians over its first and last ``window``
    iterations), or None. ``closures``: the twin's closure configs, for the advice."""
    if history is None or "solver_steps_per_solve" not in history or len(history) < 2 * window:
        return None
    steps = history["solver_steps_per_solve"].to_numpy(float)
    first, last = float(np.median(steps[:window])), float(np.median(steps[-window:]))
    if not (last >= EFFORT_GROWTH * max(first, 1e-12) and last >= EFFORT_FLOOR):
        return None
    secs = history["seconds"].to_numpy(float) if "seconds" in history else None
    replacing = [c for c in closures if c.mode == "replace"]
    advice = ""
    if any(c.constraint != "bounded" for c in replacing):
        advice = ("; a closure replacing a rate multiplies it by up to e^20: bound it (constraint='bounded', "
                  "its multiplier within exp(bounds))")
    elif replacing:
        advice = ("; the replacing closures are bounded already: narrow their bounds, or look in the history for a "
                  "typical rate that keeps growing")

    timing = (f"; an iteration took {np.median(secs[:window]):.3g} s at first and {np.median(secs[-window:]):.3g} s at "
              "the end" if secs is not None else "")
    return dict(check="solver_effort_grew", steps_first=first, steps_last=last,
                message=f"the ODE solver's mean steps per subject solve grew {last / first:.1f}x during the fit "
                        f"({first:.0f} -> {last:.0f}{timing}): the estimate moved into stiff dynamics. Try solver "
                        f"method 'auto' (stiff subjects switch to Rodas4) or narrower parameter bounds{advice}")


def identifiability(twin, data: CohortData | Batch, step: float = 1e-3, threshold: float = 0.5) -> pd.DataFrame:
    """Which parameters the design informs, from the sensitivity Fisher information at the typical values.

    Returns one row per model parameter: its role, ``se_log`` (SE of its unconstrained typical value when the
    estimated parameters are fitted jointly; for a fixed parameter, if it were estimated as well),
    ``max_correlation`` and ``correlated_with``, and ``informed`` (``se_log <= threshold``). ``attrs``:
    ``condition_number`` of the joint information (correlation scale) and ``rank``."""
    batch = _batch(twin, data)
    space = twin.model.parameter_space
    z = _typical_z(twin, batch)
    with torch.no_grad():
        base = twin.z_full(z, batch.cohort)
        rows = batch.mask & ~batch.censored
        cols = []
        for j in range(len(space)):
            outs = []
            for h in (step, -step):
                zf = base.clone()
                zf[:, j] += h
                g, status = twin.observables_at(space.constrain(zf), batch)
                rows = rows & (status == 0)[:, None]
                outs.append(twin.observation.calibrate(g, batch.observable, batch.cohort))
            cols.append((outs[0] - outs[1]) / (2 * step))
        sd = twin.observation.sd(batch.values[rows], batch.observable[rows])
        J = torch.stack([c[rows] for c in cols], dim=1).double() / sd[:, None].double()
    F = J.T @ J
    names = space.names
    estimated = [n for n in names if twin.roles[n] != "fixed"]
    est_idx = [names.index(n) for n in estimated]

    def joint(idx):
        sub = F[np.ix_(idx, idx)].numpy()
        scale = np.sqrt(np.clip(np.diag(sub), 1e-300, None))
        corr = sub / scale[:, None] / scale[None, :]
        w, v = np.linalg.eigh(corr)
        keep = w > 1e-12 * max(w.max(), 1e-300)
        inv = (v[:, keep] / w[keep]) @ v[:, keep].T / scale[:, None] / scale[None, :]
        se = np.sqrt(np.clip(np.diag(inv), 0, None))
        se[np.diag(sub) <= 1e-300] = np.inf
        if not keep.all():
            null = (v[:, ~keep] ** 2).sum(1) > 1e-3
            se[null] = np.inf
        d = np.sqrt(np.clip(np.diag(inv), 1e-300, None))
        c = inv / d[:, None] / d[None, :]
        np.fill_diagonal(c, 0.0)
        return se, c, float(w.max() / max(w.min(), 1e-300)), int(keep.sum())

    se_est, corr_est, cond, rank = joint(est_idx) if est_idx else (np.array([]), np.zeros((0, 0)), math.nan, 0)
    out = []
    for n in names:
        j = names.index(n)
        if n in estimated:
            i = estimated.index(n)
            se, c = se_est[i], corr_est[i]
            others = estimated
        else:
            idx = est_idx + [j]
            s, cc, _, _ = joint(idx)
            se, c = s[-1], cc[-1]
            others = estimated + [n]
        k = int(np.argmax(np.abs(c))) if len(c) else 0
        out.append(dict(parameter=n, role=twin.roles[n], se_log=float(se),
                        max_correlation=float(c[k]) if len(c) else math.nan,
                        correlated_with=others[k] if len(c) else "", informed=bool(se <= threshold)))
    table = pd.DataFrame(out)
    table.attrs.update(condition_number=cond, rank=rank, n_estimated=len(estimated))
    return table
