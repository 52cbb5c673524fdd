"""Virtual cohorts with known ground truth: the test bed of the library.

:func:`make_virtual_cohort` samples covariates, maps them to per-subject parameters through declared
log-linear (and one nonlinear) effects plus random effects, simulates every cohort in one batched
:func:`hybridtwin.simulate` call with per-subject dose schedules, samples irregular observation times, adds
a declared noise model, applies an LLOQ and returns a validated :class:`hybridtwin.data.CohortData` that
also carries ``true_parameters``, ``trajectories`` (noise-free) and ``meta["ground_truth"]``.

Cohorts differ in covariate distribution (age range, baseline marker), regimen (e.g. the boost day of
``vaccine_asc``), sampling density and assay scale/offset, and optionally in parameters set per cohort as
fixed effects (``cohort_parameters``, e.g. the inoculum ``V0`` of a challenge study). All settings and their per-model defaults are
described in :class:`~hybridtwin.virtual.config.VirtualCohortConfig`.

Example
-------
>>> from hybridtwin.virtual.cohort import make_virtual_cohort
>>> data = make_virtual_cohort("vaccine_asc", n_subjects=30, n_cohorts=3, seed=0)
>>> data.report["n_subjects"], data.cohorts
(30, ['cohort_1', 'cohort_2', 'cohort_3'])
>>> gt = data.meta["ground_truth"]
>>> gt["effects"].query("parameter == 'beta_S' and term == 'female'")["coefficient"].item()
0.2
>>> data.true_parameters.shape[0], list(data.trajectories.columns)
(30, ['subject_id', 'time', 'observable', 'value', 'cohort'])
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd

from ..data import CohortData, validate
from ..simulation import simulate
from .config import VirtualCohortConfig
from .defaults import MARKER_AGE_SLOPE, MARKER_REFERENCE, MARKER_SD, one_torch_thread
from .io import ground_truth, read_ground_truth, write_cohort_tables

__all__ = ["make_virtual_cohort", "VirtualCohortConfig", "write_cohort_tables", "read_ground_truth"]

LOG10_FLOOR = 1e-30


def make_virtual_cohort(model, n_subjects: int | None = None, n_cohorts: int = 3, seed: int = 0,
                        **options) -> CohortData:
    """Simulate a multi-cohort virtual data set whose ground truth is known and returned.

    Parameters
    ----------
    model: a built-in model name, a :class:`~hybridtwin.Model`, or a ready :class:`VirtualCohortConfig`
        (then give nothing else).
    n_subjects, n_cohorts, seed: size, number of cohorts and random seed (same seed: identical tables).
    **options: any field of :class:`VirtualCohortConfig` (e.g. ``noise_sd={"log10_Ab": 0.3}``,
        ``regimens=...``, ``obs_per_subject=((4, 6),) * 3``), plus ``nonlinear=False`` (drop the nonlinear
        covariate effect) and ``treated_cohort=i`` (the model's default treatment in cohort ``i``).

    Returns
    -------
    A validated :class:`~hybridtwin.data.CohortData` with ``observations`` (``cohort``, ``lloq``,
    ``censored`` filled), ``doses``, ``covariates`` (``age, sex, baseline_marker, noise_1..``),
    ``true_parameters`` (one row per subject, every model parameter: pass it to :func:`hybridtwin.simulate`
    to reproduce ``trajectories``), ``trajectories`` (noise-free values of the observables at the observation
    times, row-aligned with ``observations``) and ``meta["ground_truth"]``: ``population``, ``omega``,
    ``cohort_parameters`` (``{parameter: {cohort: value}}``), ``effects`` (DataFrame parameter/term/coefficient),
    ``terms`` (definitions), ``features`` (the terms per subject), ``random_effects`` (eta per subject),
    ``noise``, ``assay`` (scale/offset/LLOQ per cohort and observable), ``regimens``, ``sampling``,
    ``covariate_distributions``, ``observation_noise`` (eps and the noisy value before censoring, row-aligned
    with ``observations``), ``n_clipped``, ``config``.

    Raises ``ValueError`` for unknown or contradictory options.

    Example
    -------
    >>> data = make_virtual_cohort("baccam2006", n_subjects=6, n_cohorts=2, seed=1, treated_cohort=1)
    >>> sorted(data.doses["target"].unique()), data.meta["ground_truth"]["noise"]["sd"]
    (['antiviral'], {'log10_V': 0.25})
    """
    if isinstance(model, VirtualCohortConfig):
        if n_subjects is not None or options or n_cohorts != 3 or seed != 0:
            raise ValueError("make_virtual_cohort(config) takes no other arguments; use config.replace(...) to change it")
        cfg = model
    else:
        if n_subjects is None:
            raise ValueError("make_virtual_cohort needs n_subjects (the number of virtual subjects)")
        cfg = VirtualCohortConfig.default(model, n_subjects, n_cohorts, seed, **options)
    return _generate(cfg)


# -- the pieces ------------------------------------------------------------------------------------------------
def _subject_ids(n: int) -> np.ndarray:
    width = max(4, len(str(n)))
    return np.array([f"S{i + 1:0{width}d}" for i in range(n)], dtype=object)


def _covariates(cfg: VirtualCohortConfig, cohort: np.ndarray, rng, rng_missing) -> tuple[pd.DataFrame, dict]:
    n, J = len(cohort), cfg.n_noise_features
    u_age, u_sex = rng.random(n), rng.random(n)
    z_marker, noise = rng.standard_normal(n), rng.standard_normal((n, J))
    lo = np.array([a for a, _ in cfg.age_ranges])[cohort]
    hi = np.array([b for _, b in cfg.age_ranges])[cohort]
    age = lo + (hi - lo) * u_age
    female = u_sex < np.asarray(cfg.female_fraction)[cohort]
    log_marker = (MARKER_REFERENCE + MARKER_AGE_SLOPE * (age - 50.0) / 10.0 + np.asarray(cfg.marker_shift)[cohort]
                  + MARKER_SD * z_marker)
    true = {"age": age, "sex": np.where(female, "F", "M").astype(object), "baseline_marker": 10.0 ** log_marker}
    for j in range(J):
        true[f"noise_{j + 1}"] = noise[:, j]
    features = {"age_decade": (age - 50.0) / 10.0, "female": female.astype(float),
                "log_marker": log_marker - MARKER_REFERENCE, "age_over_60": np.maximum(age - 60.0, 0.0) / 10.0}
    features.update({f"noise_{j + 1}": noise[:, j] for j in range(J)})
    shown = dict(true)
    hideable = ["baseline_marker"] + [f"noise_{j + 1}" for j in range(J)]
    hide = rng_missing.random((n, len(hideable))) < cfg.missing_covariate_fraction
    for k, col in enumerate(hideable):
        shown[col] = np.where(hide[:, k], np.nan, true[col])
    return pd.DataFrame(shown), features


def _parameters(cfg: VirtualCohortConfig, features: dict, cohort: np.ndarray, rng) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Per-subject values: model defaults, cohort values (fixed effects), then the varied parameters."""
    m = cfg.resolved_model
    names = list(cfg.omega)  # the varied parameters
    n = len(cohort)
    eta = rng.standard_normal((n, len(names))) * np.array([cfg.omega[p] for p in names])
    table = {p.name: np.full(n, p.default) for p in m.parameter_space}
    for name, values in cfg.cohort_parameters.items():
        table[name] = np.asarray(values, dtype=float)[cohort]
    clipped = 0
    for j, name in enumerate(names):
        # log of the typical value: the population's, or this subject's cohort's
        log_typical = math.log(cfg.population[name]) if name in cfg.population else np.log(table[name])
        logp = log_typical + eta[:, j]
        for prm, term, beta in cfg.effects:
            if prm == name:
                logp = logp + beta * features[term]
        value = np.exp(logp)
        spec = m.parameter_space[name]
        lo = spec.lower if spec.lower is not None else -np.inf
        hi = spec.upper if spec.upper is not None else np.inf
        out = (value < lo) | (value > hi)
        clipped += int(out.sum())
        table[name] = np.clip(value, lo, hi)
    return pd.DataFrame(table), pd.DataFrame(eta, columns=names), clipped


def _doses(cfg: VirtualCohortConfig, ids: np.ndarray, cohort: np.ndarray) -> pd.DataFrame:
    rows = []
    for k, reg in enumerate(cfg.regimens):
        members = ids[cohort == k]
        for d in reg:
            rows.append(pd.DataFrame({"subject_id": members, "time": float(d.time), "amount": float(d.amount),
                                      "target": d.target, "duration": float(d.duration),
                                      "interval": np.nan if d.interval is None else float(d.interval),
                                      "additional": int(d.additional)}))
    cols = ["subject_id", "time", "amount", "target", "duration", "interval", "additional"]
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("subject_id", "target") else float) for c in cols})
    return pd.concat(rows, ignore_index=True).sort_values(["subject_id", "time"], kind="stable").reset_index(drop=True)


def _sampling_indices(cfg: VirtualCohortConfig, cohort: np.ndarray, rng) -> list[np.ndarray]:
    """Per subject: sorted, distinct indices into the grid ``t_first + g * time_resolution``."""
    span = cfg.horizon - cfg.t_first
    n_grid = int(math.floor(span / cfg.time_resolution + 1e-9)) + 1
    lo = np.array([a for a, _ in cfg.obs_per_subject])[cohort]
    hi = np.array([b for _, b in cfg.obs_per_subject])[cohort]
    counts = rng.integers(lo, hi + 1)
    first = 1 if cfg.baseline_sample else 0
    out = []
    for n_i in counts:
        m_i = int(n_i) - first
        u = (np.arange(m_i) + rng.random(m_i)) / max(m_i, 1)
        g = np.rint(u ** cfg.sampling_power * span / cfg.time_resolution).astype(np.int64)
        g = np.unique(np.clip(g, first, n_grid - 1))
        out.append(np.concatenate([[0], g]) if first else g)
    return out


def _grid_times(cfg: VirtualCohortConfig, g: np.ndarray) -> np.ndarray:
    decimals = max(0, 10 - int(math.floor(math.log10(cfg.time_resolution))))
    return np.round(cfg.t_first + g * cfg.time_resolution, min(decimals, 12))


def _generate(cfg: VirtualCohortConfig) -> CohortData:
    m = cfg.resolved_model
    rng_cov, rng_eta, rng_time, rng_noise, rng_missing = (np.random.default_rng(s)
                                                          for s in np.random.SeedSequence(cfg.seed).spawn(5))
    n = cfg.n_subjects
    ids = _subject_ids(n)
    cohort = np.repeat(np.arange(cfg.n_cohorts), cfg.cohort_sizes)
    covariates, features = _covariates(cfg, cohort, rng_cov, rng_missing)
    covariates.insert(0, "subject_id", ids)
    params, eta, n_clipped = _parameters(cfg, features, cohort, rng_eta)
    params.insert(0, "subject_id", ids)
    doses = _doses(cfg, ids, cohort)
    samples = _sampling_indices(cfg, cohort, rng_time)

    # one batched simulation per cohort on the union of its subjects' sampling times
    parts, status = [], {}
    n_obs = len(cfg.observables)
    for k in range(cfg.n_cohorts):
        members = np.nonzero(cohort == k)[0]
        union = np.unique(np.concatenate([samples[i] for i in members]))
        times = _grid_times(cfg, union)
        with warnings.catch_warnings(), one_torch_thread():
            warnings.simplefilter("ignore", RuntimeWarning)  # failures are reported below
            sim = simulate(m, times, params=params.iloc[members].reset_index(drop=True),
                           doses=doses[doses["subject_id"].isin(set(ids[members]))], rtol=cfg.rtol)
        status.update(sim.attrs["status"])
        values = np.stack([sim[o].to_numpy() for o in cfg.observables], axis=1)  # (n_k * T, n_obs)
        counts = np.array([len(samples[i]) for i in members])
        local = np.repeat(np.arange(len(members)), counts)
        pos = np.searchsorted(union, np.concatenate([samples[i] for i in members]))
        rows = local * len(times) + pos
        parts.append(pd.DataFrame({"subject_id": np.repeat(ids[members[local]], n_obs),
                                   "time": np.repeat(times[pos], n_obs),
                                   "observable": np.tile(np.asarray(cfg.observables, dtype=object), len(rows)),
                                   "true": values[rows].reshape(-1), "k": k}))
    long = pd.concat(parts, ignore_index=True)
    long = long.sort_values(["subject_id", "time", "observable"], kind="stable").reset_index(drop=True)

    failed = sorted(s for s, st in status.items() if st != "ok")
    if failed:
        warnings.warn(f"{len(failed)} virtual subject(s) failed to integrate and are excluded: {failed[:10]}",
                      RuntimeWarning, stacklevel=3)
        keep = ~long["subject_id"].isin(failed)
        long = long[keep].reset_index(drop=True)

    # observation model: y = scale_c * (f + eps) + offset_c on the log10 scale, then the LLOQ
    o = long["observable"].to_numpy()
    linear = np.array([cfg.value_scales[x] == "linear" for x in o])
    truth = long["true"].to_numpy(dtype=float)
    f = np.where(linear, np.log10(np.clip(truth, LOG10_FLOOR, None)), truth)
    sd = np.array([cfg.noise_sd[x] for x in o])
    eps = rng_noise.standard_normal(len(long)) * sd
    k = long["k"].to_numpy()
    y = np.asarray(cfg.assay_scale)[k] * (f + eps) + np.asarray(cfg.assay_offset)[k]
    reported = np.where(linear, 10.0 ** y, y)
    lloq = np.array([np.nan if cfg.lloq[x] is None else cfg.lloq[x] for x in o], dtype=float)
    censored = ~np.isnan(lloq) & (reported < lloq)
    names = np.asarray(cfg.cohort_names, dtype=object)
    observations = pd.DataFrame({"subject_id": long["subject_id"], "time": long["time"], "observable": o,
                                 "value": np.where(censored, lloq, reported), "cohort": names[k], "lloq": lloq,
                                 "censored": censored})
    keep_ids = ~pd.Series(ids).isin(failed).to_numpy()
    data = validate(observations, doses[doses["subject_id"].isin(set(ids[keep_ids]))],
                    covariates[keep_ids].reset_index(drop=True), model=m)

    trajectories = pd.DataFrame({"subject_id": long["subject_id"], "time": long["time"], "observable": o,
                                 "value": truth, "cohort": names[k]})
    noise = pd.DataFrame({"subject_id": long["subject_id"], "time": long["time"], "observable": o, "epsilon": eps,
                          "noisy_value": reported})
    truth_ = ground_truth(cfg, ids, cohort, features, eta, n_clipped, noise, status, failed)
    report = {"source": f"make_virtual_cohort({m.name!r}, n_subjects={n}, n_cohorts={cfg.n_cohorts}, seed={cfg.seed})"}
    if failed:
        report["excluded"] = {"solver failure (subjects)": len(failed)}
    data = data.with_report(**report)
    return replace(data, true_parameters=params[keep_ids].reset_index(drop=True), trajectories=trajectories,
                   meta={**data.meta, "ground_truth": truth_, "source": report["source"]})


