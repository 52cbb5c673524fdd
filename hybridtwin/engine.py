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

    def to_observations(self, sep: str = "|") -> pd.DataFrame:
        """The simulations in the canonical long observation schema (``subject_id, time, observable, value,
        cohort``): one virtual subject per (patient, scenario) pair, ``"<patient><sep><scenario>"``, the
        scenario as its cohort; failed pairs are left out (see :meth:`failed`)."""
        f = self.ok_frame()
        return pd.DataFrame({"subject_id": f["subject_id"].astype(str) + sep + f["scenario"].astype(str),
                             "time": f["time"].to_numpy(float), "observable": f["output"].to_numpy(),
                             "value": f["value"].to_numpy(float), "cohort": f["scenario"].to_numpy()})

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

    def labels(a):  # object columns as built: pandas' string dtype would check every row (half of a sweep's table)
        return pd.Series(a, dtype=object, copy=False)

    # every column is a fresh array (values copied: the caller keeps its own), so the frame may take them as they
    # are: copying them into consolidated blocks cost as much again (pairs_to_set of 20,000 x 15 rows: 21 ms -> 10 ms)
    frame = pd.DataFrame({
        "subject_id": labels(np.repeat(ids, S * O * T)), "scenario": labels(np.tile(np.repeat(names, O * T), n)),
        "time": pd.Series(np.tile(np.asarray(grid, dtype=float), n * S * O), copy=False),
        "output": labels(np.tile(np.repeat(np.array(outputs, dtype=object), T), n * S)),
        "value": pd.Series(np.array(values, copy=True).reshape(-1), copy=False)}, copy=False)
    st = np.asarray(status, dtype=object).reshape(S, n).T.reshape(-1)
    status = pd.DataFrame({"subject_id": np.repeat(ids, S), "scenario": np.tile(names, n), "status": st})
    return frame, status


def run_product(engine, population: pd.DataFrame, scenarios, times, outputs, label: str) -> SimulationSet:
    """Every patient of ``population`` under every scenario through ``engine.simulate_pairs`` (one batch),
    as a :class:`SimulationSet`; failures keep their status and are warned about."""
    pop, scenarios, grid = check_run(population, scenarios, times)
    outputs = engine._outputs(outputs)
    n = len(pop)
    params = pd.concat([pop.drop(columns="subject_id")] * len(scenarios), ignore_index=True)
    values, status = engine.simulate_pairs(params, [sc for sc in scenarios for _ in range(n)], grid, outputs)
    frame, status = pairs_to_set(pop["subject_id"], scenarios, grid, outputs, values.reshape(
        len(scenarios), n, len(outputs), len(grid)).transpose(1, 0, 2, 3), status)
    result = SimulationSet(frame, status, engine=label)
    if result.n_failed:
        warnings.warn(f"{result.n_failed} of {len(status)} (patient, scenario) simulations failed; they keep "
                      "their status and NaN values (SimulationSet.failed(), ok_frame())", RuntimeWarning, stacklevel=3)
    return result


class ExactEngine:
    """The exact engine: :func:`hybridtwin.simulate` (batched adaptive ODE solves) per scenario.

    model: registry name or :class:`~hybridtwin.Model`; rtol, atol, max_steps, batch_size, progress, fused: passed
    to :func:`~hybridtwin.simulate` (``fused=True``: compiled solver steps, about 2x faster for sweeps of
    thousands of pairs after a one-off compilation; see ``SolverConfig.fused``). All (patient, scenario) pairs are
    solved as one batch (split into chunks of ``batch_size``).
    """

    def __init__(self, model, rtol: float = 1e-6, atol: float | None = None, max_steps: int = 100_000,
                 batch_size: int = 20_000, progress: bool | None = None, fused: bool = False):
        if not isinstance(fused, bool):
            raise ValueError(f"fused must be True or False, got {fused!r}")
        self.model = _models.get(model)
        self.rtol, self.atol, self.max_steps, self.batch_size = rtol, atol, max_steps, batch_size
        self.progress, self.fused = progress, fused

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
                          max_steps=self.max_steps, batch_size=self.batch_size, progress=self.progress,
                          fused=self.fused)
        order = df["subject_id"].astype(int).to_numpy() * len(grid) + np.searchsorted(grid, df["time"].to_numpy())
        values = np.full((len(params) * len(grid), len(outputs)), np.nan)
        values[order] = df[outputs].to_numpy(dtype=float)
        st = df.attrs["status"]
        return values.reshape(len(params), len(grid), len(outputs)).transpose(0, 2, 1), [str(st[k]) for k in keys]

    def run(self, population: pd.DataFrame, scenarios: Sequence[Scenario], times,
            outputs: Sequence[str] | None = None) -> SimulationSet:
        """Simulate every patient of ``population`` under every scenario at ``times``; ``outputs`` selects
        observables/states (default: the model's observables)."""
        return run_product(self, population, scenarios, times, outputs, f"exact:{self.model.name}")


class TwinEngine:
    """The exact engine of a trained :class:`~hybridtwin.twin.HybridTwin`: its own dynamics (neural closures
    or a black box included), solver settings and population-level values, for given patient parameters.

    A population row holds the twin's patient parameters (``twin.patient_names``, natural scale) and
    optionally ``cohort`` (a cohort name of the twin, for its cohort shifts; default the reference cohort).
    Any other parameter column is refused: the twin sets every other parameter itself. ``run`` and
    ``simulate_pairs`` behave as :class:`ExactEngine`'s. ``source``: the twin's checkpoint folder, recorded
    by surrogates of this engine so that they can reload it.
    """

    def __init__(self, twin, source=None):
        from .twin import HybridTwin

        if not isinstance(twin, HybridTwin):
            raise TypeError(f"TwinEngine needs a HybridTwin, got {type(twin).__name__}")
        self.twin = twin.eval()
        self.model = twin.model
        self.source = None if source is None else str(source)

    @classmethod
    def from_checkpoint(cls, path) -> "TwinEngine":
        """The engine of the twin saved in the checkpoint folder ``path`` (recorded as its source)."""
        from .checkpoint import load

        return cls(load(path), source=path)

    def _outputs(self, outputs) -> list[str]:
        return ExactEngine._outputs(self, outputs)

    def _theta(self, params: pd.DataFrame):
        import torch

        twin = self.twin
        names = list(twin.patient_names)
        extra = [c for c in params.columns if c not in names and c not in ("subject_id", "cohort")]
        if extra:
            raise ValueError(f"column(s) {extra} are not patient parameters of the twin ({names}); the twin sets every "
                             "other parameter itself")
        missing = [n for n in names if n not in params.columns]
        if missing:
            raise ValueError(f"population lacks the twin's patient parameter(s) {missing}")
        space = self.model.parameter_space
        dtype = twin.dtype
        full = space.tensor_from(params[names].assign(**{k: v for k, v in space.defaults().items() if k not in names}),
                                 dtype=dtype)
        space.check_bounds(full, [str(i) for i in range(len(params))], context=" of the twin's patients")
        z = space.to_unconstrained(full)[:, twin.patient_idx]
        cohort = None
        if "cohort" in params.columns:
            known = {c: i for i, c in enumerate(twin.cohort_names)}
            bad = sorted(set(params["cohort"]) - set(known))
            if bad:
                raise ValueError(f"unknown cohort(s) {bad}; the twin knows {list(known)}")
            cohort = torch.tensor([known[c] for c in params["cohort"]], dtype=torch.long)
        with torch.no_grad():
            return twin.theta(z, cohort)

    def simulate_pairs(self, params: pd.DataFrame, scenarios: Sequence[Scenario], times,
                       outputs: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
        """As :meth:`ExactEngine.simulate_pairs`, with the twin's dynamics."""
        import torch

        from .dosing import BatchSchedule
        from .models import time_offset as _time_offset
        from .solve import Status, solve

        scenarios = list(scenarios)
        if len(params) != len(scenarios):
            raise ValueError(f"simulate_pairs needs one scenario per parameter row, got {len(params)} rows and "
                             f"{len(scenarios)} scenarios")
        if any(sc.overrides for sc in scenarios):
            raise ValueError("a twin engine takes no parameter overrides in scenarios (the twin sets its parameters)")
        grid = check_times(times)
        outputs = self._outputs(outputs)
        params = params.reset_index(drop=True)
        theta = self._theta(params)
        twin, model = self.twin, self.model
        N, dtype = len(params), theta.dtype
        targets = {k: iv.target for k, iv in model.interventions.items()}
        schedules = [[Dose(d.time, d.amount, targets.get(d.target, d.target), d.duration, d.interval, d.additional)
                      for d in sc.doses] for sc in scenarios]
        schedule = BatchSchedule.from_doses(schedules, model.all_state_names, dtype=dtype)
        t = torch.as_tensor(grid, dtype=dtype).expand(N, -1)
        if twin.config.time_offset is not None:
            shift = theta[:, model.parameter_names.index(_time_offset.TIME_OFFSET)]
            t = _time_offset.shift_to_model_clock(t, shift)
            schedule = schedule.shifted(shift)
        with torch.no_grad():
            sol = solve(twin.dynamics, model.initial_state(theta), t, theta, schedule=schedule,
                        config=twin.solver_config, state_names=model.all_state_names)
            obs = model.observe(sol.ys, theta[:, None, :])
            cols = [obs[o] if o in obs else sol.ys[..., model.all_state_names.index(o)] for o in outputs]
        values = torch.stack(cols, dim=1).double().numpy()  # (N, O, T)
        return values, [Status(int(v)).name.lower() for v in sol.status]

    def run(self, population: pd.DataFrame, scenarios: Sequence[Scenario], times,
            outputs: Sequence[str] | None = None) -> SimulationSet:
        """Every patient under every scenario (see :meth:`ExactEngine.run`)."""
        return run_product(self, population, scenarios, times, outputs, f"twin:{self.model.name}")


def twin_population(twin, covariates: pd.DataFrame, per_patient: int = 1, seed: int = 0) -> pd.DataFrame:
    """Virtual patients from a trained twin's population model: for every row of ``covariates`` (the twin's
    covariates, ``subject_id`` and optional ``cohort``), ``per_patient`` draws of the patient parameters from
    the population distribution given those covariates (between-patient variability included). Returns the
    patient parameters on their natural scale (``subject_id`` ``"<id>#<k>"``, ``cohort`` when given): a
    population for :class:`TwinEngine` or a surrogate of the twin."""
    import torch

    from .personalise import _tables

    if isinstance(per_patient, bool) or not isinstance(per_patient, int) or per_patient < 1:
        raise ValueError(f"per_patient must be a positive integer, got {per_patient!r}")
    ds, ids = _tables(twin, covariates, None, None)
    batch = ds.batch()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mean, sd = twin.prior(batch.covariates)
        mean, sd = mean.repeat_interleave(per_patient, 0), sd.repeat_interleave(per_patient, 0)
        cohort = batch.cohort.repeat_interleave(per_patient, 0)
        z = mean + sd * torch.randn(mean.shape, generator=gen, dtype=mean.dtype)
        theta = twin.theta(z, cohort)[:, twin.patient_idx]
    out = pd.DataFrame(theta.double().numpy(), columns=list(twin.patient_names))
    out.insert(0, "subject_id", [f"{i}#{k}" for i in ids for k in range(per_patient)])
    if "cohort" in covariates.columns:
        out["cohort"] = [twin.cohort_names[int(c)] for c in cohort]
    return out


__all__ = ["Engine", "ExactEngine", "Scenario", "SimulationSet", "TwinEngine", "twin_population"]
