"""The mechanistic model abstraction: named states, parameters, a batched torch vector field.

A :class:`Model` is defined declaratively and validated at definition time: every state needs an initial
value, every observable may only use known states and parameters, bounds must hold the defaults and the
right-hand side must return one finite derivative per state at the default initial condition.

Example: a target-cell-limited influenza model in a few lines

>>> import torch
>>> from hybridtwin.models import Model, Parameter, log10_observable
>>> tcl = Model(
...     name="my_tcl",
...     states=["T", "I", "V"],
...     parameters=[Parameter("beta", 3.2e-5, 1e-8, 1e-2), Parameter("delta", 5.2, 0.1, 50),
...                 Parameter("p", 4.6e-2, 1e-5, 10), Parameter("c", 5.2, 0.1, 50),
...                 Parameter("T0", 4e8, 1e6, 1e10, role="fixed"), Parameter("V0", 0.75, 1e-3, 1e3)],
...     initial={"T": "T0", "I": 0.0, "V": "V0"},
...     rhs=lambda t, s, p: {"T": -p.beta * s.T * s.V,
...                          "I": p.beta * s.T * s.V - p.delta * s.I,
...                          "V": p.p * s.I - p.c * s.V},
...     observables={"log10_V": log10_observable("V")},
...     time_unit="day",
... )
>>> tcl.state_names
['T', 'I', 'V']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch

from ..parameters import Parameter, ParameterSpace

TIME_UNITS = ("day", "hour", "dimensionless")

#: values below this floor are clipped before taking log10 in observables (avoids -inf for extinct virus)
LOG10_FLOOR = 1e-30


class Named:
    """Attribute access to a dict of tensors that names what is missing (used for ``s`` and ``p``).

    The values are plain instance attributes (so ``torch.compile`` traces a vector field through them); only a
    missing name reaches ``__getattr__``, which raises :class:`ModelDefinitionError` naming the known ones.
    """

    def __init__(self, values: Mapping[str, torch.Tensor], kind: str, model: str):
        for name, value in values.items():
            setattr(self, name, value)
        self._named_kind = kind
        self._named_model = model

    def __getattr__(self, name: str) -> torch.Tensor:
        if name.startswith("__") and name.endswith("__") or name.startswith("_named_"):
            raise AttributeError(name)  # protocol look-ups (copy, pickle, torch.compile) are not model names
        kind, model = self._named_kind, self._named_model
        known = [k for k in vars(self) if not k.startswith("_named_")]
        raise ModelDefinitionError(f"model {model!r} uses unknown {kind} {name!r}; known {kind}s: {', '.join(known)}")

    def __getitem__(self, name: str) -> torch.Tensor:
        return getattr(self, name)


class ModelDefinitionError(ValueError):
    """Raised when a model definition is inconsistent (unknown names, missing defaults, bad bounds...)."""


@dataclass(frozen=True)
class Intervention:
    """What a dose can act on.

    ``target`` is a model state or a drug compartment (an extra state that starts at zero and whose effect
    on the published dynamics is zero while it is empty). ``kind`` is ``"state"`` or ``"drug"``.
    """

    name: str
    target: str
    kind: str = "state"
    description: str = ""


def log10_observable(state: str, floor: float = LOG10_FLOOR) -> Callable:
    """Observable ``log10(max(state, floor))`` -- the usual scale of viral loads and titres.

    The returned function carries ``log10_of`` (the state's name) and ``floor`` so that callers can tell a
    clipped tiny value from a clipped negative one: :func:`hybridtwin.simulate` reports a state below
    ``-atol`` as NaN (status ``"negative_state"``), while training and likelihood code keep the clip.

    >>> log10_observable("V").log10_of
    'V'
    """

    def obs(s: Named, p: Named) -> torch.Tensor:
        return torch.log10(torch.clamp(s[state], min=floor))

    obs.__doc__ = f"log10 of {state} (values below {floor:g} clipped)"
    obs.log10_of = state
    obs.floor = floor
    return obs


def emax_drug_parameters(k_el: float, emax: float, what: str, time_unit: str = "1/day",
                         ec50: float = 1.0) -> list[Parameter]:
    """The three fixed PK/PD settings of a one-compartment drug with an Emax effect (a model extension):
    first-order elimination ``k_el``, maximal effect ``Emax`` and potency ``EC50``."""
    return [
        Parameter("k_el", k_el, 1e-4, 100.0, unit=time_unit, role="fixed", description=f"{what} elimination rate (extension)"),
        Parameter("Emax", emax, 0.0, 1.0, transform="identity", unit="-", role="fixed",
                  description=f"maximal fractional effect of the {what} (extension)"),
        Parameter("EC50", ec50, 1e-6, 1e6, unit="drug units", role="fixed",
                  description=f"{what} level giving half-maximal effect (extension)"),
    ]


def emax_effect(concentration: torch.Tensor, p: Named) -> torch.Tensor:
    """``Emax C / (EC50 + C)``: exactly 0 while the drug compartment is empty."""
    return p.Emax * concentration / (p.EC50 + concentration)


class Model:
    """A mechanistic ODE model with named states and parameters and a batched torch vector field.

    Parameters
    ----------
    name:
        Registry name, e.g. ``"baccam2006"``.
    states:
        Published state names, in order.
    parameters:
        :class:`Parameter` objects (or a ``ParameterSpace``).
    rhs:
        ``rhs(t, s, p) -> {state: derivative}`` where ``s`` and ``p`` give attribute access to tensors of
        shape ``(B,)``. It must return a derivative for every state and drug compartment.
    initial:
        ``{state: parameter name or number}``: initial value of every published state.
    observables:
        ``{name: fn(s, p) -> tensor}`` functions of states (and parameters).
    compartments:
        Drug compartments driven by doses (extra states, initial value 0); their effect must vanish at 0.
    interventions:
        Extra :class:`Intervention` descriptions (each state and compartment is a dose target anyway).
    time_unit, citation, description:
        Metadata. ``default_t_end`` is the horizon the quickstart and CLI use by default.
    """

    def __init__(
        self,
        name: str,
        states: Sequence[str],
        parameters: Iterable[Parameter] | ParameterSpace,
        rhs: Callable,
        initial: Mapping[str, str | float],
        observables: Mapping[str, Callable] | None = None,
        compartments: Sequence[str] = (),
        interventions: Sequence[Intervention] = (),
        time_unit: str = "day",
        citation: str = "",
        description: str = "",
        default_t_end: float = 10.0,
        log_scale_states: Sequence[str] = (),
        example_doses: Sequence = (),
    ):
        if not isinstance(name, str) or not name:
            raise ModelDefinitionError(f"model name must be a non-empty string, got {name!r}")
        self.name = name
        self.state_names = list(states)
        self.compartment_names = list(compartments)
        all_states = self.state_names + self.compartment_names
        for s in all_states:
            if not isinstance(s, str) or not s.isidentifier():
                raise ModelDefinitionError(f"model {name!r}: state names must be identifiers, got {s!r}")
        if len(set(all_states)) != len(all_states):
            raise ModelDefinitionError(f"model {name!r}: duplicate state or compartment names in {all_states}")
        try:
            self.parameter_space = parameters if isinstance(parameters, ParameterSpace) else ParameterSpace(parameters)
        except (TypeError, ValueError) as exc:
            raise ModelDefinitionError(f"model {name!r}: {exc}") from None
        clash = set(all_states) & set(self.parameter_space.names)
        if clash:
            raise ModelDefinitionError(f"model {name!r}: names used both as state and parameter: {sorted(clash)}")
        if time_unit not in TIME_UNITS:
            raise ModelDefinitionError(f"model {name!r}: time_unit must be one of {TIME_UNITS}, got {time_unit!r}")
        self.time_unit = time_unit
        self.citation = citation
        self.description = description
        self.default_t_end = float(default_t_end)
        self._rhs = rhs
        self.observables = dict(observables or {})
        self.log_scale_states = list(log_scale_states)
        self.example_doses = list(example_doses)

        missing = [s for s in self.state_names if s not in initial]
        extra = [s for s in initial if s not in all_states]
        if missing:
            raise ModelDefinitionError(
                f"model {name!r}: no initial value for state(s) {missing}; give a number or a parameter name"
            )
        if extra:
            raise ModelDefinitionError(f"model {name!r}: initial values given for unknown state(s) {extra}")
        self.initial = {}
        for s in all_states:
            v = initial.get(s, 0.0)
            if isinstance(v, str):
                if v not in self.parameter_space.names:
                    raise ModelDefinitionError(
                        f"model {name!r}: initial value of {s!r} refers to unknown parameter {v!r}"
                    )
            else:
                try:
                    v = float(v)
                except (TypeError, ValueError):
                    raise ModelDefinitionError(f"model {name!r}: initial value of {s!r} must be a number or a parameter name") from None
                if not math.isfinite(v):
                    raise ModelDefinitionError(f"model {name!r}: initial value of {s!r} must be finite")
            self.initial[s] = v

        self.interventions = {s: Intervention(s, s, "state", f"dose into state {s}") for s in self.state_names}
        for c in self.compartment_names:
            self.interventions[c] = Intervention(c, c, "drug", f"dose into drug compartment {c}")
        for iv in interventions:
            if iv.target not in all_states:
                raise ModelDefinitionError(f"model {name!r}: intervention {iv.name!r} targets unknown state {iv.target!r}")
            self.interventions[iv.name] = iv
        for s in self.log_scale_states:
            if s not in all_states:
                raise ModelDefinitionError(f"model {name!r}: log_scale_states names unknown state {s!r}")
        self._validate_callables()

    # -- metadata ------------------------------------------------------------------------------------------
    @property
    def parameter_names(self) -> list[str]:
        return self.parameter_space.names

    @property
    def all_state_names(self) -> list[str]:
        """Published states followed by drug compartments: the order of the integrated vector."""
        return self.state_names + self.compartment_names

    @property
    def observable_names(self) -> list[str]:
        return list(self.observables)

    def default_parameters(self) -> dict[str, float]:
        return self.parameter_space.defaults()

    def parameter_space_frame(self):
        return self.parameter_space.as_frame()

    @property
    def short_citation(self) -> str:
        """First author et al. (year), e.g. ``"Baccam et al. (2006)"``."""
        import re

        tokens = self.citation.split(",")[0].split() if self.citation else [self.name]
        first = " ".join(tokens[:-1]) if len(tokens) > 1 and tokens[-1].isupper() else tokens[0]
        year = re.search(r"\b(19|20)\d{2}\b", self.citation or "")
        return f"{first} et al. ({year.group(0)})" if year else first

    def __repr__(self) -> str:
        return f"Model({self.name!r}, states={self.state_names}, time_unit={self.time_unit!r})"

    # -- numerics -------------------------------------------------------------------------------------------
    def _named_params(self, theta: torch.Tensor) -> Named:
        return Named(dict(zip(self.parameter_names, theta.unbind(-1))), "parameter", self.name)

    def _named_states(self, y: torch.Tensor) -> Named:
        return Named(dict(zip(self.all_state_names, y.unbind(-1))), "state", self.name)

    def vector_field(self, t: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Batched right-hand side: ``y`` (B, S) with S = len(all_state_names), ``theta`` (B, P) -> (B, S)."""
        d = self._rhs(t, self._named_states(y), self._named_params(theta))
        return torch.stack([d[s] for s in self.all_state_names], dim=-1)

    def vector_field_columns(self, t: torch.Tensor, y: Sequence[torch.Tensor], theta: Sequence[torch.Tensor]) -> list:
        """:meth:`vector_field` on columns: ``y`` the S state columns and ``theta`` the P parameter columns, each
        (B,); returns the S derivative columns. The fused solver step uses this form: every quantity of a step is
        then a (B,) column, and the compiled step becomes one vectorised loop over subjects.

        >>> import torch, hybridtwin as ht
        >>> m = ht.models.get("baccam2006"); theta = m.parameter_space.default_tensor(2); y = m.initial_state(theta)
        >>> d = m.vector_field_columns(torch.zeros(2), y.unbind(-1), theta.unbind(-1))
        >>> bool(torch.equal(torch.stack(d, -1), m.vector_field(torch.zeros(2), y, theta)))
        True
        """
        d = self._rhs(t, Named(dict(zip(self.all_state_names, y)), "state", self.name),
                      Named(dict(zip(self.parameter_names, theta)), "parameter", self.name))
        return [d[s] for s in self.all_state_names]

    def bind(self, theta: torch.Tensor):
        """``f(t, y)`` with the parameters ``theta`` (B, P) split into contiguous columns once (faster in loops)."""
        p = Named({k: v.contiguous() for k, v in zip(self.parameter_names, theta.unbind(-1))}, "parameter", self.name)
        names, rhs = self.all_state_names, self._rhs

        def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            d = rhs(t, Named(dict(zip(names, y.unbind(-1))), "state", self.name), p)
            return torch.stack([d[s] for s in names], dim=-1)

        return f

    def initial_state(self, theta: torch.Tensor) -> torch.Tensor:
        """Batched initial state (B, S) from parameters (B, P)."""
        cols = []
        for s in self.all_state_names:
            v = self.initial[s]
            if isinstance(v, str):
                cols.append(theta[..., self.parameter_space.index(v)])
            else:
                cols.append(torch.full(theta.shape[:-1], v, dtype=theta.dtype, device=theta.device))
        return torch.stack(cols, dim=-1)

    def observe(self, y: torch.Tensor, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Observables from states ``y`` (..., S) and parameters ``theta`` broadcastable to (..., P)."""
        theta = theta.expand(*y.shape[:-1], theta.shape[-1])
        s, p = self._named_states(y), self._named_params(theta)
        return {k: fn(s, p) for k, fn in self.observables.items()}

    def _validate_callables(self) -> None:
        with torch.device("cpu"):  # a check on real numbers, even when a caller builds on the meta device
            self._check_callables()

    def _check_callables(self) -> None:
        theta = self.parameter_space.default_tensor(1)
        y0 = self.initial_state(theta)
        t = torch.zeros(1, dtype=theta.dtype)
        try:
            d = self._rhs(t, self._named_states(y0), self._named_params(theta))
        except ModelDefinitionError:
            raise
        except Exception as exc:  # user code: say where it failed
            raise ModelDefinitionError(f"model {self.name!r}: rhs failed at the default initial state: {exc!r}") from exc
        if not isinstance(d, Mapping):
            raise ModelDefinitionError(f"model {self.name!r}: rhs must return a dict {{state: derivative}}, got {type(d).__name__}")
        missing = [s for s in self.all_state_names if s not in d]
        extra = [s for s in d if s not in self.all_state_names]
        if missing or extra:
            raise ModelDefinitionError(
                f"model {self.name!r}: rhs must return exactly one derivative per state; missing {missing}, unknown {extra}"
            )
        for s in self.all_state_names:
            val = torch.as_tensor(d[s])
            if val.shape != (1,) or not torch.isfinite(val).all():
                raise ModelDefinitionError(
                    f"model {self.name!r}: derivative of {s!r} at the default initial state is {val.tolist()}; "
                    "expected one finite value per subject"
                )
        for k, fn in self.observables.items():
            try:
                v = fn(self._named_states(y0), self._named_params(theta))
            except ModelDefinitionError as exc:
                raise ModelDefinitionError(f"observable {k!r}: {exc}") from None
            if torch.as_tensor(v).shape != (1,):
                raise ModelDefinitionError(f"model {self.name!r}: observable {k!r} must return one value per subject")
