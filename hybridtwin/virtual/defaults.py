"""Per-model defaults of virtual cohorts (see :class:`~hybridtwin.virtual.config.VirtualCohortConfig`).

- ``vaccine_asc``: prime at day 0 and a boost at day 21, 28, 35, ... (one boost day per cohort), antibodies
  observed as ``log10_Ab`` over 180 days with a baseline sample, LLOQ 1.5, noise sd 0.15; ``beta_S``,
  ``beta_L``, ``delta_S`` and ``delta_Ab`` vary between subjects.
- ``baccam2006`` / ``baccam2006_tcl``: an untreated infection (``treated_cohort=i`` adds the antiviral in
  cohort ``i``), ``log10_V`` observed on days 0.5-10, LLOQ 0.5 (the published detection limit), noise sd
  0.25; ``beta``, ``delta``, ``p`` and ``c`` vary.
- every other model: its ``patient`` parameters vary (omega <= 0.2, smaller near a bound), its observables
  are observed (or, if it has none, its log-scale states on their natural scale with log-normal noise),
  its example doses are given to every cohort, over its default horizon; noise sd 0.15 (log10) and an
  LLOQ from a pilot simulation of the typical subject.

Across cohorts: age ranges shift upwards, sampling gets sparser (8-12, 5-8, 3-5 observations per
subject, cycling) and assay scale/offset differ (1.0/0.0, 0.9/+0.3, 1.1/-0.2, ...).

>>> from hybridtwin.virtual.defaults import model_defaults
>>> import hybridtwin as ht
>>> model_defaults(ht.models.get("vaccine_asc"), 3)["age_ranges"]
((18.0, 48.0), (36.5, 66.5), (55.0, 85.0))
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Mapping

import numpy as np
import torch

from ..dosing import Dose
from ..models.base import Model

#: the covariate model: log10(baseline_marker) = MARKER_REFERENCE + MARKER_AGE_SLOPE (age - 50)/10 + shift + N(0, MARKER_SD^2)
MARKER_REFERENCE = 2.0
MARKER_AGE_SLOPE = -0.1
MARKER_SD = 0.3

TERMS = {
    "age_decade": "(age - 50) / 10",
    "female": "1 if sex == 'F' else 0",
    "log_marker": "log10(baseline_marker) - 2",
    "age_over_60": "max(age - 60, 0) / 10",
}
NONLINEAR_TERMS = ("age_over_60",)
VALUE_SCALES = ("log10", "linear")
#: per-cohort defaults cycle through these patterns
_SCALES = (1.0, 0.9, 1.1, 0.95, 1.05)
_OFFSETS = (0.0, 0.3, -0.2, 0.15, -0.1)
_DENSITY = ((8, 12), (5, 8), (3, 5))
_MARKER_SHIFT = (0.0, 0.15, -0.15, 0.3, -0.3)


@contextmanager
def one_torch_thread():
    """Run the solver on one intra-op thread, then restore the setting. Its many small tensor operations gain
    nothing from more threads, and on shared CPUs each parallel region can stall (600 vaccine subjects:
    0.8 s on one thread vs 25 s on two while another process kept the 2 CPUs busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def treatment(model: Model) -> tuple[Dose, ...] | None:
    """The default treatment regimen used by ``treated_cohort`` (None: the model has none)."""
    if model.name in ("baccam2006", "baccam2006_tcl"):
        # antiviral (neuraminidase inhibitor) twice daily for 5 days from day 1
        return (Dose(1.0, 1.0, "antiviral", interval=0.5, additional=9),)
    return None


def _margin(model: Model, name: str, value: float) -> float:
    p = model.parameter_space[name]
    lo = math.log(value / p.lower) if p.lower and p.lower > 0 else math.inf
    hi = math.log(p.upper / value) if p.upper is not None and math.isfinite(p.upper) else math.inf
    return min(lo, hi)


def _generic_parameters(model: Model) -> dict[str, Any]:
    """Vary every positive log-scale ``patient`` parameter; put effects on those furthest from their bounds."""
    space = model.parameter_space
    cand = [p.name for p in space if p.role == "patient" and p.transform == "log" and p.default > 0]
    if not cand:
        cand = [p.name for p in space if p.role != "fixed" and p.transform == "log" and p.default > 0][:3]
    margin = {n: _margin(model, n, space[n].default) for n in cand}
    omega = {n: round(min(0.2, margin[n] / 5.0), 3) for n in cand}
    ranked = sorted(cand, key=lambda n: -margin[n])
    effects = []
    if ranked:
        effects += [(ranked[0], "age_decade", -0.1), (ranked[0], "female", 0.1)]
        effects += [(ranked[min(1, len(ranked) - 1)], "log_marker", 0.2)]
        effects += [(ranked[min(2, len(ranked) - 1)], "age_over_60", -0.15)]
    return dict(omega=omega, effects=tuple(effects))


def _observation_defaults(model: Model) -> dict[str, Any]:
    if model.observable_names:
        obs = tuple(model.observable_names)
        scales = {o: "log10" if o.lower().startswith("log") else "linear" for o in obs}
    else:
        obs = tuple(model.log_scale_states or model.state_names)
        scales = {o: "linear" for o in obs}
    return dict(observables=obs, value_scales=scales, noise_sd={o: 0.15 for o in obs})


def pilot_lloq(cfg: "VirtualCohortConfig", observables) -> dict[str, float | None]:
    """Generic LLOQ: 5 % of the way from the lowest to the highest value of the typical subject's observable
    (log10 scale, cohort 1's regimen and cohort parameters) over the observation window, never more than 4
    decades below its peak."""
    from ..simulation import simulate

    model = cfg.resolved_model
    times = np.linspace(cfg.t_first, cfg.horizon, 201)
    typical = {**cfg.population, **{name: values[0] for name, values in cfg.cohort_parameters.items()}}
    with one_torch_thread():
        df = simulate(model, times, params=typical, doses=list(cfg.regimens[0]), rtol=1e-6)
    out: dict[str, float | None] = {}
    for o in observables:
        v = df[o].to_numpy(dtype=float)
        linear = cfg.value_scales[o] == "linear"
        f = np.log10(np.clip(v, 1e-30, None)) if linear else v
        f = f[np.isfinite(f)]
        if f.size == 0:
            out[o] = None
            continue
        lo, hi = float(f.min()), float(f.max())
        level = float(f"{max(lo + 0.05 * (hi - lo), hi - 4.0):.3g}")
        out[o] = float(f"{10.0 ** level:.3g}") if linear else level
    return out


def model_defaults(model: Model, n_cohorts: int) -> dict[str, Any]:
    k = range(n_cohorts)
    horizon = float(model.default_t_end)
    d: dict[str, Any] = dict(
        cohort_names=tuple(f"cohort_{i + 1:0{len(str(n_cohorts))}d}" for i in k),
        cohort_fractions=None,
        age_ranges=_age_ranges(n_cohorts),
        female_fraction=tuple(0.5 for _ in k),
        marker_shift=tuple(_MARKER_SHIFT[i % len(_MARKER_SHIFT)] for i in k),
        n_noise_features=3,
        missing_covariate_fraction=0.0,
        regimens=tuple(tuple(model.example_doses) for _ in k),
        horizon=horizon,
        t_first=0.0,
        baseline_sample=False,
        obs_per_subject=tuple(_DENSITY[i % len(_DENSITY)] for i in k),
        sampling_power=1.0,
        time_resolution=_nice_step(horizon / 400.0),
        assay_scale=tuple(_SCALES[i % len(_SCALES)] for i in k),
        assay_offset=tuple(_OFFSETS[i % len(_OFFSETS)] for i in k),
        rtol=1e-7,
        **_observation_defaults(model),
        **_generic_parameters(model),
    )
    if model.name == "vaccine_asc":
        d.update(
            omega={"beta_S": 0.4, "beta_L": 0.4, "delta_S": 0.2, "delta_Ab": 0.25},
            effects=(("beta_S", "age_decade", -0.15), ("beta_S", "age_over_60", -0.35), ("beta_S", "female", 0.2),
                     ("beta_S", "log_marker", 0.3), ("beta_L", "log_marker", 0.25), ("delta_Ab", "age_decade", 0.08)),
            # prime at day 0, boost at day 21, 28, 35, ... (one boost day per cohort)
            regimens=tuple((Dose(0.0, 1.0, "vaccine"), Dose(21.0 + 7.0 * i, 1.0, "vaccine")) for i in k),
            horizon=180.0, baseline_sample=True, sampling_power=1.5, time_resolution=0.25,
            noise_sd={"log10_Ab": 0.15}, lloq={"log10_Ab": 1.5},
        )
    elif model.name in ("baccam2006", "baccam2006_tcl"):
        d.update(
            omega={"beta": 0.3, "delta": 0.2, "p": 0.3, "c": 0.2},
            effects=(("beta", "log_marker", -0.3), ("beta", "age_over_60", 0.3), ("c", "female", 0.15),
                     ("delta", "age_decade", -0.1)),
            regimens=tuple(() for _ in k),
            t_first=0.5, obs_per_subject=tuple(((6, 10), (4, 7), (3, 5))[i % 3] for i in k),
            time_resolution=0.02, noise_sd={"log10_V": 0.25},
            lloq={"log10_V": 0.5},  # detection limit of Baccam et al. (2006), log10 TCID50/ml
        )
    return d


def _nice_step(x: float) -> float:
    """The largest 1, 2 or 5 times a power of ten that is <= x (the sampling-time grid)."""
    e = 10.0 ** math.floor(math.log10(x))
    return float(max(m for m in (1, 2, 5) if m * e <= x * (1 + 1e-12)) * e)


def _age_ranges(n: int) -> tuple[tuple[float, float], ...]:
    if n == 1:
        return ((18.0, 85.0),)
    return tuple((round(18.0 + 37.0 * i / (n - 1), 1), round(48.0 + 37.0 * i / (n - 1), 1)) for i in range(n))


def effect_triples(effects) -> tuple:
    """``{parameter: {term: beta}}`` or ``[(parameter, term, beta), ...]`` as a tuple of triples (unchecked)."""
    if isinstance(effects, Mapping):
        return tuple((p, t, b) for p, tb in effects.items()
                     for t, b in (tb.items() if isinstance(tb, Mapping) else [(tb, None)]))
    return tuple(tuple(e) if isinstance(e, (tuple, list)) else e for e in effects)


# -- small checks shared with the config ---------------------------------------------------------------
def _per_cohort(value, n: int, name: str, cast=float) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise ValueError(f"{name} must give one entry per cohort (n_cohorts={n}), got {value!r}")
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries but n_cohorts={n}; give one entry per cohort")
    try:
        return tuple(cast(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} entries must be {getattr(cast, '__name__', cast)}s, got {value!r}") from None
