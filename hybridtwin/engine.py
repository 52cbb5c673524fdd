"""Simulation engines: one protocol for everything that turns (population x scenarios x times) into outputs.

An *engine* answers ``engine.run(population, scenarios, times) -> SimulationSet``. The exact engine
(:class:`ExactEngine`) integrates the model's ODEs for every patient and scenario; neural surrogate emulators
and virtual-trial runners plug in behind the same call, so a sweep or a trial can switch engines without
changing anything else.

- ``population``: one row per virtual patient -- ``subject_id`` (optional) and model parameter columns
  (missing parameters take the model's defaults).
- ``scenarios``: :class:`Scenario` objects -- a name, a dose schedule (:class:`~hybridtwin.Dose` list, given to
  every patient) and optional parameter overrides (e.g. an antiviral's ``Emax``), frozen and hashable.
- ``times``: the output grid (model time unit, >= 0, increasing).

A :class:`SimulationSet` holds the outputs in long form (``subject_id, scenario, time, output, value``) with
each (patient, scenario) pair's solver status; failed simulations keep their status and NaN values and are
excluded only on request (:meth:`SimulationSet.ok_frame`), never silently.

Example
-------
>>> import pandas as pd
>>> import hybridtwin as ht
>>> from hybridtwin.engine import ExactEngine, Scenario
>>> pop = pd.DataFrame({"subject_id": ["a", "b"], "delta_Ab": [0.02, 0.03]})
>>> prime = Scenario("prime", doses=(ht.Dose(0, 1.0, "Ag"),))
>>> boost = Scenario("prime+boost", doses=(ht.Dose(0, 1.0, "Ag"), ht.Dose(28, 1.0, "Ag")))
>>> sims = ExactEngine("vaccine_asc").run(pop, [prime, boost], [0, 28, 56], outputs=["log10_Ab"])
>>> sims.frame.shape, sims.n_failed
((12, 5), 0)
>>> wide = sims.frame.pivot_table(index=["subject_id", "time"], columns="scenario", values="value")
>>> bool((wide.loc[(slice(None), 56.0), "prime+boost"] > wide.loc[(slice(None), 56.0), "prime"]).all())
True
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence, runtime_checkable

import pandas as pd

from . import models as _models
from .dosing import Dose
from .simulation import check_times, simulate


@dataclass(frozen=True)
class Scenario:
    """A named intervention: a dose schedule given to every patient and parameter overrides (frozen, hashable).

    doses: tuple of :class:`~hybridtwin.Dose`; overrides: ``{parameter: value}`` applied to every patient
    (stored as a sorted tuple of pairs so that the scenario is hashable).
    """

    name: str
    doses: tuple = ()
    overrides: tuple = field(default=())

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a scenario needs a non-empty name, got {self.name!r}")
        doses = (self.doses,) if isinstance(self.doses, Dose) else tuple(self.doses)
        bad = [d for d in doses if not isinstance(d, Dose)]
        if bad:
            raise TypeError(f"scenario {self.name!r}: doses must be Dose objects, got {type(bad[0]).__name__}")
        object.__setattr__(self, "doses", doses)
        over = self.overrides.items() if isinstance(self.overrides, Mapping) else self.overrides
        pairs = []
        for item in over:
            try:
                k, v = item
                v = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"scenario {self.name!r}: overrides must be parameter=number pairs, got {item!r}") from None
            if not math.isfinite(v):
                raise ValueError(f"scenario {self.name!r}: override {k!r} must be finite, got {v!r}")
            pairs.append((str(k), v))
        object.__setattr__(self, "overrides", tuple(sorted(pairs)))


@dataclass
class SimulationSet:
    """Outputs of an engine run: ``frame`` (long: ``subject_id, scenario, time, output, value``) and
    ``status`` (``subject_id, scenario, status``; ``"ok"`` or the failure)."""

    frame: pd.DataFrame
    status: pd.DataFrame
    engine: str = ""

    @property
    def n_failed(self) -> int:
        return int((self.status["status"] != "ok").sum())

    def failed(self) -> pd.DataFrame:
        """The (patient, scenario) pairs whose simulation failed, with their status."""
        return self.status[self.status["status"] != "ok"].reset_index(drop=True)

    def ok_frame(self) -> pd.DataFrame:
        """``frame`` without the failed pairs -- an explicit exclusion (see :meth:`failed` for what was left out)."""
        bad = self.failed()[["subject_id", "scenario"]]
        if not len(bad):
            return self.frame
        keys = pd.MultiIndex.from_frame(self.frame[["subject_id", "scenario"]])
        return self.frame[~keys.isin(pd.MultiIndex.from_frame(bad))].reset_index(drop=True)


@runtime_checkable
class Engine(Protocol):
    """What every engine provides (the exact solver, surrogate emulators, ...)."""

    def run(self, population: pd.DataFrame, scenarios: Sequence[Scenario], times,
            outputs: Sequence[str] | None = None) -> SimulationSet: ...


class ExactEngine:
    """The exact engine: :func:`hybridtwin.simulate` (batched adaptive ODE solves) per scenario.

    model: registry name or :class:`~hybridtwin.Model`; rtol, atol, max_steps, batch_size: passed to
    :func:`~hybridtwin.simulate`.
    """

    def __init__(self, model, rtol: float = 1e-6, atol: float | None = None, max_steps: int = 100_000,
                 batch_size: int = 20_000):
        self.model = _models.get(model)
        self.rtol, self.atol, self.max_steps, self.batch_size = rtol, atol, max_steps, batch_size

    def run(self, population: pd.DataFrame, scenarios: Sequence[Scenario], times,
            outputs: Sequence[str] | None = None) -> SimulationSet:
        """Simulate every patient of ``population`` under every scenario at ``times``; ``outputs`` selects
        observables/states (default: the model's observables)."""
        if not isinstance(population, pd.DataFrame) or population.empty:
            raise ValueError("population must be a non-empty DataFrame with one row per patient")
        scenarios = list(scenarios)
        if not scenarios or not all(isinstance(s, Scenario) for s in scenarios):
            raise ValueError("scenarios must be a non-empty sequence of Scenario objects")
        names = [s.name for s in scenarios]
        if len(set(names)) != len(names):
            raise ValueError(f"scenario names must be unique, got {names}")
        grid = check_times(times)
        outputs = list(outputs) if outputs is not None else list(self.model.observable_names)
        known = set(self.model.observable_names) | set(self.model.all_state_names)
        unknown = [o for o in outputs if o not in known]
        if unknown:
            raise ValueError(f"outputs {unknown} are not observables or states of {self.model.name!r}")
        pop = population.reset_index(drop=True)
        if "subject_id" not in pop.columns:
            pop = pop.assign(subject_id=[str(i) for i in range(len(pop))])
        frames, statuses = [], []
        for sc in scenarios:
            params = pop.assign(**dict(sc.overrides)) if sc.overrides else pop
            with warnings.catch_warnings():  # failures are reported in the status table instead
                warnings.simplefilter("ignore", RuntimeWarning)
                df = simulate(self.model, grid, params=params, doses=list(sc.doses) or None, rtol=self.rtol,
                              atol=self.atol, max_steps=self.max_steps, batch_size=self.batch_size)
            long = df.melt(id_vars=["subject_id", "time"], value_vars=outputs, var_name="output", value_name="value")
            frames.append(long.assign(scenario=sc.name))
            st = df.attrs["status"]
            statuses.append(pd.DataFrame({"subject_id": list(st), "scenario": sc.name, "status": list(st.values())}))
        frame = pd.concat(frames, ignore_index=True)[["subject_id", "scenario", "time", "output", "value"]]
        status = pd.concat(statuses, ignore_index=True)
        result = SimulationSet(frame, status, engine=f"exact:{self.model.name}")
        if result.n_failed:
            warnings.warn(f"{result.n_failed} of {len(status)} (patient, scenario) simulations failed; they keep "
                          "their status and NaN values (SimulationSet.failed(), ok_frame())", RuntimeWarning,
                          stacklevel=2)
        return result


__all__ = ["Engine", "ExactEngine", "Scenario", "SimulationSet"]
