"""Named, bounded model parameters with units, transforms and roles.

A :class:`Parameter` is one named quantity of a mechanistic model (``beta``, ``delta``, ``T0`` ...) with its
published default, plausible bounds, the transform that maps it to an unconstrained real number (``log``
for positive rates, ``logit`` for fractions in a bounded interval, ``identity`` otherwise), its unit and its
role:

- ``"patient"``: may vary between patients (a random effect in mixed-effects language);
- ``"population"``: one value shared by every patient, may be estimated;
- ``"fixed"``: never estimated (e.g. a published constant or an intervention setting).

A :class:`ParameterSpace` is the ordered collection of a model's parameters. It converts between named
dictionaries, batched tensors and the unconstrained space used by optimisers and encoders.

Example
-------
>>> import torch
>>> from hybridtwin.parameters import Parameter, ParameterSpace
>>> space = ParameterSpace([Parameter("beta", 3.2e-5, 1e-8, 1e-2, unit="1/(TCID50/ml)/day"),
...                         Parameter("f", 0.5, 0.0, 1.0, transform="logit")])
>>> z = space.to_unconstrained(space.default_tensor())
>>> [round(float(v), 8) for v in space.constrain(z)[0]]
[3.2e-05, 0.5]
>>> space.check_bounds(torch.tensor([[3.2e-5, 1.0]], dtype=torch.float64), ["pt1"])
Traceback (most recent call last):
...
ValueError: parameter value(s) outside their declared bounds: f must lie strictly inside (0, 1) ('logit' transform), got 1 for subject 'pt1'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

TRANSFORMS = ("log", "logit", "identity")
ROLES = ("patient", "population", "fixed")


@dataclass(frozen=True)
class Parameter:
    """One named model parameter.

    Parameters
    ----------
    name:
        ASCII name (the paper's symbol, Greek letters spelled out).
    default:
        Published default value.
    lower, upper:
        Plausible bounds (``None`` = unbounded on that side). ``logit`` needs both; ``log`` needs ``lower >= 0``.
    transform:
        ``"log"``, ``"logit"`` or ``"identity"``: the map to an unconstrained real number.
    unit:
        Free-text unit, e.g. ``"1/day"``.
    role:
        ``"patient"``, ``"population"`` or ``"fixed"`` (see module docstring).
    description:
        One line saying what the parameter means.
    """

    name: str
    default: float
    lower: float | None = None
    upper: float | None = None
    transform: str = "log"
    unit: str = ""
    role: str = "patient"
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"parameter name must be a Python identifier, got {self.name!r}")
        try:
            default = float(self.default)
        except (TypeError, ValueError):
            raise ValueError(f"parameter {self.name!r}: default must be a number, got {self.default!r}") from None
        if not math.isfinite(default):
            raise ValueError(f"parameter {self.name!r}: default must be finite, got {self.default!r}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"parameter {self.name!r}: transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if self.role not in ROLES:
            raise ValueError(f"parameter {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        lo = -math.inf if self.lower is None else float(self.lower)
        hi = math.inf if self.upper is None else float(self.upper)
        if math.isnan(lo) or math.isnan(hi) or not lo < hi:
            raise ValueError(f"parameter {self.name!r}: bounds must satisfy lower < upper, got ({self.lower}, {self.upper})")
        if not lo <= default <= hi:
            raise ValueError(
                f"parameter {self.name!r}: default {default:g} lies outside its bounds ({self.lower}, {self.upper})"
            )
        if self.transform == "log" and (lo < 0 or default <= 0):
            raise ValueError(
                f"parameter {self.name!r}: a 'log' transform needs a positive default and lower >= 0 "
                f"(got default {default:g}, lower {self.lower}); use transform='identity' for signed or zero values"
            )
        if self.transform == "logit" and not (math.isfinite(lo) and math.isfinite(hi) and lo < default < hi):
            raise ValueError(
                f"parameter {self.name!r}: a 'logit' transform needs finite bounds strictly around the default "
                f"(got default {default:g}, bounds ({self.lower}, {self.upper}))"
            )
        object.__setattr__(self, "default", default)

    def to_unconstrained(self, x: torch.Tensor) -> torch.Tensor:
        """Map values of this parameter to the real line."""
        if self.transform == "log":
            return torch.log(x)
        if self.transform == "logit":
            u = (x - self.lower) / (self.upper - self.lower)
            return torch.log(u) - torch.log1p(-u)
        return x

    def admissible(self, values) -> np.ndarray:
        """Boolean mask of the ``values`` this parameter may take: finite, within ``[lower, upper]``, and
        ``> 0`` for a ``log`` transform, strictly inside ``(lower, upper)`` for a ``logit`` transform.

        The bounds are compared in the precision of ``values`` (a float32 value at a float64 bound passes)."""
        x = np.asarray(values)
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(float)
        lo = np.asarray(-np.inf if self.lower is None else self.lower, dtype=x.dtype)
        hi = np.asarray(np.inf if self.upper is None else self.upper, dtype=x.dtype)
        with np.errstate(invalid="ignore"):
            if self.transform == "logit":
                ok = (x > lo) & (x < hi)
            else:
                ok = (x >= lo) & (x <= hi)
                if self.transform == "log":
                    ok &= x > 0
        return ok & np.isfinite(x)

    def admissible_text(self) -> str:
        """Human-readable admissible range, e.g. ``"in [1e-09, 0.01]"``."""
        lo = -math.inf if self.lower is None else float(self.lower)
        hi = math.inf if self.upper is None else float(self.upper)
        if self.transform == "logit":
            return f"strictly inside ({lo:g}, {hi:g}) ('logit' transform)"
        if self.transform == "log" and lo <= 0:
            return f"in (0, {hi:g}{')' if math.isinf(hi) else ']'} ('log' transform: > 0)"
        left = "(" if math.isinf(lo) else "["
        right = ")" if math.isinf(hi) else "]"
        return f"in {left}{lo:g}, {hi:g}{right}" + (" and finite" if math.isinf(lo) or math.isinf(hi) else "")

    def constrain(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_unconstrained`. The declared bounds are hard limits: a value beyond one (an
        unconstrained ``z`` past :meth:`unconstrained_bounds`, e.g. a wide posterior's tail) is held at the bound,
        so simulations, fits and reported intervals never use a value the model declares impossible."""
        if self.transform == "logit":
            return self.lower + (self.upper - self.lower) * torch.sigmoid(z)
        x = torch.exp(z) if self.transform == "log" else z
        lo = self.lower if self.lower is not None and not (self.transform == "log" and self.lower <= 0) else None
        if lo is None and self.upper is None:
            return x
        return torch.clamp(x, min=lo, max=self.upper)

    def unconstrained_bounds(self) -> tuple[float, float]:
        """The declared bounds on the unconstrained scale (``-inf``/``inf`` where open; a logit parameter's are
        never reached)."""
        if self.transform == "logit":
            return -math.inf, math.inf
        lo = -math.inf if self.lower is None else float(self.lower)
        hi = math.inf if self.upper is None else float(self.upper)
        if self.transform == "log":
            lo = math.log(lo) if lo > 0 else -math.inf
            hi = math.log(hi) if hi < math.inf else math.inf
        return lo, hi


@dataclass(frozen=True)
class ParameterSpace:
    """Ordered collection of :class:`Parameter` objects with batched conversions."""

    parameters: tuple[Parameter, ...] = field(default_factory=tuple)

    def __init__(self, parameters: Iterable[Parameter]):
        params = tuple(parameters)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"ParameterSpace takes Parameter objects, got {type(p).__name__}")
        names = [p.name for p in params]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate parameter names: {dup}")
        object.__setattr__(self, "parameters", params)

    # -- lookups -------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def __len__(self) -> int:
        return len(self.parameters)

    def __iter__(self):
        return iter(self.parameters)

    def __getitem__(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(f"unknown parameter {name!r}; known parameters: {', '.join(self.names)}")

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"unknown parameter {name!r}; known parameters: {', '.join(self.names)}") from None

    def defaults(self) -> dict[str, float]:
        return {p.name: p.default for p in self.parameters}

    def names_with_role(self, role: str) -> list[str]:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        return [p.name for p in self.parameters if p.role == role]

    # -- conversions -------------------------------------------------------------------------------------------
    def default_tensor(self, batch: int = 1, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        base = torch.tensor([p.default for p in self.parameters], dtype=dtype, device=device)
        return base.expand(batch, -1).clone()

    def tensor_from(
        self,
        values: Mapping[str, float] | pd.DataFrame | Sequence[Mapping[str, float]] | None,
        dtype: torch.dtype = torch.float64,
        device=None,
        context: str = "",
    ) -> torch.Tensor:
        """Batched (B, P) tensor from named values; names not given take their defaults.

        ``values`` may be a dict (one subject), a list of dicts or a DataFrame (one row per subject; columns
        that are not parameters are ignored only if ``context`` allows it -- see :func:`check_names`).
        """
        if values is None:
            return self.default_tensor(1, dtype, device)
        if isinstance(values, pd.DataFrame):
            self.check_names(values.columns, context)
            out = self.default_tensor(len(values), dtype, device)
            for name in values.columns:
                try:
                    col = values[name].to_numpy(dtype=float)
                except (TypeError, ValueError):
                    raise ValueError(f"parameter {name!r}{context} must be numeric") from None
                bad = ~np.isfinite(col)
                if bad.any():
                    raise ValueError(
                        f"parameter {name!r}{context} must be finite; non-finite values in rows "
                        f"{np.nonzero(bad)[0][:10].tolist()}"
                    )
                out[:, self.index(name)] = torch.tensor(col, dtype=dtype, device=device)
            return out
        elif isinstance(values, Mapping):
            rows = [values]
        else:
            rows = list(values)
        out = self.default_tensor(len(rows), dtype, device)
        for b, row in enumerate(rows):
            self.check_names(row.keys(), context)
            for name, value in row.items():
                v = _finite_float(value, f"parameter {name!r}{context}")
                out[b, self.index(name)] = v
        return out

    def check_names(self, names: Iterable[str], context: str = "") -> None:
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown}{context}; known parameters: {', '.join(self.names)}"
            )

    def check_bounds(self, theta, subject_ids: Sequence | None = None, context: str = "") -> None:
        """Raise ``ValueError`` unless every value of ``theta`` (B, P) (or (P,)) is admissible.

        Admissible (see :meth:`Parameter.admissible`): finite and within ``[lower, upper]``; a ``log``
        parameter must also be > 0 and a ``logit`` parameter strictly inside its bounds. The error names, for
        each offending parameter, its value(s), the subject id(s) (``subject_ids``, default the row numbers)
        and the admissible range. ``context`` is appended to the first sentence (e.g. ``" of model 'm'"``).
        """
        if torch.is_tensor(theta):
            x = theta.detach().cpu().numpy()
        else:
            x = np.asarray(theta, dtype=float)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise ValueError(f"check_bounds expects a (B, P) array of parameter values, got shape {x.shape}")
        self._check_width(x)
        ids = list(range(x.shape[0])) if subject_ids is None else list(subject_ids)
        if len(ids) != x.shape[0]:
            raise ValueError(f"check_bounds got {len(ids)} subject ids for {x.shape[0]} rows of parameter values")
        problems = []
        for i, p in enumerate(self.parameters):
            bad = np.nonzero(~p.admissible(x[:, i]))[0]
            if not len(bad):
                continue
            got = ", ".join(f"{float(x[j, i]):g} for subject {ids[j]!r}" for j in bad[:10])
            more = f" and {len(bad) - 10} more subject(s)" if len(bad) > 10 else ""
            problems.append(f"{p.name} must lie {p.admissible_text()}, got {got}{more}")
        if problems:
            raise ValueError(f"parameter value(s) outside their declared bounds{context}: " + "; ".join(problems))

    def to_unconstrained(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P) constrained values -> (B, P) unconstrained values."""
        self._check_width(x)
        return torch.stack([p.to_unconstrained(x[..., i]) for i, p in enumerate(self.parameters)], dim=-1)

    def constrain(self, z: torch.Tensor) -> torch.Tensor:
        """(B, P) unconstrained values -> (B, P) constrained values."""
        self._check_width(z)
        return torch.stack([p.constrain(z[..., i]) for i, p in enumerate(self.parameters)], dim=-1)

    def _check_width(self, x) -> None:
        if x.shape[-1] != len(self):
            raise ValueError(f"expected a tensor with {len(self)} parameters in its last dimension, got shape {tuple(x.shape)}")

    def as_frame(self) -> pd.DataFrame:
        """One row per parameter: name, default, bounds, transform, unit, role, description."""
        return pd.DataFrame(
            [
                dict(name=p.name, default=p.default, lower=p.lower, upper=p.upper, transform=p.transform,
                     unit=p.unit, role=p.role, description=p.description)
                for p in self.parameters
            ]
        )


def _finite_float(value, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return v
