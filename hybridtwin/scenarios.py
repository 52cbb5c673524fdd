"""Scenario spaces and grids: intervention schedules described by a few numbers.

A :class:`ScenarioSpace` is a dose *template*: a list of doses whose time and amount are either fixed or a
range (a *factor*), plus optional parameter overrides with ranges (e.g. an antiviral's ``Emax``). Every
point of the space is a :class:`~hybridtwin.engine.Scenario`; the space names its factors
(``"boost.time"``, ``"boost.amount"``, ``"override.Emax"``), turns scenarios back into factor vectors (what a
surrogate emulator reads, :meth:`ScenarioSpace.encode`), says whether a scenario lies inside it, draws
space-filling designs (scipy's Sobol / Latin hypercube, :meth:`ScenarioSpace.sample`) and builds
:class:`ScenarioGrid` products of factor values (``boost day 14..365 x dose 0.25..4``).

A dose of amount 0 is allowed (it does nothing), so "no booster" is a point of a space whose booster amount
ranges from 0.

Example
-------
>>> from hybridtwin.scenarios import ScenarioSpace
>>> space = ScenarioSpace([{"name": "prime", "target": "Ag", "time": 0, "amount": 1},
...                        {"name": "boost", "target": "Ag", "time": [14, 365], "amount": [0.25, 4]}])
>>> space.factors
['boost.time', 'boost.amount']
>>> grid = space.grid({"boost.time": [90, 180, 365], "boost.amount": [0.5, 1, 2]})
>>> len(grid), grid[0].name
(9, 'boost.time=90,boost.amount=0.5')
>>> space.encode(list(grid)[:2])[0].tolist()
[[90.0, 0.5], [90.0, 1.0]]
>>> space.contains(space.scenario({"boost.time": 400, "boost.amount": 1}))
False
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from .dosing import Dose
from .engine import Scenario


def _range(value, what: str) -> float | tuple[float, float]:
    """A fixed number or a (low, high) range with low < high, both finite."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{what} must be a number or a [low, high] range, got {value!r}")
        lo, hi = (float(v) for v in value)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"{what} range must be finite with low < high, got {value!r}")
        return (lo, hi)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be a number or a [low, high] range, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DoseTemplate:
    """One dose of a :class:`ScenarioSpace`: ``time`` and ``amount`` fixed numbers or ``(low, high)`` ranges."""

    name: str
    target: str
    time: float | tuple = 0.0
    amount: float | tuple = 1.0
    duration: float = 0.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or "." in self.name or "," in self.name:
            raise ValueError(f"a dose template needs a name without '.' or ',', got {self.name!r}")
        object.__setattr__(self, "time", _range(self.time, f"dose {self.name!r} time"))
        object.__setattr__(self, "amount", _range(self.amount, f"dose {self.name!r} amount"))
        for field, value in (("time", self.time), ("amount", self.amount)):
            low = value[0] if isinstance(value, tuple) else value
            if low < 0:
                raise ValueError(f"dose {self.name!r} {field} must be >= 0, got {value!r}")
        Dose(0.0, 0.0, self.target, self.duration)  # validates target and duration


class ScenarioSpace:
    """A dose template with ranged factors (see the module docstring).

    doses: :class:`DoseTemplate` objects or mappings with ``name, target, time, amount`` (``duration``
    optional); time/amount a number (fixed) or ``[low, high]`` (a factor named ``"<dose>.time"`` /
    ``"<dose>.amount"``). overrides: ``{parameter: number or [low, high]}`` applied to every patient
    (factors ``"override.<parameter>"``).
    """

    def __init__(self, doses: Sequence[DoseTemplate | Mapping], overrides: Mapping | None = None):
        templates = []
        for i, d in enumerate(doses):
            if isinstance(d, Mapping):
                unknown = set(d) - {"name", "target", "time", "amount", "duration"}
                if unknown:
                    raise ValueError(f"doses[{i}]: unknown key(s) {sorted(unknown)}; allowed: name, target, time, "
                                     "amount, duration")
                d = DoseTemplate(**{"name": f"dose{i + 1}", **d})
            if not isinstance(d, DoseTemplate):
                raise TypeError(f"doses[{i}] must be a DoseTemplate or a mapping, got {type(d).__name__}")
            templates.append(d)
        names = [d.name for d in templates]
        if len(set(names)) != len(names):
            raise ValueError(f"dose names must be unique, got {names}")
        self.doses = tuple(templates)
        self.overrides = {str(k): _range(v, f"override {k!r}") for k, v in (overrides or {}).items()}
        self._factors: list[tuple[str, float, float]] = []
        for d in self.doses:
            for field in ("time", "amount"):
                v = getattr(d, field)
                if isinstance(v, tuple):
                    self._factors.append((f"{d.name}.{field}", *v))
        for k, v in self.overrides.items():
            if isinstance(v, tuple):
                self._factors.append((f"override.{k}", *v))

    # ------------------------------------------------------------------ description
    @property
    def factors(self) -> list[str]:
        """Names of the ranged quantities, in encoding order."""
        return [f[0] for f in self._factors]

    @property
    def bounds(self) -> np.ndarray:
        """(F, 2) low/high of each factor."""
        return np.array([[lo, hi] for _, lo, hi in self._factors], dtype=float).reshape(-1, 2)

    def to_dict(self) -> dict:
        return {"doses": [{"name": d.name, "target": d.target, "time": list(d.time) if isinstance(d.time, tuple)
                           else d.time, "amount": list(d.amount) if isinstance(d.amount, tuple) else d.amount,
                           "duration": d.duration} for d in self.doses],
                "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in self.overrides.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ScenarioSpace":
        unknown = set(d) - {"doses", "overrides"}
        if unknown:
            raise ValueError(f"scenario space: unknown key(s) {sorted(unknown)}; allowed: doses, overrides")
        return cls(d.get("doses", ()), d.get("overrides"))

    def __repr__(self) -> str:
        return f"ScenarioSpace(factors={self.factors})"

    # ------------------------------------------------------------------ scenarios
    def _values(self, values) -> dict[str, float]:
        if isinstance(values, Mapping):
            unknown = set(values) - set(self.factors)
            missing = set(self.factors) - set(values)
            if unknown or missing:
                raise ValueError(f"scenario factors: unknown {sorted(unknown)}, missing {sorted(missing)}; the space's "
                                 f"factors are {self.factors}")
            return {k: float(values[k]) for k in self.factors}
        values = list(values)
        if len(values) != len(self.factors):
            raise ValueError(f"expected {len(self.factors)} factor values {self.factors}, got {len(values)}")
        return dict(zip(self.factors, (float(v) for v in values)))

    def scenario(self, values, name: str | None = None) -> Scenario:
        """The scenario at factor ``values`` (mapping or sequence in :attr:`factors` order); no range check
        (see :meth:`contains`). The default name lists the factor values."""
        v = self._values(values)
        doses = []
        for d in self.doses:
            t = v[f"{d.name}.time"] if isinstance(d.time, tuple) else d.time
            a = v[f"{d.name}.amount"] if isinstance(d.amount, tuple) else d.amount
            doses.append(Dose(t, a, d.target, d.duration))
        over = {k: (v[f"override.{k}"] if isinstance(r, tuple) else r) for k, r in self.overrides.items()}
        return Scenario(name or ",".join(f"{k}={x:g}" for k, x in v.items()) or "fixed", tuple(doses), over)

    def encode(self, scenarios: Sequence[Scenario]) -> tuple[np.ndarray, np.ndarray]:
        """(S, F) factor values of ``scenarios`` and (S,) whether each lies inside the ranges. A scenario
        whose structure differs from the template (other dose count, target, duration, fixed value or
        override set) raises ``ValueError`` naming it: no factor vector describes it."""
        X = np.zeros((len(scenarios), len(self.factors)))
        index = {f: j for j, f in enumerate(self.factors)}
        for i, sc in enumerate(scenarios):
            if not isinstance(sc, Scenario):
                raise TypeError(f"scenarios[{i}] must be a Scenario, got {type(sc).__name__}")
            if len(sc.doses) != len(self.doses):
                raise ValueError(f"scenario {sc.name!r} has {len(sc.doses)} dose(s); the space's template has "
                                 f"{len(self.doses)} ({[d.name for d in self.doses]})")
            for d, dose in zip(self.doses, sc.doses):
                if dose.target != d.target or float(dose.duration) != d.duration or dose.additional:
                    raise ValueError(f"scenario {sc.name!r}: dose {d.name!r} should target {d.target!r} with "
                                     f"duration {d.duration}, got {dose}")
                for field in ("time", "amount"):
                    t, got = getattr(d, field), float(getattr(dose, field))
                    if isinstance(t, tuple):
                        X[i, index[f"{d.name}.{field}"]] = got
                    elif not math.isclose(got, t, rel_tol=1e-9, abs_tol=1e-12):
                        raise ValueError(f"scenario {sc.name!r}: dose {d.name!r} {field} is fixed at {t} in the "
                                         f"space, got {got}")
            over = dict(sc.overrides)
            if set(over) != set(self.overrides):
                raise ValueError(f"scenario {sc.name!r} overrides {sorted(over)}; the space has "
                                 f"{sorted(self.overrides)}")
            for k, r in self.overrides.items():
                if isinstance(r, tuple):
                    X[i, index[f"override.{k}"]] = over[k]
                elif not math.isclose(over[k], r, rel_tol=1e-9):
                    raise ValueError(f"scenario {sc.name!r}: override {k!r} is fixed at {r} in the space, got {over[k]}")
        b = self.bounds
        inside = np.all((X >= b[:, 0] - 1e-12) & (X <= b[:, 1] + 1e-12), axis=1) if len(b) else np.ones(len(X), bool)
        return X, inside

    def contains(self, scenario: Scenario) -> bool:
        """Whether ``scenario`` fits the template with every factor inside its range."""
        try:
            return bool(self.encode([scenario])[1][0])
        except ValueError:
            return False

    def sample(self, n: int, seed: int = 0, method: str = "sobol") -> list[Scenario]:
        """``n`` scenarios from a space-filling design (``"sobol"`` scrambled, ``"lhs"`` Latin hypercube or
        ``"random"``) over the factor ranges."""
        u = unit_design(n, len(self.factors), seed, method)
        b = self.bounds
        X = b[:, 0] + u * (b[:, 1] - b[:, 0])
        return [self.scenario(x, name=f"s{i}") for i, x in enumerate(X)]

    def grid(self, values: Mapping[str, Sequence[float]]) -> "ScenarioGrid":
        """The product of ``values`` per factor (every factor given)."""
        return ScenarioGrid(self, values)


def values_from(v, what: str) -> list[float]:
    """Numbers from a config value: a number, a list, or ``{start, stop, num}`` (evenly spaced, ends included).

    >>> values_from({"start": 0, "stop": 1, "num": 3}, "times"), values_from(2, "dose")
    ([0.0, 0.5, 1.0], [2.0])
    """
    if isinstance(v, Mapping):
        unknown, missing = set(v) - {"start", "stop", "num"}, {"start", "stop", "num"} - set(v)
        if unknown or missing:
            raise ValueError(f"{what}: a range needs exactly start, stop and num (unknown {sorted(unknown)}, missing "
                             f"{sorted(missing)})")
        return [float(x) for x in np.linspace(float(v["start"]), float(v["stop"]), int(v["num"]))]
    if isinstance(v, (list, tuple, np.ndarray, range)):
        return [float(x) for x in v]
    try:
        return [float(v)]
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected a number, a list or {{start, stop, num}}, got {v!r}") from None


def unit_design(n: int, dim: int, seed: int = 0, method: str = "sobol") -> np.ndarray:
    """(n, dim) points in [0, 1)^dim: scrambled Sobol, Latin hypercube (scipy.stats.qmc) or uniform random."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if dim == 0:
        return np.zeros((n, 0))
    from scipy.stats import qmc

    if method == "sobol":
        import warnings

        with warnings.catch_warnings():  # n need not be a power of 2 here: balance is not required
            warnings.simplefilter("ignore", UserWarning)
            return qmc.Sobol(dim, scramble=True, seed=seed).random(n)
    if method == "lhs":
        return qmc.LatinHypercube(dim, seed=seed).random(n)
    if method == "random":
        return np.random.default_rng(seed).random((n, dim))
    raise ValueError(f"design method must be 'sobol', 'lhs' or 'random', got {method!r}")


class ScenarioGrid:
    """The product of factor values of a :class:`ScenarioSpace`: iterable, sized and indexable; scenario
    names list the factor values. :meth:`frame` gives the factor values per scenario name (for plots)."""

    def __init__(self, space: ScenarioSpace, values: Mapping[str, Sequence[float]]):
        missing = set(space.factors) - set(values)
        unknown = set(values) - set(space.factors)
        if missing or unknown:
            raise ValueError(f"a grid needs values for every factor: missing {sorted(missing)}, unknown "
                             f"{sorted(unknown)} (factors: {space.factors})")
        self.space = space
        self.values = {}
        for f in space.factors:
            v = np.atleast_1d(np.asarray(values[f], dtype=float))
            if v.ndim != 1 or not len(v) or not np.all(np.isfinite(v)):
                raise ValueError(f"grid values of {f!r} must be a non-empty list of finite numbers, got {values[f]!r}")
            self.values[f] = v
        self._shape = tuple(len(v) for v in self.values.values())

    def __len__(self) -> int:
        return int(np.prod(self._shape)) if self._shape else 1

    def __getitem__(self, i: int) -> Scenario:
        if not -len(self) <= i < len(self):
            raise IndexError(f"grid index {i} out of range for {len(self)} scenarios")
        idx = np.unravel_index(i % len(self), self._shape) if self._shape else ()
        return self.space.scenario([v[j] for v, j in zip(self.values.values(), idx)])

    def __iter__(self) -> Iterator[Scenario]:
        for combo in itertools.product(*self.values.values()):
            yield self.space.scenario(list(combo))

    def frame(self) -> pd.DataFrame:
        """One row per scenario: ``scenario`` (its name) and one column per factor."""
        rows = list(itertools.product(*self.values.values()))
        df = pd.DataFrame(rows, columns=list(self.values))
        return df.assign(scenario=[self.space.scenario(list(r)).name for r in rows])[["scenario", *self.values]]

    def __repr__(self) -> str:
        return f"ScenarioGrid({' x '.join(f'{k}[{len(v)}]' for k, v in self.values.items())} = {len(self)})"


__all__ = ["DoseTemplate", "ScenarioGrid", "ScenarioSpace", "unit_design"]
