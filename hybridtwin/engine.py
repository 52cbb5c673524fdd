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

import numpy as np
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


def check_run(population: pd.DataFrame, scenarios, times) -> tuple[pd.DataFrame, list, "np.ndarray"]:
    """Validated ``(population with subject_id, scenarios, time grid)`` of an engine's ``run``."""
    if not isinstance(population, pd.DataFrame) or population.empty:
        raise ValueError("population must be a non-empty DataFrame with one row per patient")
    scenarios = list(scenarios)
    if not scenarios or not all(isinstance(s, Scenario) for s in scenarios):
        raise ValueError("scenarios must be a non-empty sequence of Scenario objects")
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"scenario names must be unique, got duplicates {dup[:5]}")
    grid = check_times(times)
    pop = population.reset_index(drop=True)
    if "subject_id" not in pop.columns:
        pop = pop.assign(subject_id=[str(i) for i in range(len(pop))])
    if pop["subject_id"].duplicated().any():
        raise ValueError("population subject_id values must be unique")
    return pop, scenarios, grid


def pairs_to_set(ids, scenarios, grid, outputs, values: "np.ndarray", status) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long ``frame`` and ``status`` tables from values (patients, scenarios, outputs, times) and the pairs'
    statuses, ordered scenario by scenario (``status[j * n + i]``: patient i under scenario j)."""
    ids = np.asarray(ids, dtype=object)
    n, S, O, T = values.shape
    names = np.array([s.name for s in scenarios], dtype=object)
    frame = pd.DataFrame({
        "subject_id": np.repeat(ids, S * O * T), "scenario": np.tile(np.repeat(names, O * T), n),
        "time": np.tile(np.asarray(grid, dtype=float), n * S * O),
        "output": np.tile(np.repeat(np.array(outputs, dtype=object), T), n * S),
        "value": values.reshape(-1)})
    st = np.asarray(status, dtype=object).reshape(S, n).T.reshape(-1)
    status = pd.DataFrame({"subject_id": np.repeat(ids, S), "scenario": np.tile(names, n), "status": st})
    return frame, status


class ExactEngine:
    """The exact engine: :func:`hybridtwin.simulate` (batched adaptive ODE solves) per scenario.

    model: registry name or :class:`~hybridtwin.Model`; rtol, atol, max_steps, batch_size, progress: passed to
    :func:`~hybridtwin.simulate`. All (patient, scenario) pairs are solved as one batch (split into chunks of
    ``batch_size``).
    """

    def __init__(self, model, rtol: float = 1e-6, atol: float | None = None, max_steps: int = 100_000,
                 batch_size: int = 20_000, progress: bool | None = None):
        self.model = _models.get(model)
        self.rtol, self.atol, self.max_steps, self.batch_size = rtol, atol, max_steps, batch_size
        self.progress = progress

    def _outputs(self, outputs) -> list[str]:
        outputs = list(outputs) if outputs is not None else list(self.model.observable_names)
        known = set(self.model.observable_names) | set(self.model.all_state_names)
        unknown = [o for o in outputs if o not in known]
        if unknown:
            raise ValueError(f"outputs {unknown} are not observables or states of {self.model.name!r}")
        return outputs

    def simulate_pairs(self, params: pd.DataFrame, scenarios: Sequence[Scenario], times,
                       outputs: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
        """Row ``i`` of ``params`` (parameter columns; missing ones take defaults) under ``scenarios[i]``, all
        pairs in one batched solve. Returns values (N, outputs, times) and each pair's status (``"ok"`` or
        the failure; a failed pair's values are NaN from the failure on)."""
        scenarios = list(scenarios)
        if len(params) != len(scenarios):
            raise ValueError(f"simulate_pairs needs one scenario per parameter row, got {len(params)} rows and "
                             f"{len(scenarios)} scenarios")
        grid = check_times(times)
        outputs = self._outputs(outputs)
        params = params.drop(columns=[c for c in ("subject_id",) if c in params.columns]).reset_index(drop=True)
        over = pd.DataFrame([dict(sc.overrides) for sc in scenarios], index=params.index)
        if len(over.columns):
            defaults = self.model.parameter_space.defaults()
            for col in over.columns:  # overridden in some scenarios only: the population's value (or default) elsewhere
                base = params[col] if col in params.columns else pd.Series(defaults.get(col, np.nan), index=params.index)
                params[col] = over[col].fillna(base)
        keys = [str(i) for i in range(len(params))]
        params.insert(0, "subject_id", keys)
        dose_rows = [{"subject_id": keys[i], "time": float(d.time), "amount": float(d.amount), "target": d.target,
                      "duration": float(d.duration), "interval": d.interval, "additional": d.additional}
                     for i, sc in enumerate(scenarios) for d in sc.doses]
        doses = pd.DataFrame(dose_rows) if dose_rows else None
        if doses is not None and doses["interval"].isna().all():
            doses = doses.drop(columns=["interval", "additional"])
        with warnings.catch_warnings():  # failures are reported in the status instead
            warnings.simplefilter("ignore", RuntimeWarning)
            df = simulate(self.model, grid, params=params, doses=doses, rtol=self.rtol, atol=self.atol,
                          max_steps=self.max_steps, batch_size=self.batch_size, progress=self.progress)
        order = df["subject_id"].astype(int).to_numpy() * len(grid) + np.searchsorted(grid, df["time"].to_numpy())
        values = np.full((len(params) * len(grid), len(outputs)), np.nan)
        values[order] = df[outputs].to_numpy(dtype=float)
        st = df.attrs["status"]
        return values.reshape(len(params), len(grid), len(outputs)).transpose(0, 2, 1), [str(st[k]) for k in keys]

    def run(self, population: pd.DataFrame, scenarios: Sequence[Scenario], times,
            outputs: Sequence[str] | None = None) -> SimulationSet:
        """Simulate every patient of ``population`` under every scenario at ``times``; ``outputs`` selects
        observables/states (default: the model's observables)."""
        pop, scenarios, grid = check_run(population, scenarios, times)
        outputs = self._outputs(outputs)
        n = len(pop)
        params = pd.concat([pop.drop(columns="subject_id")] * len(scenarios), ignore_index=True)
        pairs = [sc for sc in scenarios for _ in range(n)]
        values, status = self.simulate_pairs(params, pairs, grid, outputs)
        frame, status = pairs_to_set(pop["subject_id"], scenarios, grid, outputs, values.reshape(len(scenarios), n,
                                     len(outputs), len(grid)).transpose(1, 0, 2, 3), status)
        result = SimulationSet(frame, status, engine=f"exact:{self.model.name}")
        if result.n_failed:
            warnings.warn(f"{result.n_failed} of {len(status)} (patient, scenario) simulations failed; they keep "
                          "their status and NaN values (SimulationSet.failed(), ok_frame())", RuntimeWarning,
                          stacklevel=2)
        return result


__all__ = ["Engine", "ExactEngine", "Scenario", "SimulationSet"]
