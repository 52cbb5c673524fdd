"""A per-patient time offset: the time from infection (the model's t = 0) to the data's day 0.

Real data are timed from symptom onset, enrolment or a first positive test; an infection model starts at
infection. :func:`with_time_offset` returns the model with one more patient parameter, ``t_offset`` (days,
log-normal between patients like every other patient parameter): a measurement taken on data day ``d`` is
compared with the model at ``t_offset + d``, and a dose given on data day ``d`` enters at ``t_offset + d``.
The offset is estimated with the other parameters (its typical value, between-patient SD, covariate and
cohort effects -- e.g. studies that enrol at different stages) and by the encoder; data on any day axis,
negative days included, then fit. Model times before infection (``t_offset + d < 0``) are read at ``t = 0``.

Default prior for data timed from symptom onset: the SARS-CoV-2 incubation period, log-normal with median
5.1 days and log-SD 0.418 (Lauer SA, Grantz KH, Bi Q, et al. The incubation period of coronavirus disease
2019 (COVID-19) from publicly reported confirmed cases: estimation and application. Ann Intern Med
172:577-582 (2020), doi:10.7326/M20-0504). It is where the estimation starts (typical value and SD), not a
constraint.

>>> from hybridtwin.models.time_offset import with_time_offset
>>> m = with_time_offset("sarscov2_cd8")
>>> m.name, m.parameter_space["t_offset"].default, m.parameter_names[-1], m is with_time_offset("sarscov2_cd8")
('sarscov2_cd8+t_offset', 5.1, 't_offset', True)
"""

from __future__ import annotations

import functools

import torch

from .base import Model, Parameter

TIME_OFFSET = "t_offset"
#: Lauer et al. (2020): SARS-CoV-2 incubation period, log-normal (median days, log-SD)
INCUBATION_MEDIAN_DAYS, INCUBATION_LOG_SD = 5.1, 0.418
DEFAULTS = {"typical": INCUBATION_MEDIAN_DAYS, "omega": INCUBATION_LOG_SD, "lower": 0.05, "upper": 30.0}


def with_time_offset(model, typical: float = DEFAULTS["typical"], lower: float = DEFAULTS["lower"],
                     upper: float = DEFAULTS["upper"]) -> Model:
    """``model`` with the patient parameter ``t_offset`` (see the module docstring); its name gets ``+t_offset``.
    The same base model and settings give the same Model object (built once: a twin's config and its dynamics
    both ask for it)."""
    from . import get

    return _derived(get(model), float(typical), float(lower), float(upper))


@functools.lru_cache(maxsize=32)
def _derived(base: Model, typical: float, lower: float, upper: float) -> Model:
    if TIME_OFFSET in base.parameter_names:
        raise ValueError(f"model {base.name!r} already has a parameter named {TIME_OFFSET!r}")
    if not (0 < lower < typical < upper):
        raise ValueError(f"time_offset needs 0 < lower < typical < upper, got lower={lower}, typical={typical}, "
                         f"upper={upper}")
    offset = Parameter(TIME_OFFSET, typical, lower, upper, unit=base.time_unit,
                       description="time from infection (model t = 0) to the data's day 0, e.g. the incubation "
                                   "period when the data are timed from symptom onset")
    return Model(name=f"{base.name}+{TIME_OFFSET}", states=base.state_names,
                 parameters=[*base.parameter_space.parameters, offset], rhs=base._rhs, initial=base.initial,
                 observables=base.observables, compartments=base.compartment_names,
                 interventions=[iv for k, iv in base.interventions.items() if k not in base.all_state_names],
                 time_unit=base.time_unit, citation=base.citation,
                 description=f"{base.description} With a per-patient time offset (t_offset).".strip(),
                 default_t_end=base.default_t_end, log_scale_states=base.log_scale_states,
                 example_doses=base.example_doses)


def shift_to_model_clock(times: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(N, T) data times + (N,) offsets -> model times, never before infection (held at 0)."""
    return torch.clamp(times + offset[:, None], min=0.0)
