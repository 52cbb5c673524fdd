"""The domain of a surrogate emulator: patient parameter ranges, a scenario space, an output grid.

A :class:`ParameterDomain` gives each varied patient parameter a range (sampled and scaled on the log scale
when the range is positive, linearly otherwise); every other parameter is held at a fixed value (the
model's default unless given). A :class:`Domain` adds the model, the :class:`~hybridtwin.scenarios.ScenarioSpace`,
the output times and the outputs; it reads and writes plain dictionaries (YAML files for the CLI).

Example
-------
>>> from hybridtwin.surrogate import Domain
>>> d = Domain.from_dict({"model": "vaccine_asc", "parameters": {"beta_S": [1000, 16000], "delta_Ab": [0.01, 0.05]},
...                       "scenarios": {"doses": [{"name": "prime", "target": "Ag", "time": 0, "amount": 1},
...                                               {"name": "boost", "target": "Ag", "time": [14, 180], "amount": 1}]},
...                       "times": {"start": 7, "stop": 365, "num": 5}, "outputs": ["log10_Ab"]})
>>> d.input_names
['beta_S', 'delta_Ab', 'boost.time']
>>> pop, scen = d.sample(3, seed=0)
>>> len(pop), len(scen), bool(d.parameters.encode(pop)[1].all())
(3, 3, True)
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .. import models as _models
from ..scenarios import ScenarioSpace, unit_design, values_from
from ..simulation import check_times


class ParameterDomain:
    """Ranges of the varied patient parameters of ``model`` and the values of the others.

    ranges: ``{parameter: (low, high)}`` inside the parameter's declared bounds; log scale when low > 0
    (unless ``scale={name: "linear"}``). fixed: values of non-varied parameters (default: the model's defaults).
    """

    def __init__(self, model, ranges: Mapping[str, Sequence[float]], fixed: Mapping[str, float] | None = None,
                 scale: Mapping[str, str] | None = None):
        self.model = _models.get(model)
        space = self.model.parameter_space
        names = list(self.model.parameter_names)
        if not ranges:
            raise ValueError("a parameter domain needs at least one varied parameter (ranges)")
        self.names, lows, highs, self.log = [], [], [], []
        for name, r in ranges.items():
            if name not in names:
                raise ValueError(f"{name!r} is not a parameter of {self.model.name!r}; parameters: {names}")
            try:
                lo, hi = (float(v) for v in r)
            except (TypeError, ValueError):
                raise ValueError(f"range of {name!r} must be [low, high], got {r!r}") from None
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"range of {name!r} must be finite with low < high, got {r!r}")
            p = space[name]
            if lo < p.lower or hi > p.upper:
                raise ValueError(f"range of {name!r} [{lo:g}, {hi:g}] leaves its declared bounds "
                                 f"[{p.lower:g}, {p.upper:g}]")
            kind = (scale or {}).get(name, "log" if lo > 0 else "linear")
            if kind not in ("log", "linear") or (kind == "log" and lo <= 0):
                raise ValueError(f"scale of {name!r} must be 'linear' or 'log' (log needs low > 0), got {kind!r}")
            self.names.append(name)
            lows.append(lo)
            highs.append(hi)
            self.log.append(kind == "log")
        self.low, self.high = np.array(lows), np.array(highs)
        self.log = np.array(self.log)
        defaults = space.defaults()
        fixed = dict(fixed or {})
        unknown = set(fixed) - set(names)
        if unknown:
            raise ValueError(f"fixed values for unknown parameter(s) {sorted(unknown)} of {self.model.name!r}")
        clash = set(fixed) & set(self.names)
        if clash:
            raise ValueError(f"parameter(s) {sorted(clash)} are both varied and fixed")
        self.fixed = {n: float(fixed.get(n, defaults[n])) for n in names if n not in self.names}

    def _scaled(self, values: np.ndarray) -> np.ndarray:
        lo, hi = self.low, self.high
        v = np.where(self.log, np.log(np.maximum(values, 1e-300)), values)
        a, b = np.where(self.log, np.log(lo), lo), np.where(self.log, np.log(hi), hi)
        return (v - a) / (b - a)

    def from_unit(self, u: np.ndarray) -> pd.DataFrame:
        """Parameter table from points of the unit cube (one column per varied parameter)."""
        a = np.where(self.log, np.log(self.low), self.low)
        b = np.where(self.log, np.log(self.high), self.high)
        v = a + np.asarray(u) * (b - a)
        return pd.DataFrame(np.where(self.log, np.exp(v), v), columns=self.names)

    def encode(self, population: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(N, P) unit-scaled varied parameters and (N,) whether each patient lies inside the domain (varied
        parameters in range; any other parameter column equal to its fixed value). A missing varied
        parameter raises ``ValueError``."""
        missing = [n for n in self.names if n not in population.columns]
        if missing:
            raise ValueError(f"population lacks the surrogate's input parameter(s) {missing}")
        unknown = [c for c in population.columns if c != "subject_id" and c not in self.names and c not in self.fixed]
        if unknown:
            raise ValueError(f"population column(s) {unknown} are not parameters of {self.model.name!r}")
        X = population[self.names].to_numpy(dtype=float)
        U = self._scaled(X)
        inside = np.all((U >= -1e-9) & (U <= 1 + 1e-9), axis=1) & np.all(np.isfinite(X), axis=1)
        for c in population.columns:
            if c in self.fixed:
                inside &= np.isclose(population[c].to_numpy(dtype=float), self.fixed[c], rtol=1e-9)
        return U, inside

    def to_dict(self) -> dict:
        return {"parameters": {n: [float(lo), float(hi)] for n, lo, hi in zip(self.names, self.low, self.high)},
                "fixed": dict(self.fixed), "scale": {n: "log" if g else "linear" for n, g in zip(self.names, self.log)}}


class Domain:
    """What a surrogate emulates: ``model``, patient ``parameters`` (:class:`ParameterDomain`), ``scenarios``
    (:class:`~hybridtwin.scenarios.ScenarioSpace`), output ``times`` and ``outputs`` (default the model's
    observables); ``floor``: ``{output: value}`` below which an output is reported at the floor, by the exact
    engine in training and certification and hence by the surrogate."""

    def __init__(self, parameters: ParameterDomain, scenarios: ScenarioSpace, times, outputs: Sequence[str] | None = None,
                 floor: Mapping[str, float] | None = None):
        if not isinstance(parameters, ParameterDomain):
            raise TypeError("parameters must be a ParameterDomain")
        if not isinstance(scenarios, ScenarioSpace):
            raise TypeError("scenarios must be a ScenarioSpace")
        self.parameters, self.scenarios = parameters, scenarios
        self.model = parameters.model
        self.times = check_times(times)
        outputs = list(outputs) if outputs is not None else list(self.model.observable_names)
        known = set(self.model.observable_names) | set(self.model.all_state_names)
        bad = [o for o in outputs if o not in known]
        if bad or not outputs:
            raise ValueError(f"outputs {bad or outputs} are not observables or states of {self.model.name!r}")
        self.outputs = outputs
        floor = dict(floor or {})
        bad = [k for k in floor if k not in outputs]
        if bad:
            raise ValueError(f"floor names {bad}, which are not outputs {outputs}")
        for k, v in floor.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"floor of {k!r} must be a finite number, got {v!r}")
        #: per output, the value below which results are reported at the floor (e.g. log10 V below 1 copy/ml:
        #: far below any assay's limit, where the exact value carries no information but spans tens of log10)
        self.floor = {k: float(v) for k, v in floor.items()}
        targets = set(self.model.all_state_names) | set(self.model.interventions)
        for d in scenarios.doses:
            if d.target not in targets:
                raise ValueError(f"dose {d.name!r} targets {d.target!r}, which is not a state or intervention of "
                                 f"{self.model.name!r}")
        over = [k for k in scenarios.overrides if k not in self.model.parameter_names]
        if over:
            raise ValueError(f"scenario overrides {over} are not parameters of {self.model.name!r}")
        both = set(scenarios.overrides) & set(parameters.names)
        if both:
            raise ValueError(f"{sorted(both)} are both patient inputs and scenario overrides")

    @property
    def input_names(self) -> list[str]:
        return list(self.parameters.names) + list(self.scenarios.factors)

    def sample(self, n: int, seed: int = 0, method: str = "sobol") -> tuple[pd.DataFrame, list]:
        """``n`` (patient, scenario) pairs from one space-filling design over parameters and factors jointly."""
        return self.from_unit(unit_design(n, len(self.parameters.names) + len(self.scenarios.factors), seed, method))

    def from_unit(self, u: np.ndarray) -> tuple[pd.DataFrame, list]:
        """Patients and scenarios at unit-scaled inputs ``u`` (n, parameters + factors), pair ``i`` in row ``i``."""
        P = len(self.parameters.names)
        b = self.scenarios.bounds
        X = b[:, 0] + u[:, P:] * (b[:, 1] - b[:, 0]) if len(b) else np.zeros((len(u), 0))
        return self.parameters.from_unit(u[:, :P]), [self.scenarios.scenario(x, name=f"s{i}") for i, x in enumerate(X)]

    def to_dict(self) -> dict:
        d = self.parameters.to_dict()
        return {"model": self.model.name, **d, "scenarios": self.scenarios.to_dict(),
                "times": [float(t) for t in self.times], "outputs": list(self.outputs), "floor": dict(self.floor)}

    @classmethod
    def from_dict(cls, d: Mapping, model=None) -> "Domain":
        """From ``{model, parameters: {name: [lo, hi]}, fixed?, scale?, scenarios: {doses, overrides?}, times,
        outputs?}``; ``times`` a list or ``{start, stop, num}`` (evenly spaced). ``model``: a
        :class:`~hybridtwin.Model` to use instead of looking ``d["model"]`` up (e.g. a trained twin's model)."""
        allowed = {"model", "parameters", "fixed", "scale", "scenarios", "times", "outputs", "floor"}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"surrogate domain: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        for key in ("parameters", "scenarios", "times") + (("model",) if model is None else ()):
            if key not in d:
                raise ValueError(f"surrogate domain: {key!r} is required")
        times = values_from(d["times"], "surrogate domain times")
        params = ParameterDomain(model if model is not None else d["model"], d["parameters"], d.get("fixed"),
                                 d.get("scale"))
        return cls(params, ScenarioSpace.from_dict(d["scenarios"]), times, d.get("outputs"), d.get("floor"))

    def __repr__(self) -> str:
        return (f"Domain(model={self.model.name!r}, inputs={self.input_names}, times={len(self.times)}, "
                f"outputs={self.outputs})")


def twin_domain(twin, scenarios: ScenarioSpace, times, outputs: Sequence[str] | None = None, width: float = 3.0,
                floor: Mapping[str, float] | None = None) -> Domain:
    """A domain over a trained twin's patient parameters: each within ``width`` between-patient SDs of its
    typical value (on the twin's unconstrained scale, reference covariates), clipped to the declared bounds;
    outputs default to the twin's observables."""
    import torch

    space = twin.model.parameter_space
    with torch.no_grad():
        mu, omega = twin.mu.detach().reshape(1, -1), twin.log_omega.detach().exp().reshape(1, -1)
        lo, hi = twin.theta(mu - width * omega)[0], twin.theta(mu + width * omega)[0]
    ranges = {}
    for n in twin.patient_names:
        j = twin.model.parameter_names.index(n)
        a, b = sorted((float(lo[j]), float(hi[j])))
        p = space[n]
        ranges[n] = [max(a, p.lower), min(b, p.upper)]
    params = ParameterDomain(twin.model, ranges)
    return Domain(params, scenarios, times, outputs if outputs is not None else list(twin.config.observables), floor)
