"""HybridTwin: encoder + parameter space + dynamics + observation model + solver, as one ``nn.Module``.

The statistical model is a nonlinear mixed-effects model with amortised variational inference:

- unconstrained patient parameters ``z_i = mu + beta x_i + eta_i``, ``eta_i ~ N(0, diag(omega^2))``: population
  values ``mu``, covariate effects ``beta`` (log-linear for log-transformed parameters) and between-patient
  variability ``omega`` are explicit ``nn.Parameter``s (:meth:`HybridTwin.population_table` reports them);
  parameters declared ``population`` are learned once; ``fixed`` ones stay at their defaults;
- the encoder maps covariates, any number of early observations, the dosing history and the cohort to
  ``q(z_i) = N(mu + beta x_i + dm_i, (omega * exp(dls_i))^2)``: a correction around the population prior;
- the likelihood comes from solving the (hybrid) ODE for reparameterised samples of ``z_i`` and the
  :class:`hybridtwin.observation.ObservationModel` (noise, cohort calibration, M3 censoring);
- the objective is the ELBO: expected log-likelihood minus ``KL(q || prior)``, averaged over subjects.

Training draws, per subject, a random prefix of its observations (all of them with probability
``full_context``; otherwise 0..n of the earliest) as both encoder input and likelihood rows, so the encoder
learns ``q(z | first k observations)`` for every k: exactly what personalising from early data needs.

Example
-------
>>> import hybridtwin as ht
>>> from hybridtwin.twin import HybridTwin, TwinConfig
>>> from hybridtwin.virtual import make_virtual_cohort
>>> data = make_virtual_cohort("vaccine_asc", n_subjects=8, n_cohorts=2, seed=0)
>>> twin = HybridTwin.from_data(TwinConfig(model="vaccine_asc"), data)
>>> batch = twin.dataset(data).batch()
>>> out = twin.elbo(batch, n_samples=2)
>>> sorted(k for k in out if k in ("elbo", "kl", "loglik", "loss"))
['elbo', 'kl', 'loglik', 'loss']
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

import pandas as pd
import torch
from torch import nn

from . import models as _models
from .config import (BlackBoxConfig, ClosureConfig, EncoderConfig, NoiseConfig, check_bool, check_choice,
                     check_integer, check_keys, check_mapping, check_names, check_number, check_positive,
                     check_probability, solver_from_dict, solver_to_dict)
from .data import CohortData, CovariatePreprocessor, SubjectDataset
from .data.dataset import random_prefix_mask
from .data.dataset import Batch
from .neural import MechanisticDynamics, NeuralClosure, NeuralODEDynamics, PatientEncoder
from .losses import normal_kl
from .models import time_offset as _time_offset
from .observation import CALIBRATIONS, ObservationModel
from .solve import SolverConfig, Status, solve

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class TwinConfig:
    """Everything needed to rebuild a twin's architecture (stored in the model card).

    The sections ``closures``, ``black_box``, ``encoder``, ``noise`` and ``solver`` may be given as mappings
    (as YAML/JSON give them) or as the typed objects of :mod:`hybridtwin.config`; they are stored as the typed,
    frozen objects, and every key and value is checked at construction: a typo raises ``ValueError`` naming
    the key and the closest allowed one, before any data or network is built. :meth:`to_dict` writes plain
    lists and dicts again and :meth:`from_dict` reads them back (``TwinConfig.from_dict(c.to_dict()) == c``).

    model: built-in model name. closures: :class:`~hybridtwin.config.ClosureConfig` settings (keyword dicts of
    :class:`NeuralClosure`). black_box: :class:`~hybridtwin.config.BlackBoxConfig` (the options of
    :class:`NeuralODEDynamics`; replaces the mechanism; mutually exclusive with closures). observables: names to
    fit (default: the model's observables). noise: :class:`~hybridtwin.config.NoiseConfig`,
    ``{observable: additive|proportional|combined}``.
    cohort_calibration: observables with a per-cohort assay scale/offset; calibration: which of the two are
    learned (``"scale_offset"``, ``"offset"``, ``"scale"``). covariate_effects: learn ``beta``.
    encoder: :class:`~hybridtwin.config.EncoderConfig`, the PatientEncoder options (hidden, set_dim,
    use_observations, use_doses, use_cohort).
    n_samples: reparameterised samples per subject in the ELBO. full_context: probability that a training
    subject shows all its observations to the encoder. omega_init: initial between-patient SD (unconstrained
    scale). closure_penalty: weight of the closures' regulariser. solver: a
    :class:`~hybridtwin.solve.SolverConfig` or a mapping of its fields (default ``rtol=1e-5, atol=1e-6``).
    dtype: "float64" or "float32". time_scale: divides times fed to the encoder (default: model horizon).
    fixed: extra parameter names to keep fixed; population: patient parameters to treat as population-level.
    per_patient: parameters the model declares population-level (one value for everyone) to estimate per patient
        instead, as random effects with a between-patient SD (e.g. a viral carrying capacity that sets each
        person's peak height); not allowed together with ``fixed``, ``population`` or ``fixed_values``.
    log10_covariates: numeric covariates the preprocessing log10-transforms (e.g. a biomarker concentration).
    covariate_scaling: ``{column: (centre, unit)}`` so a numeric effect is "per ``unit`` above ``centre``"
        (default: per training SD above the training mean; the SD is recorded in the card).
    covariate_reference: ``{column: level}``: the reference level of a categorical covariate (default: the
        most frequent), so effects read as contrasts such as ``sex[F vs M]``.
    covariate_penalty: weight of an L2 (Gaussian-prior) penalty on the covariate effects ``beta``, which shrinks
        effects the data do not support (irrelevant covariates, unidentifiable parameters).
    fixed_values: ``{parameter: value}`` -- parameters fixed at a value of the user's (inside the declared bounds)
        instead of the model default; they are fixed whatever their declared role.
    cohort_effects: parameters whose typical value differs by cohort (a fixed effect per cohort on the
        unconstrained scale, e.g. the inoculum ``V0`` of each challenge group); the first cohort is the reference.
    noise_sd_init: ``{observable: initial noise SD}`` (additive SD, or the proportional coefficient for
        ``proportional`` noise); learn_noise: whether the noise SDs are estimated (False keeps them at the
        initial values).
    miss: ``{observable: initial probability}`` of a **missed sample**, one that reads "not detected" whatever the
        load (a swab without virus; see :mod:`hybridtwin.observation`), estimated with the noise unless
        ``learn_miss`` is False. For data where negatives interleave with positives (daily RT-PCR screening),
        without it the fit can only explain such a negative by a low curve or a large noise SD.
    time_offset: ``None`` (data on the model's clock, t = 0 at infection), or a mapping (``{}`` for the defaults)
        that adds the patient parameter ``t_offset`` -- the time from infection to the data's day 0 -- with
        ``typical`` (default 5.1 days), ``omega`` (between-patient SD on the log scale, default 0.418) and bounds
        ``lower``/``upper`` (0.05 / 30 days); the defaults are the SARS-CoV-2 incubation period (Lauer et al.
        2020), for data timed from symptom onset. By default this population distribution is a known prior
        (each patient's offset is estimated, the distribution is not); ``estimate_population: true`` estimates
        its typical value, SD and covariate effects as well. See :mod:`hybridtwin.models.time_offset`. Data may
        then have negative days (down to ``-upper``).
    """

    model: str
    closures: tuple[ClosureConfig, ...] = ()
    black_box: BlackBoxConfig | None = None
    observables: tuple = ()
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    cohort_calibration: tuple = ()
    calibration: str = "scale_offset"
    covariate_effects: bool = True
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    n_samples: int = 4
    full_context: float = 0.5
    omega_init: float = 0.3
    closure_penalty: float = 1e-3
    solver: SolverConfig = field(default_factory=lambda: SolverConfig(rtol=1e-5, atol=1e-6))
    dtype: str = "float64"
    time_scale: float | None = None
    fixed: tuple = ()
    population: tuple = ()
    log10_covariates: tuple = ()
    covariate_scaling: dict = field(default_factory=dict)
    covariate_reference: dict = field(default_factory=dict)
    covariate_penalty: float = 0.0
    fixed_values: dict = field(default_factory=dict)
    cohort_effects: tuple = ()
    noise_sd_init: dict = field(default_factory=dict)
    learn_noise: bool = True
    time_offset: dict | None = None
    per_patient: tuple = ()
    miss: dict = field(default_factory=dict)
    learn_miss: bool = True

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        model = _models.get(self.model)
        if self.time_offset is not None:
            opts = check_keys(self.time_offset, [*_time_offset.DEFAULTS, "estimate_population"], "time_offset")
            estimate = check_bool(opts.pop("estimate_population", False), "time_offset.estimate_population")
            opts = {**_time_offset.DEFAULTS, **{k: check_positive(v, f"time_offset.{k}") for k, v in opts.items()},
                    "estimate_population": estimate}
            model = _time_offset.with_time_offset(model, opts["typical"], opts["lower"], opts["upper"])
            set_("time_offset", opts)
        # the typed sections first: a misspelt key or value raises here, naming it
        if isinstance(self.closures, (str, Mapping, ClosureConfig)) or not isinstance(self.closures, Iterable):
            raise ValueError(f"closures must be a list of closure settings (mappings or ClosureConfig), "
                             f"got {self.closures!r}")
        set_("closures", tuple(ClosureConfig.from_dict(c, f"closures[{i}]") for i, c in enumerate(self.closures)))
        if self.black_box is not None:
            set_("black_box", BlackBoxConfig.from_dict(self.black_box, "black_box"))
        set_("encoder", EncoderConfig.from_dict(self.encoder, "encoder"))
        set_("noise", NoiseConfig.from_dict(self.noise, "noise"))
        set_("solver", solver_from_dict(self.solver, "solver"))
        if self.closures and self.black_box is not None:
            raise ValueError("closures and black_box are exclusive: a black box has no mechanism to add terms to")
        # scalar settings
        check_choice(self.dtype, list(DTYPES), "dtype", "a dtype")
        check_choice(self.calibration, CALIBRATIONS, "calibration", "an assay calibration")
        set_("n_samples", check_integer(self.n_samples, "n_samples", 1))
        set_("full_context", check_probability(self.full_context, "full_context"))
        set_("omega_init", check_positive(self.omega_init, "omega_init"))
        set_("closure_penalty", check_number(self.closure_penalty, "closure_penalty", 0.0))
        set_("covariate_penalty", check_number(self.covariate_penalty, "covariate_penalty", 0.0))
        if self.time_scale is not None:
            set_("time_scale", check_positive(self.time_scale, "time_scale"))
        check_bool(self.covariate_effects, "covariate_effects")
        check_bool(self.learn_noise, "learn_noise")
        # names of the model
        of = repr(self.model)
        states, params = list(model.all_state_names), list(model.parameter_names)
        known = list(model.observable_names) + [s for s in states if s not in model.observable_names]
        set_("observables", check_names(self.observables, known, "observables", "observable(s) or state(s)", of)
             or tuple(model.observable_names))
        fitted = f"the twin fits {list(self.observables)}"
        set_("cohort_calibration", check_names(self.cohort_calibration, self.observables, "cohort_calibration",
                                               "observable(s)", note=fitted))
        check_names(list(self.noise), self.observables, "noise", "observable(s)", note=fitted)
        set_("fixed", check_names(self.fixed, params, "fixed", "parameter(s)", of))
        set_("population", check_names(self.population, params, "population", "parameter(s)", of))
        set_("cohort_effects", check_names(self.cohort_effects, params, "cohort_effects", "parameter(s)", of))
        set_("per_patient", check_names(self.per_patient, params, "per_patient", "parameter(s)", of))
        clash = [p for p in self.per_patient if p in set(self.fixed) | set(self.population) | set(self.fixed_values)]
        if clash:
            raise ValueError(f"per_patient {clash} also listed in fixed, population or fixed_values: a parameter "
                             "is estimated per patient, for the population, or not at all")
        declared_fixed = [p.name for p in model.parameter_space if p.role == "fixed" and p.name in self.per_patient]
        if declared_fixed:
            raise ValueError(f"per_patient {declared_fixed}: the model {of} declares them fixed constants (structural, "
                             "not estimated); only population-level parameters can be made per patient")
        fixed_values = check_mapping(self.fixed_values, "fixed_values")
        check_names(list(fixed_values), params, "fixed_values", "parameter(s)", of)
        for name, value in fixed_values.items():
            p = model.parameter_space[name]
            v = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
            if not math.isfinite(v) or (p.lower is not None and v < p.lower) or (p.upper is not None and v > p.upper):
                raise ValueError(f"fixed_values[{name!r}] must be a number within [{p.lower}, {p.upper}], got {value!r}")
        set_("fixed_values", {k: float(v) for k, v in fixed_values.items()})
        frozen = set(self.fixed) | set(self.fixed_values) | {p.name for p in model.parameter_space if p.role == "fixed"}
        clash = [p for p in self.cohort_effects if p in frozen]
        if clash:
            raise ValueError(f"cohort_effects {clash} are fixed parameters; a fixed parameter has no per-cohort estimate")
        noise_sd_init = check_mapping(self.noise_sd_init, "noise_sd_init")
        for name, value in noise_sd_init.items():
            if name not in self.observables or not (isinstance(value, (int, float)) and math.isfinite(value)
                                                    and value > 0):
                raise ValueError(f"noise_sd_init[{name!r}] must name a fitted observable and be a positive number, got {value!r}")
        set_("noise_sd_init", {k: float(v) for k, v in noise_sd_init.items()})
        check_bool(self.learn_miss, "learn_miss")
        miss = check_mapping(self.miss, "miss")
        for name, value in miss.items():
            if name not in self.observables or isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0.0 < float(value) < 1.0:
                raise ValueError(f"miss[{name!r}] must name a fitted observable and be a probability strictly "
                                 f"between 0 and 1, got {value!r}")
        set_("miss", {k: float(v) for k, v in miss.items()})
        for i, c in enumerate(self.closures):
            check_names(c.inputs, states + params + ["t"], f"closures[{i}].inputs", "input(s)", of,
                        note="a closure reads states, parameters and 't'")
            if c.mode == "add":
                check_names(c.target, states, f"closures[{i}].target", "state(s)", of,
                            note="mode 'add' adds a term to a state's derivative")
            else:
                check_names(c.target, params, f"closures[{i}].target", "parameter(s)", of,
                            note="mode 'replace' replaces a parameter")
        if self.black_box is not None and self.black_box.state_scale:
            check_names(list(self.black_box.state_scale), states, "black_box.state_scale", "state(s)", of)
        set_("log10_covariates", tuple(self.log10_covariates))
        set_("covariate_scaling", {str(k): [float(x) for x in v]
                                   for k, v in check_mapping(self.covariate_scaling, "covariate_scaling").items()})
        set_("covariate_reference", {str(k): str(v) for k, v in
                                     check_mapping(self.covariate_reference, "covariate_reference").items()})

    def resolved_model(self):
        """The :class:`~hybridtwin.Model` the twin integrates: ``model``, with ``t_offset`` when ``time_offset``
        is set."""
        model = _models.get(self.model)
        if self.time_offset is None:
            return model
        o = self.time_offset
        return _time_offset.with_time_offset(model, o["typical"], o["lower"], o["upper"])

    def to_dict(self) -> dict:
        """Plain lists and dicts (JSON/YAML-ready), the format stored in a twin's card."""
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}
        d["closures"] = [c.to_dict() for c in self.closures]
        d["black_box"] = None if self.black_box is None else self.black_box.to_dict()
        d["noise"] = self.noise.to_dict()
        d["encoder"] = self.encoder.to_dict()
        d["solver"] = solver_to_dict(self.solver)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TwinConfig":
        """The config from :meth:`to_dict` or a YAML/JSON mapping (also a card written before the sections were
        typed); an unknown key raises ``ValueError`` naming it and the closest field."""
        d = check_keys(d, cls, "the twin config", required=("model",))
        for k in ("observables", "cohort_calibration", "fixed", "population", "log10_covariates", "cohort_effects",
                  "per_patient"):
            if k in d and d[k] is not None:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class Prediction:
    """What ``HybridTwin.forward(batch)`` returns: the encoder's posterior ``mean``/``sd`` of the unconstrained
    patient parameters (B, Pp), the ``z`` used (the mean, or a draw), the model parameters ``theta`` (B, P),
    the noise-free ``observables`` at every batch row (B, T; 0 on padding and failed solves) and the solver
    ``status`` (B,) (0: ok)."""

    mean: torch.Tensor
    sd: torch.Tensor
    z: torch.Tensor
    theta: torch.Tensor
    observables: torch.Tensor
    status: torch.Tensor


#: ELBO per observation row assigned to a subject whose solve failed (far below any fitted value: a good fit
#: scores around +-1 per row), so failures are penalised rather than dropped from the average
FAILED_ELBO_PER_ROW = -1.0e3

class HybridTwin(nn.Module):
    """See the module docstring. Build with :meth:`from_data` (fits covariate preprocessing and scales)."""

    def __init__(self, config: TwinConfig, covariate_names: list[str], cohort_names: list[str],
                 obs_mean: list[float], obs_sd: list[float], preprocessor: CovariatePreprocessor | None = None):
        super().__init__()
        self.config = config
        if config.black_box is not None:
            self.dynamics = NeuralODEDynamics(config.resolved_model(), **config.black_box.to_dict())
        else:
            self.dynamics = MechanisticDynamics(config.resolved_model(),
                                                [NeuralClosure(**c.to_dict()) for c in config.closures])
        model = self.dynamics.model
        self.model = model
        space = model.parameter_space
        roles = {p.name: p.role for p in space}
        for n in list(config.fixed) + list(config.fixed_values):
            roles[n] = "fixed"
        for n in config.population:
            if roles[n] == "patient":
                roles[n] = "population"
        for n in config.per_patient:
            roles[n] = "patient"
        self.roles = roles
        names = space.names
        self.patient_names = [n for n in names if roles[n] == "patient"]
        self.population_names = [n for n in names if roles[n] == "population"]
        self.register_buffer("patient_idx", torch.tensor([names.index(n) for n in self.patient_names], dtype=torch.long))
        self.register_buffer("population_idx", torch.tensor([names.index(n) for n in self.population_names], dtype=torch.long))
        defaults = space.default_tensor(1)
        for n, v in config.fixed_values.items():
            defaults[0, space.index(n)] = v
        z0 = space.to_unconstrained(defaults)[0]
        self.register_buffer("z_default", z0.clone())
        self.mu = nn.Parameter(z0[self.patient_idx].clone())
        self.mu_population = nn.Parameter(z0[self.population_idx].clone())
        self.covariate_names = list(covariate_names)
        self.cohort_names = list(cohort_names)
        C, Pp = len(self.covariate_names), len(self.patient_names)
        self.beta = nn.Parameter(torch.zeros(Pp, C), requires_grad=config.covariate_effects)
        self.log_omega = nn.Parameter(torch.full((Pp,), math.log(config.omega_init)))
        #: patient parameters whose population distribution is known, not estimated: {index: (mu, log omega)}
        self.known_population = {}
        if config.time_offset is not None and _time_offset.TIME_OFFSET in self.patient_names:
            j = self.patient_names.index(_time_offset.TIME_OFFSET)
            with torch.no_grad():
                self.log_omega[j] = math.log(config.time_offset["omega"])
            if not config.time_offset["estimate_population"]:
                # (a skeleton built on the meta device for shape checks has no values to record)
                self.known_population[j] = ((math.nan, math.nan) if self.mu.is_meta else
                                            (float(self.mu[j].detach()), float(self.log_omega[j].detach())))
                keep = torch.ones(Pp, dtype=self.mu.dtype)
                keep[j] = 0.0
                # gradient-based training (Lightning, the pooled start) leaves the known distribution alone
                self.mu.register_hook(lambda g, k=keep: g * k.to(g.dtype))
                self.log_omega.register_hook(lambda g, k=keep: g * k.to(g.dtype))
                if config.covariate_effects:
                    self.beta.register_hook(lambda g, k=keep: g * k.to(g.dtype)[:, None])
        self.encoder = PatientEncoder(C, Pp, len(config.observables), max(1, len(self.cohort_names)),
                                      len(model.all_state_names), **config.encoder.to_dict())
        n_coh = max(1, len(self.cohort_names))
        self.observation = ObservationModel(config.observables, config.noise, sigma=config.noise_sd_init or None,
                                            n_cohorts=n_coh, cohort_calibration=config.cohort_calibration,
                                            learn_noise=config.learn_noise, calibration=config.calibration,
                                            miss=config.miss or None, learn_miss=config.learn_miss)
        shift_mask = torch.zeros(n_coh, len(names), dtype=torch.bool)
        for n in config.cohort_effects:
            shift_mask[1:, names.index(n)] = True
        self.register_buffer("cohort_effect_mask", shift_mask)
        # per-cohort shift of the unconstrained typical value (cohort 0 is the reference and stays at 0)
        self.cohort_shift = nn.Parameter(torch.zeros(n_coh, len(names)), requires_grad=bool(config.cohort_effects))
        #: population-estimate uncertainty ({"names", "estimate", "cov", "method"}) and fit diagnostics, set by the
        #: estimation routines (:mod:`hybridtwin.estimation`) and stored in the card
        self.uncertainty: dict | None = None
        self.diagnostics: list = []
        self._step_tally: dict | None = None  # see count_solver_steps
        self.register_buffer("obs_mean", torch.tensor(obs_mean, dtype=torch.float64))
        self.register_buffer("obs_sd", torch.tensor(obs_sd, dtype=torch.float64))
        self.time_scale = float(config.time_scale or model.default_t_end)
        self.preprocessor = preprocessor
        self.solver_config = config.solver
        self.to(DTYPES[config.dtype])
        self.last_failed = 0

    # -- construction from data ---------------------------------------------------------------------------------------
    @classmethod
    def from_data(cls, config: TwinConfig, data: CohortData, preprocessor: CovariatePreprocessor | None = None):
        """Fit the covariate preprocessing on ``data`` (training subjects!) and set observable scales."""
        if preprocessor is None:
            cov = data.covariates
            preprocessor = CovariatePreprocessor(log10=config.log10_covariates, scaling=config.covariate_scaling,
                                                 reference=config.covariate_reference).fit(cov) \
                if cov.shape[1] > 1 else None
        obs = data.observations
        mean, sd = [], []
        for k in config.observables or _models.get(config.model).observable_names:
            v = obs.loc[obs["observable"] == k, "value"]
            mean.append(float(v.mean()) if len(v) else 0.0)
            sd.append(float(v.std()) if len(v) > 1 and v.std() > 0 else 1.0)
        names = preprocessor.feature_names_ if preprocessor is not None else []
        return cls(config, names, data.cohorts, mean, sd, preprocessor)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.config.dtype]

    def dataset(self, data: CohortData) -> SubjectDataset:
        """A SubjectDataset encoded the way this twin expects (its observables, cohorts, covariates, dtype).

        The twin's model starts at time 0 (infection, first dose): observations or doses at negative times
        (a data clock such as days from symptom onset) are refused here, naming the subjects, before any
        fitting starts -- shift them to the model's clock first, or give the twin a ``time_offset``."""
        from .data.schema import check_min_time

        check_min_time(data.observations, self.min_data_time, "observations")
        if len(data.doses):
            check_min_time(data.doses, self.min_data_time, "doses")
        return SubjectDataset(data, model=self.model, preprocessor=self.preprocessor,
                              observables=list(self.config.observables), cohorts=self.cohort_names or None,
                              dtype=self.dtype)

    def restore_known_population(self) -> None:
        """Put back the population distribution of parameters whose distribution is known (``time_offset``
        without ``estimate_population``): typical value, SD and no covariate effects. Closed-form M-steps call it."""
        with torch.no_grad():
            for j, (mu, log_omega) in self.known_population.items():
                self.mu[j] = mu
                self.log_omega[j] = log_omega
                self.beta[j].zero_()

    @property
    def min_data_time(self) -> float:
        """The earliest data time this twin accepts: 0 (the model's clock), or ``-upper`` of a ``time_offset``."""
        return 0.0 if self.config.time_offset is None else -float(self.config.time_offset["upper"])

    # -- distributions ----------------------------------------------------------------------------------------------
    def prior(self, covariates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Population distribution of the patient parameters given covariates: (mean, sd), each (B, Pp)."""
        x = torch.nan_to_num(covariates)
        mean = self.mu + x @ self.beta.T if self.beta.shape[1] else self.mu.expand(x.shape[0], -1)
        return mean, self.log_omega.exp().expand_as(mean)

    def posterior(self, batch: Batch, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Amortised q(z) = (mean, sd) from covariates, the ``context`` observations (default all), doses, cohort."""
        ctx = batch.mask if context is None else context & batch.mask
        mean0, sd0 = self.prior(batch.covariates)
        g = batch.observable
        std_val = (batch.values - self.obs_mean.to(batch.values.dtype)[g]) / self.obs_sd.to(batch.values.dtype)[g]
        s = batch.schedule
        dtime = torch.cat([s.bolus_time, s.inf_start], dim=1)
        damount = torch.cat([s.bolus_amount, s.inf_rate * (s.inf_end - s.inf_start).nan_to_num(0.0, 0.0, 0.0)], dim=1)
        dtarget = torch.cat([s.bolus_target, s.inf_target], dim=1)
        dmask = torch.isfinite(dtime)
        dm, dls = self.encoder(batch.covariates.nan_to_num(), batch.times / self.time_scale, std_val, g, batch.censored,
                               ctx, torch.where(dmask, dtime, 0.0) / self.time_scale, torch.where(dmask, damount, 0.0),
                               dtarget, dmask, batch.cohort)
        return mean0 + dm, sd0 * torch.exp(torch.clamp(dls, -10.0, 5.0))

    def theta(self, z_patient: torch.Tensor, cohort: torch.Tensor | None = None) -> torch.Tensor:
        """(N, Pp) unconstrained patient parameters -> (N, P) constrained parameters of the dynamics.

        cohort: (N,) cohort indices; with ``cohort_effects`` each row gets its cohort's shift (None: the
        reference cohort)."""
        return self.model.parameter_space.constrain(self.z_full(z_patient, cohort))

    def z_full(self, z_patient: torch.Tensor, cohort: torch.Tensor | None = None) -> torch.Tensor:
        """(N, Pp) unconstrained patient parameters -> (N, P) unconstrained values of every model parameter."""
        N = z_patient.shape[0]
        z = self.z_default.to(z_patient.dtype).expand(N, -1).clone()
        z = z.index_copy(1, self.patient_idx, z_patient)
        if len(self.population_idx):
            z = z.index_copy(1, self.population_idx, self.mu_population.to(z.dtype).expand(N, -1))
        if cohort is not None and self.config.cohort_effects:
            z = z + torch.where(self.cohort_effect_mask[cohort], self.cohort_shift[cohort].to(z.dtype), 0.0)
        return z

    # -- simulation and likelihood ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def count_solver_steps(self):
        """Tally the ODE solver's work inside the block: yields a dict updated by every solve of
        :meth:`observables_at` -- ``solves`` (subject solves), ``steps`` (attempted steps, summed) and ``max_steps``
        (the most any one subject took). A fit whose steps per solve grow as it runs has parameters (or a closure)
        moving into a stiff region.

        >>> from hybridtwin.virtual import make_virtual_cohort
        >>> data = make_virtual_cohort("vaccine_asc", n_subjects=3, seed=0)
        >>> twin = HybridTwin.from_data(TwinConfig(model="vaccine_asc"), data)
        >>> with twin.count_solver_steps() as tally:
        ...     _ = twin(twin.dataset(data).batch())
        >>> tally["solves"], tally["steps"] >= tally["max_steps"] > 0
        (3, True)
        """
        outer, tally = self._step_tally, {"solves": 0, "steps": 0, "max_steps": 0}
        self._step_tally = tally
        try:
            yield tally
        finally:
            self._step_tally = outer
            if outer is not None:  # nested blocks count for the enclosing one too
                outer["solves"] += tally["solves"]
                outer["steps"] += tally["steps"]
                outer["max_steps"] = max(outer["max_steps"], tally["max_steps"])

    def observables_at(self, theta: torch.Tensor, batch: Batch, repeats: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Model observables at every batch row for parameters ``theta`` ((repeats*B, P), sample-major).

        Returns ``g`` (repeats*B, T) (0 where the row is padding or the solve failed) and the solve status."""
        B = len(batch)
        idx = torch.arange(B, device=batch.times.device).repeat(repeats)
        times, mask = batch.times.repeat(repeats, 1).to(theta.dtype), batch.mask.repeat(repeats, 1)
        schedule = batch.schedule.select(idx)
        if self.config.time_offset is not None:  # data clock -> model clock, per patient (see models.time_offset)
            shift = theta[:, self.model.parameter_names.index(_time_offset.TIME_OFFSET)]
            times = _time_offset.shift_to_model_clock(times, shift)
            schedule = schedule.shifted(shift)
        y0 = self.model.initial_state(theta)
        sol = solve(self.dynamics, y0, times, theta, schedule=schedule, mask=mask,
                    config=self.solver_config, state_names=self.model.all_state_names)
        if self._step_tally is not None:
            n = sol.n_steps.detach()
            self._step_tally["solves"] += int(n.numel())
            self._step_tally["steps"] += int(n.sum())
            self._step_tally["max_steps"] = max(self._step_tally["max_steps"], int(n.max()) if n.numel() else 0)
        ys = torch.nan_to_num(sol.ys, nan=0.0)
        obs = self.model.observe(ys, theta[:, None, :])
        names = list(self.config.observables)
        cols = [obs[n] if n in obs else ys[..., self.model.all_state_names.index(n)] for n in names]
        stacked = torch.stack(cols, dim=-1)  # (N, T, K)
        g = stacked.gather(-1, batch.observable.repeat(repeats, 1)[..., None]).squeeze(-1)
        ok = sol.ok[:, None] & mask
        return torch.where(ok, g, torch.zeros_like(g)), sol.status

    def context_mask(self, batch: Batch, generator: torch.Generator | None = None, full: float | None = None) -> torch.Tensor:
        """Random observation prefixes for training and amortisation (:func:`hybridtwin.data.random_prefix_mask`)
        with this twin's ``full_context`` share by default."""
        return random_prefix_mask(batch, generator, self.config.full_context if full is None else full)

    def forward(self, batch: Batch, context: torch.Tensor | None = None, sample: bool = False,
                generator: torch.Generator | None = None) -> "Prediction":
        """Personalise and predict the batch's own rows in one pass: the encoder's posterior given ``context``
        (default: every observation), its mean (or one draw with ``sample=True``), the model parameters and
        the noise-free observables at every row. Returns a :class:`Prediction`.

        >>> from hybridtwin.virtual import make_virtual_cohort
        >>> data = make_virtual_cohort("vaccine_asc", n_subjects=3, seed=0)
        >>> twin = HybridTwin.from_data(TwinConfig(model="vaccine_asc"), data)
        >>> out = twin(twin.dataset(data).batch())
        >>> out.observables.shape == out.status.shape[:1] + out.observables.shape[1:], int(out.status.sum())
        (True, 0)
        """
        mean, sd = self.posterior(batch, context)
        z = mean + sd * torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device) if sample else mean
        theta = self.theta(z, batch.cohort)
        g, status = self.observables_at(theta, batch)
        return Prediction(mean, sd, z, theta, g, status)

    def elbo(self, batch: Batch, context: torch.Tensor | None = None, n_samples: int | None = None,
             generator: torch.Generator | None = None) -> dict:
        """ELBO terms for a batch; ``context`` selects encoder input and likelihood rows (default: all).

        ``elbo`` is the mean over every subject of the batch; a subject whose solve failed counts
        ``FAILED_ELBO_PER_ROW`` per observation (and gives no gradient); ``loglik`` and ``kl`` average the
        successful subjects; ``failed`` / ``failed_ids`` name the others."""
        K = n_samples or self.config.n_samples
        ctx = batch.mask if context is None else context & batch.mask
        mean, sd = self.posterior(batch, ctx)
        B, Pp = mean.shape
        eps = torch.randn((K, B, Pp), generator=generator, dtype=mean.dtype).to(mean.device)
        z = (mean[None] + sd[None] * eps).reshape(K * B, Pp)
        g, status = self.observables_at(self.theta(z, batch.cohort.repeat(K)), batch, repeats=K)
        rows = dict(values=batch.values.repeat(K, 1), observable=batch.observable.repeat(K, 1),
                    cohort=batch.cohort.repeat(K), censored=batch.censored.repeat(K, 1), lloq=batch.lloq.repeat(K, 1),
                    mask=ctx.repeat(K, 1))
        ll = self.observation.log_likelihood(g, rows["values"], rows["observable"], rows["cohort"], rows["censored"],
                                             rows["lloq"], rows["mask"]).sum(1).reshape(K, B)
        ok = (status == Status.OK).reshape(K, B).all(0)
        pm, ps = self.prior(batch.covariates)
        kl = normal_kl(mean, sd, pm, ps)
        elbo_i = ll.mean(0) - kl
        okf = ok.to(elbo_i.dtype)
        n_ok = okf.sum().clamp(min=1.0)
        # a subject whose solve failed scores FAILED_ELBO_PER_ROW per observation: the ELBO averages over every
        # subject, so batches and epochs with different failure counts stay comparable and an epoch in which
        # solves fail can never look better than one in which they succeed (no gradient flows from it)
        failed_i = FAILED_ELBO_PER_ROW * ctx.sum(1).clamp(min=1).to(elbo_i.dtype)
        elbo = torch.where(ok, elbo_i, failed_i.detach()).sum() / B
        penalty = self.config.closure_penalty * self.dynamics.penalty().to(elbo.dtype)
        if self.config.covariate_penalty:
            penalty = penalty + self.config.covariate_penalty * (self.beta**2).sum().to(elbo.dtype)
        self.last_failed = int((~ok).sum())
        n_rows = ctx.sum().clamp(min=1).to(elbo.dtype)
        return {"loss": -elbo + penalty, "elbo": elbo.detach(), "loglik": (ll.mean(0) * okf).sum().detach() / n_ok,
                "kl": (kl * okf).sum().detach() / n_ok, "failed": self.last_failed, "n_subjects": B,
                "failed_ids": [batch.subject_ids[i] for i in torch.nonzero(~ok).flatten().tolist()],
                "loglik_per_obs": ((ll.mean(0) * okf).sum() / n_rows).detach()}

    # -- personalisation (see hybridtwin.personalise) ---------------------------------------------------------------
    def predict(self, covariates, observations=None, doses=None, times=None, method: str = "auto", **options):
        """Personalise new patients and predict trajectories with intervals; see :func:`hybridtwin.personalise.predict`."""
        from .personalise import predict

        return predict(self, covariates, observations, doses, times, method=method, **options)

    def update(self, covariates, observations, doses=None, posterior=None, **options):
        """Refine patients' posteriors with all their measurements so far; see :func:`hybridtwin.personalise.update`."""
        from .personalise import update

        return update(self, posterior, covariates, observations, doses, **options)

    # -- reporting ------------------------------------------------------------------------------------------------------
    def population_table(self, level: float = 0.90) -> pd.DataFrame:
        """One row per population quantity (typical values, omegas, covariate effects, cohort values, noise, assay
        calibration) with estimate, SE, RSE % and a ``level`` confidence interval once the twin has been
        estimated with standard errors; see :func:`hybridtwin.estimation.report.population_table`."""
        from .estimation.report import population_table

        return population_table(self, level)

    def card(self) -> dict:
        """The architecture and data encoding as plain JSON types (for checkpoints)."""
        return {"config": self.config.to_dict(), "covariate_names": self.covariate_names, "cohort_names": self.cohort_names,
                "obs_mean": self.obs_mean.tolist(), "obs_sd": self.obs_sd.tolist(),
                "preprocessor": self.preprocessor.to_dict() if self.preprocessor is not None else None,
                "dynamics": self.dynamics.config(), "patient_parameters": self.patient_names,
                "population_parameters": self.population_names, "observables": list(self.config.observables),
                "observation_model": self.observation.describe(), "uncertainty": self.uncertainty,
                "diagnostics": list(self.diagnostics)}

    @classmethod
    def from_card(cls, card: dict) -> "HybridTwin":
        pre = CovariatePreprocessor.from_dict(card["preprocessor"]) if card.get("preprocessor") else None
        twin = cls(TwinConfig.from_dict(card["config"]), card["covariate_names"], card["cohort_names"],
                   card["obs_mean"], card["obs_sd"], pre)
        twin.uncertainty = card.get("uncertainty")
        twin.diagnostics = list(card.get("diagnostics") or [])
        return twin
