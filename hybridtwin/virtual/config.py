"""Configuration of a virtual cohort: :class:`VirtualCohortConfig` (defaults: ``virtual_defaults``).

Every setting of :func:`hybridtwin.virtual.make_virtual_cohort` lives in one frozen, validated dataclass.
:meth:`VirtualCohortConfig.default` fills in good defaults for a model (vaccine regimens for
``vaccine_asc``, an untreated infection for ``baccam2006``, a generic design for every other model) and
lets any field be overridden by keyword; unknown or contradictory settings raise ``ValueError``.

Covariate terms that effects may use (``x`` in ``log p_i = log p_pop + sum_k beta_k x_ik + eta_i``):

==============  ==========================================================  =========
term            definition                                                  kind
==============  ==========================================================  =========
``age_decade``  ``(age - 50) / 10``                                         linear
``female``      ``1`` if ``sex == "F"`` else ``0``                          linear
``log_marker``  ``log10(baseline_marker) - 2``                              linear
``noise_j``     the irrelevant feature ``noise_j`` itself                   linear
``age_over_60`` ``max(age - 60, 0) / 10`` (a hinge: faster ageing after 60)  nonlinear
==============  ==========================================================  =========

Example
-------
>>> from hybridtwin.virtual.config import VirtualCohortConfig
>>> cfg = VirtualCohortConfig.default("vaccine_asc", n_subjects=30)
>>> [tuple(d.time for d in regimen) for regimen in cfg.regimens]
[(0.0, 21.0), (0.0, 28.0), (0.0, 35.0)]
>>> VirtualCohortConfig.default("vaccine_asc", n_subjects=30, noise_sd={"log10_Ab": -1.0})
Traceback (most recent call last):
...
ValueError: noise_sd['log10_Ab'] must be a finite number >= 0, got -1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from .. import models as _models
from ..dosing import Dose
from ..models.base import Model
from ..config import check_integer, check_keys, check_mapping, check_number
from .defaults import (NONLINEAR_TERMS, TERMS, VALUE_SCALES, _per_cohort, effect_triples, model_defaults,
                               pilot_lloq, treatment)


@dataclass(frozen=True)
class VirtualCohortConfig:
    """Everything that defines a virtual cohort (build it with :meth:`default`).

    Subjects and cohorts: ``model`` (name or :class:`~hybridtwin.Model`), ``n_subjects``, ``n_cohorts``,
    ``seed``, ``cohort_names``, ``cohort_fractions`` (None: equal sizes).

    Parameters: ``population`` (typical value of each varied parameter for the reference subject: age 50,
    male, ``log_marker`` 0, noise features 0; other parameters keep the model's defaults), ``omega`` (sd of
    the random effect ``eta ~ N(0, omega^2)`` on the natural-log scale), ``effects`` (``(parameter, term,
    beta)`` triples, terms listed in this module's docstring); ``log p_i = log p_pop + sum beta x + eta``.
    A parameter is *varied* when it has an ``omega`` entry or an effect; ``omega`` may name any subset of
    the parameters (a varied parameter without one gets ``omega = 0``: effects only), and a parameter that
    is not varied takes its typical value exactly in every subject. ``population`` may name varied
    parameters only (:meth:`default` fills in the model's default for each one not given).

    ``cohort_parameters`` (``{parameter: (value in cohort 1, value in cohort 2, ...)}``, default empty) sets
    parameters that differ by cohort as fixed effects (e.g. the inoculum ``V0`` of a challenge study): for a
    subject of cohort ``c`` the value replaces the model default and is the typical value ``p_pop,c``, so a
    parameter that is also varied gets ``log p_i = log p_pop,c + sum beta x + eta`` and one that is not takes
    ``p_pop,c`` exactly. A parameter's typical value comes from one place, so ``population`` may not name a
    parameter of ``cohort_parameters`` (``ValueError``). Values must be finite, inside the parameter's bounds
    and, for a varied parameter, > 0.

    Covariates, per cohort: ``age_ranges`` (uniform), ``female_fraction``, ``marker_shift`` (added to the mean
    of ``log10(baseline_marker) = 2 - 0.1 (age - 50)/10 + shift + N(0, 0.3^2)``); ``n_noise_features``
    irrelevant N(0, 1) features; ``missing_covariate_fraction`` of ``baseline_marker`` and noise-feature
    values are hidden (set to NaN) in the covariate table (the true values still act).

    Regimens and sampling: ``regimens`` (one tuple of :class:`~hybridtwin.Dose` per cohort), observations in
    ``[t_first, horizon]``: ``baseline_sample`` adds ``t_first``; the other times are stratified with
    jitter on a ``u ** sampling_power`` warp of the window and rounded to ``time_resolution``; the number
    per subject is uniform on ``obs_per_subject[cohort] = (min, max)``.

    Observation model: for each of ``observables`` (model observables or states), ``f`` is its true value on
    the log10 scale (``value_scales[o] == "linear"``: ``f = log10(value)``; ``"log10"``: the value itself);
    the assay of cohort ``c`` reports ``y = assay_scale[c] * (f + eps) + assay_offset[c]`` with
    ``eps ~ N(0, noise_sd[o]^2)`` (on the log10 scale, i.e. proportional noise for linear values), as ``y``
    (log10) or ``10**y`` (linear); values below ``lloq[o]`` (on the reported scale; None: no limit) are
    censored at the limit. ``rtol`` is the solver tolerance.
    """

    model: Any
    n_subjects: int
    n_cohorts: int
    seed: int
    cohort_names: tuple
    cohort_fractions: tuple | None
    population: Mapping[str, float]
    omega: Mapping[str, float]
    effects: tuple
    age_ranges: tuple
    female_fraction: tuple
    marker_shift: tuple
    n_noise_features: int
    missing_covariate_fraction: float
    regimens: tuple
    horizon: float
    t_first: float
    baseline_sample: bool
    obs_per_subject: tuple
    sampling_power: float
    time_resolution: float
    observables: tuple
    value_scales: Mapping[str, str]
    noise_sd: Mapping[str, float]
    lloq: Mapping[str, float | None]
    assay_scale: tuple
    assay_offset: tuple
    rtol: float = 1e-7
    cohort_parameters: Mapping[str, tuple] = field(default_factory=dict)

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def default(cls, model, n_subjects: int, n_cohorts: int = 3, seed: int = 0, **options) -> "VirtualCohortConfig":
        """The defaults for ``model``, with any field overridden by keyword.

        Two extra switches: ``nonlinear=False`` drops effects of nonlinear terms; ``treated_cohort=i`` gives
        cohort ``i`` the model's default treatment (``baccam2006``: antiviral twice daily, days 1-5.5).
        """
        m = _models.get(model)
        n_cohorts = check_integer(n_cohorts, "n_cohorts", 1)
        valid = [f.name for f in fields(cls) if f.name not in ("model", "n_subjects", "n_cohorts", "seed")]
        check_keys(options, valid + ["nonlinear", "treated_cohort"], "the virtual-cohort options")
        nonlinear = options.pop("nonlinear", True)
        treated = options.pop("treated_cohort", None)
        d = model_defaults(m, n_cohorts)
        if "effects" in options:
            options["effects"] = effect_triples(options["effects"])
        if "omega" in options and "effects" not in options:
            keep = set(check_mapping(options["omega"], "omega"))
            d["effects"] = tuple(e for e in d["effects"] if e[0] in keep)
        if "observables" in options:
            obs = options["observables"]
            obs = (obs,) if isinstance(obs, str) else tuple(obs)
            known = set(m.observable_names)
            d["value_scales"] = {o: ("log10" if o in known and o.lower().startswith("log") else "linear") for o in obs}
            d["noise_sd"] = {o: d["noise_sd"].get(o, 0.15) for o in obs}
            d["lloq"] = {o: v for o, v in d.get("lloq", {}).items() if o in obs}
        d.update(options)
        if not isinstance(nonlinear, bool):
            raise ValueError(f"nonlinear must be True or False, got {nonlinear!r}")
        if not nonlinear:
            d["effects"] = tuple(e for e in d["effects"] if e[1] not in NONLINEAR_TERMS)
        if treated is not None:
            if "regimens" in options:
                raise ValueError("give either treated_cohort or regimens, not both")
            t = treatment(m)
            if t is None:
                raise ValueError(f"model {m.name!r} has no default treatment; pass regimens=(one tuple of Dose per "
                                 "cohort) instead of treated_cohort")
            i = check_integer(treated, "treated_cohort", 0)
            if i >= n_cohorts:
                raise ValueError(f"treated_cohort={i} is out of range for n_cohorts={n_cohorts} (0-based)")
            d["regimens"] = tuple(tuple(r) + (t if j == i else ()) for j, r in enumerate(d["regimens"]))
        # typical values: the model's defaults for every varied parameter, updated by ``population``
        omega = check_mapping(d["omega"], "omega")
        varied = list(omega) + [e[0] for e in d["effects"] if isinstance(e, tuple) and e and e[0] not in omega]
        per_cohort = check_mapping(options.get("cohort_parameters", {}), "cohort_parameters")
        d["population"] = {n: m.parameter_space[n].default for n in varied
                           if n in m.parameter_names and n not in per_cohort}
        d["population"].update(check_mapping(options.get("population", {}), "population"))
        given_lloq = "lloq" in options
        d["lloq"] = d.get("lloq") or {}
        cfg = cls(model=model, n_subjects=n_subjects, n_cohorts=n_cohorts, seed=seed, **d)
        todo = [o for o in cfg.observables if cfg.lloq[o] is None]
        if todo and not given_lloq:  # generic default: from a pilot simulation of the typical subject
            cfg = cfg.replace(lloq={**cfg.lloq, **pilot_lloq(cfg, todo)})
        return cfg

    def __post_init__(self) -> None:
        m = self.resolved_model
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        K = check_integer(self.n_cohorts, "n_cohorts", 1)
        n = check_integer(self.n_subjects, "n_subjects", 1)
        if n < K:
            raise ValueError(f"n_subjects={n} is smaller than n_cohorts={K}; every cohort needs a subject")
        check_integer(self.seed, "seed", 0)
        names = _per_cohort(self.cohort_names, K, "cohort_names", str)
        if len(set(names)) != K:
            raise ValueError(f"cohort_names must be distinct, got {names}")
        set_("cohort_names", names)
        if self.cohort_fractions is not None:
            fr = _per_cohort(self.cohort_fractions, K, "cohort_fractions")
            if any(not math.isfinite(f) or f <= 0 for f in fr):
                raise ValueError(f"cohort_fractions must be positive, got {fr}")
            sizes = self._sizes(fr)
            if min(sizes) < 1:
                raise ValueError(f"cohort_fractions {fr} leave a cohort without subjects for n_subjects={n}")
            set_("cohort_fractions", fr)
        self._check_parameters(m)
        ages = _per_cohort(self.age_ranges, K, "age_ranges", tuple)
        for lo_hi in ages:
            if len(lo_hi) != 2 or \
                    not 0 <= check_number(lo_hi[0], "age range") < check_number(lo_hi[1], "age range") <= 120:
                raise ValueError(f"age_ranges entries must be (low, high) with 0 <= low < high <= 120, got {lo_hi!r}")
        set_("age_ranges", tuple((float(a), float(b)) for a, b in ages))
        ff = _per_cohort(self.female_fraction, K, "female_fraction")
        if not all(0.0 <= f <= 1.0 for f in ff):
            raise ValueError(f"female_fraction entries must lie in [0, 1], got {ff}")
        set_("female_fraction", ff)
        set_("marker_shift", tuple(check_number(v, "marker_shift")
                                   for v in _per_cohort(self.marker_shift, K, "marker_shift")))
        set_("n_noise_features", check_integer(self.n_noise_features, "n_noise_features", 0))
        miss = check_number(self.missing_covariate_fraction, "missing_covariate_fraction", 0.0)
        if miss >= 1.0:
            raise ValueError(f"missing_covariate_fraction must be in [0, 1), got {miss}")
        self._check_design(m, K)
        self._check_observation_model(m, K)
        check_number(self.rtol, "rtol", 0.0, strict=True)

    @property
    def resolved_model(self) -> Model:
        return _models.get(self.model)

    @property
    def terms(self) -> dict[str, str]:
        """Definitions of the covariate terms available to effects."""
        extra = {f"noise_{j + 1}": f"noise_{j + 1}" for j in range(self.n_noise_features)}
        return {**TERMS, **extra}

    def _sizes(self, fractions=None) -> list[int]:
        K, n = self.n_cohorts, self.n_subjects
        if fractions is None:
            return [n // K + (k < n % K) for k in range(K)]
        w = np.asarray(fractions, dtype=float) / float(np.sum(fractions))
        sizes = np.floor(w * n).astype(int)
        for k in np.argsort(-(w * n - sizes), kind="stable")[: n - int(sizes.sum())]:
            sizes[k] += 1
        return sizes.tolist()

    @property
    def cohort_sizes(self) -> list[int]:
        return self._sizes(self.cohort_fractions)

    def _check_parameters(self, m: Model) -> None:
        space = m.parameter_space
        pop = check_mapping(self.population, "population")
        omega = check_mapping(self.omega, "omega")
        clean = []
        for e in effect_triples(self.effects):
            if not (isinstance(e, (tuple, list)) and len(e) == 3):
                raise ValueError(f"effects entries must be (parameter, term, coefficient) triples, got {e!r}")
            clean.append((str(e[0]), str(e[1]), check_number(e[2], f"effect coefficient of {e[1]!r} on {e[0]!r}")))
        pairs = [(p, t) for p, t, _ in clean]
        dup = sorted({x for x in pairs if pairs.count(x) > 1})
        if dup:
            raise ValueError(f"effects list the same (parameter, term) more than once: {dup}")
        for what, names in (("population", pop), ("omega", omega), ("effects", [p for p, _, _ in clean])):
            space.check_names(list(names), f" in {what} of model {m.name!r}")
        terms = self.terms
        for p, t, _ in clean:
            if t not in terms:
                raise ValueError(f"effect on {p!r} uses unknown covariate term {t!r}; terms: {', '.join(terms)}")
        varied = set(omega) | {p for p, _, _ in clean}
        per_cohort = self._check_cohort_parameters(m, varied)
        both = sorted(set(pop) & set(per_cohort))
        if both:
            raise ValueError(f"population and cohort_parameters both give {both}; a parameter's typical value "
                             "comes from one place: drop it from population (the cohort values are its typical "
                             "value in each cohort)")
        missing = sorted(varied - set(pop) - set(per_cohort))
        if missing:
            raise ValueError(f"population has no typical value for varied parameter(s) {missing}")
        for name in sorted(set(pop) - varied):
            raise ValueError(f"population gives {name!r}, which has no omega and no effect; add it to omega "
                             "(0 for no random effect), drop it, or give it for every cohort in cohort_parameters")
        for name, v in pop.items():
            v = check_number(v, f"population[{name!r}]", 0.0, strict=True)
            prm = space[name]
            if (prm.lower is not None and v < prm.lower) or (prm.upper is not None and v > prm.upper):
                raise ValueError(f"population[{name!r}] = {v:g} lies outside the parameter's bounds "
                                 f"({prm.lower}, {prm.upper})")
            pop[name] = v
        for name, v in omega.items():
            omega[name] = check_number(v, f"omega[{name!r}]", 0.0)
        for name in varied - set(omega):
            omega[name] = 0.0
        order = list(pop) + [k for k in per_cohort if k in varied]  # the columns of eta
        object.__setattr__(self, "population", MappingProxyType(pop))
        object.__setattr__(self, "omega", MappingProxyType({k: omega[k] for k in order}))
        object.__setattr__(self, "effects", tuple(clean))
        object.__setattr__(self, "cohort_parameters", MappingProxyType(per_cohort))

    def _check_cohort_parameters(self, m: Model, varied: set) -> dict[str, tuple]:
        """``{name: one value per cohort}``: known names, finite values inside the bounds (> 0 if varied)."""
        space, K = m.parameter_space, self.n_cohorts
        given = check_mapping(self.cohort_parameters, "cohort_parameters")
        space.check_names(list(given), f" in cohort_parameters of model {m.name!r}")
        out = {}
        for name, values in given.items():
            what = f"cohort_parameters[{name!r}]"
            values = _per_cohort(values, K, what, lambda v: v)
            values = tuple(check_number(v, f"{what}[{k}]", 0.0 if name in varied else None, strict=True)
                           for k, v in enumerate(values))
            prm = space[name]
            for k, v in enumerate(values):
                if (prm.lower is not None and v < prm.lower) or (prm.upper is not None and v > prm.upper):
                    raise ValueError(f"{what}[{k}] = {v:g} (cohort {self.cohort_names[k]!r}) lies outside the "
                                     f"parameter's bounds ({prm.lower}, {prm.upper})")
            out[str(name)] = values
        return out

    def _check_design(self, m: Model, K: int) -> None:
        regs = _per_cohort(self.regimens, K, "regimens", tuple)
        for i, reg in enumerate(regs):
            for d in reg:
                if not isinstance(d, Dose):
                    raise ValueError(f"regimens[{i}] must hold hybridtwin.Dose objects, got {d!r}")
                if d.target not in m.interventions:
                    raise ValueError(f"regimens[{i}]: dose target {d.target!r} is not known to model {m.name!r}; "
                                     f"targets: {', '.join(m.interventions)}")
        object.__setattr__(self, "regimens", regs)
        t0 = check_number(self.t_first, "t_first", 0.0)
        horizon = check_number(self.horizon, "horizon", t0, strict=True)
        res = check_number(self.time_resolution, "time_resolution", 0.0, strict=True)
        if not isinstance(self.baseline_sample, bool):
            raise ValueError(f"baseline_sample must be True or False, got {self.baseline_sample!r}")
        check_number(self.sampling_power, "sampling_power", 0.0, strict=True)
        n_grid = int(math.floor((horizon - t0) / res + 1e-9)) + 1
        dens = _per_cohort(self.obs_per_subject, K, "obs_per_subject", tuple)
        for lo_hi in dens:
            if (len(lo_hi) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in lo_hi)
                    or not 1 <= lo_hi[0] <= lo_hi[1]):
                raise ValueError(f"obs_per_subject entries must be integer (min, max) with 1 <= min <= max, got {lo_hi!r}")
            if lo_hi[1] > n_grid // 2:
                raise ValueError(f"obs_per_subject max {lo_hi[1]} is too many for the {n_grid} sampling times of "
                                 f"[{t0:g}, {horizon:g}] at time_resolution={res:g}; use a finer resolution")
        object.__setattr__(self, "obs_per_subject", tuple((int(a), int(b)) for a, b in dens))
        object.__setattr__(self, "horizon", horizon)
        object.__setattr__(self, "t_first", t0)
        object.__setattr__(self, "time_resolution", res)

    def _check_observation_model(self, m: Model, K: int) -> None:
        obs = self.observables
        if isinstance(obs, str) or not obs:
            raise ValueError(f"observables must be a non-empty sequence of names, got {obs!r}")
        obs = tuple(str(o) for o in obs)
        known = m.observable_names + m.all_state_names
        bad = [o for o in obs if o not in known]
        if bad or len(set(obs)) != len(obs):
            raise ValueError(f"observables {list(obs)}: unknown or repeated {bad or 'names'}; model {m.name!r} "
                             f"has observables {m.observable_names} and states {m.all_state_names}")
        scales, sd, lloq = (check_mapping(x, w) for x, w in ((self.value_scales, "value_scales"),
                                                             (self.noise_sd, "noise_sd"), (self.lloq, "lloq")))
        for what, mp in (("value_scales", scales), ("noise_sd", sd), ("lloq", lloq)):
            extra = sorted(set(mp) - set(obs))
            if extra:
                raise ValueError(f"{what} names {extra}, which are not among the observables {list(obs)}")
        for o in obs:
            if scales.get(o) not in VALUE_SCALES:
                raise ValueError(f"value_scales[{o!r}] must be one of {VALUE_SCALES}, got {scales.get(o)!r}")
            if o not in sd:
                raise ValueError(f"noise_sd has no value for observable {o!r}")
            sd[o] = check_number(sd[o], f"noise_sd[{o!r}]", 0.0)
            limit = lloq.get(o)
            if limit is not None:
                lloq[o] = check_number(limit, f"lloq[{o!r}]", 0.0 if scales[o] == "linear" else None,
                                  strict=scales[o] == "linear")
            else:
                lloq[o] = None
        object.__setattr__(self, "observables", obs)
        object.__setattr__(self, "value_scales", MappingProxyType({o: scales[o] for o in obs}))
        object.__setattr__(self, "noise_sd", MappingProxyType({o: sd[o] for o in obs}))
        object.__setattr__(self, "lloq", MappingProxyType({o: lloq[o] for o in obs}))
        sc = tuple(check_number(v, "assay_scale", 0.0, strict=True)
                   for v in _per_cohort(self.assay_scale, K, "assay_scale"))
        of = tuple(check_number(v, "assay_offset") for v in _per_cohort(self.assay_offset, K, "assay_offset"))
        object.__setattr__(self, "assay_scale", sc)
        object.__setattr__(self, "assay_offset", of)

    # -- export --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain (JSON-friendly) dict of every setting."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "model":
                v = self.resolved_model.name
            elif f.name == "regimens":
                v = [[dict(time=d.time, amount=d.amount, target=d.target, duration=d.duration, interval=d.interval,
                           additional=d.additional) for d in reg] for reg in v]
            elif isinstance(v, Mapping):
                v = dict(v)
            elif isinstance(v, tuple):
                v = [list(x) if isinstance(x, tuple) else x for x in v]
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], model=None) -> "VirtualCohortConfig":
        """The config back from :meth:`to_dict` (also after a JSON round trip, e.g. ``ground_truth.json``'s
        ``config``); ``model`` replaces the stored model name (needed for a model that is not built in)."""
        d = check_keys(check_mapping(d, "config"), cls, "the virtual-cohort config")
        if model is not None:
            d["model"] = model
        if "regimens" in d:
            d["regimens"] = tuple(tuple(x if isinstance(x, Dose) else Dose(**x) for x in reg) for reg in d["regimens"])
        for name in ("cohort_names", "cohort_fractions", "age_ranges", "female_fraction", "marker_shift",
                     "obs_per_subject", "observables", "assay_scale", "assay_offset"):
            if isinstance(d.get(name), list):
                d[name] = tuple(tuple(x) if isinstance(x, list) else x for x in d[name])
        if "cohort_parameters" in d:
            d["cohort_parameters"] = {k: tuple(v) if isinstance(v, list) else v
                                      for k, v in check_mapping(d["cohort_parameters"], "cohort_parameters").items()}
        return cls(**d)

    def replace(self, **changes) -> "VirtualCohortConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)
