"""Schedule optimisation: the best scenario of a design space for an endpoint, confirmed by the exact engine.

:func:`optimise_schedule` searches a :class:`~hybridtwin.scenarios.ScenarioSpace` (booster day x dose, dose
interval x number of doses, ...) for the scenario whose population mean endpoint (a rate for a 0/1 endpoint)
is best, subject to constraints, usually with a surrogate as the engine:

- ``method="grid"``: every point of a factor grid, in one sweep -- exhaustive and cheap on a surrogate for a
  few factors;
- ``method="optuna"``: Optuna's TPE sampler (seeded; candidates proposed in batches with the ask/tell
  interface, each batch evaluated in one sweep; constraints through TPE's ``constraints_func``). We use
  Optuna rather than BoTorch because the surrogate makes every evaluation cost milliseconds: a
  sample-efficient Gaussian-process optimiser buys nothing here, while TPE handles mixed, conditional and
  constrained spaces with no extra dependency on a GP stack.

The ``top_k`` best feasible candidates are then re-run with the exact engine (default: the surrogate's own
exact engine) on the same patients; both objectives are reported and ``confirmed`` says whether the
surrogate's best is also the exact engine's best among them (within ``tolerance``).

Example
-------
>>> import pandas as pd
>>> from hybridtwin.engine import ExactEngine
>>> from hybridtwin.scenarios import ScenarioSpace
>>> from hybridtwin.sweep import Endpoint
>>> from hybridtwin.trials.optimise import optimise_schedule
>>> space = ScenarioSpace([{"name": "prime", "target": "Ag", "time": 0, "amount": 1},
...                        {"name": "boost", "target": "Ag", "time": [30, 330], "amount": 1}])
>>> pop = pd.DataFrame({"delta_Ab": [0.02, 0.03]})
>>> res = optimise_schedule(ExactEngine("vaccine_asc"), pop, space, Endpoint("value_at", "log10_Ab", time=360),
...                         method="grid", grid={"boost.time": [30, 180, 330]}, times=[360], top_k=2, progress=False)
>>> float(res.best["boost.time"])        # the latest booster leaves the highest titre at day 360
330.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..scenarios import ScenarioSpace
from ..sweep import TIMES, sweep
from .design import engine_inputs

METHODS = ("auto", "grid", "optuna")


@dataclass
class OptimisationResult:
    """``candidates``: every evaluated scenario (factor values, ``objective``, ``feasible``, ``order``);
    ``top``: the ``top_k`` best feasible, with ``exact`` (the exact engine's objective) when re-run;
    ``best``: the surrogate-best feasible candidate (a Series of factor values and objective);
    ``confirmed``: whether it is the exact engine's best among ``top`` within the tolerance (None when no
    exact re-run); ``space``, ``endpoint``, ``direction``, ``method``."""

    candidates: pd.DataFrame
    top: pd.DataFrame
    best: pd.Series
    confirmed: bool | None
    space: ScenarioSpace
    endpoint: object
    direction: str
    method: str

    def best_scenario(self, name: str = "optimum"):
        return self.space.scenario({f: float(self.best[f]) for f in self.space.factors}, name=name)


def _objective(engine, inputs: pd.DataFrame, scenarios, endpoint, times, progress, **run_options) -> np.ndarray:
    sims = sweep(engine, inputs, scenarios, times=times, progress=progress, **run_options)
    v = endpoint.compute(sims)
    if getattr(endpoint, "kind", None) in TIMES:
        v = v.fillna(float(sims.frame["time"].max()))
    means = v.groupby(level="scenario").mean()
    return np.array([means.get(s.name, math.nan) for s in scenarios], dtype=float)


def _feasible(space: ScenarioSpace, X: np.ndarray, constraints: Sequence[str]) -> np.ndarray:
    if not constraints:
        return np.ones(len(X), dtype=bool)
    frame = pd.DataFrame(X, columns=space.factors)
    ok = np.ones(len(X), dtype=bool)
    for c in constraints:
        try:
            ok &= frame.eval(c).to_numpy(dtype=bool)
        except Exception as e:  # pandas raises many kinds for a bad expression
            raise ValueError(f"constraint {c!r}: {e}; factors are {space.factors} (write names with dots in "
                             "backticks, e.g. `boost.time` >= 60)") from None
    return ok


def _check_inside(engine, space: ScenarioSpace) -> None:
    dom = getattr(engine, "domain", None)
    if dom is None:
        return
    probe = [space.scenario(space.bounds[:, 0]), space.scenario(space.bounds[:, 1])] if space.factors else [space.scenario([])]
    try:
        _, inside = dom.scenarios.encode(probe)
    except ValueError as e:
        raise ValueError(f"the optimisation space does not fit the surrogate's scenario space: {e}") from None
    if not inside.all():
        raise ValueError(f"the optimisation space {dict(zip(space.factors, space.bounds.tolist()))} reaches outside the "
                         f"surrogate's validated scenario ranges {dict(zip(dom.scenarios.factors, dom.scenarios.bounds.tolist()))}")


def optimise_schedule(engine, population: pd.DataFrame, space: ScenarioSpace, endpoint, direction: str = "maximize",
                      method: str = "auto", grid: Mapping[str, Sequence[float]] | None = None, n_trials: int = 200,
                      batch: int = 16, constraints: Sequence[str] = (), top_k: int = 5, exact=None,
                      times=None, seed: int = 0, tolerance: float = 0.0, progress: bool | None = None,
                      **run_options) -> OptimisationResult:
    """Search ``space`` for the scenario with the best population mean of ``endpoint`` (see the module
    docstring).

    population: the patients every candidate is evaluated on (parameter columns; other columns are
    ignored). direction: ``"maximize"`` or ``"minimize"``. method: ``"grid"`` (needs ``grid``:
    values per factor), ``"optuna"`` (``n_trials`` candidates in batches of ``batch``) or ``"auto"``
    (grid when one is given). constraints: pandas expressions over the factors that a candidate must
    satisfy (e.g. ``"`boost.amount` <= 2"``). exact: the engine of the confirmation re-run (default the
    engine's ``exact`` attribute -- a surrogate's exact engine; ``False`` for none). times: output times
    (default the surrogate's grid). tolerance: how much worse (in objective units) the surrogate's best may
    be under the exact engine than the exact best of the top candidates and still count as confirmed.
    run_options: passed to the engine's ``run`` (e.g. ``outside="exact"`` for a surrogate).
    """
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(space, ScenarioSpace) or not space.factors:
        raise ValueError("space must be a ScenarioSpace with at least one ranged factor")
    if method == "auto":
        method = "grid" if grid is not None else "optuna"
    for name, v in (("n_trials", n_trials), ("batch", batch), ("top_k", top_k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    constraints = [constraints] if isinstance(constraints, str) else list(constraints)
    _check_inside(engine, space)
    pop = population.reset_index(drop=True)
    if "subject_id" not in pop.columns:
        pop = pop.assign(subject_id=[f"p{i}" for i in range(len(pop))])
    inputs = engine_inputs(engine, pop)
    sign = 1.0 if direction == "maximize" else -1.0

    def evaluate(X: np.ndarray, start: int) -> np.ndarray:
        scen = [space.scenario(x, name=f"c{start + i}") for i, x in enumerate(X)]
        return _objective(engine, inputs, scen, endpoint, times, progress=False, **run_options)

    if method == "grid":
        if grid is None:
            raise ValueError("method='grid' needs grid={factor: values}")
        g = space.grid(grid)
        X = g.frame()[space.factors].to_numpy(dtype=float)
        obj = np.concatenate([evaluate(X[i:i + 4096], i) for i in range(0, len(X), 4096)])
    else:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # constraints: Trial.set_constraint from Optuna 5 on, TPE's constraints_func before it
        new_api = hasattr(optuna.trial.Trial, "set_constraint")
        old = {"constraints_func": lambda t: t.user_attrs["violation"]} if constraints and not new_api else {}
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(20, max(4, n_trials // 5)), **old)
        study = optuna.create_study(direction=direction, sampler=sampler)
        lo, hi = space.bounds[:, 0], space.bounds[:, 1]
        Xs, objs = [], []
        from tqdm.auto import tqdm

        bar = tqdm(total=n_trials, desc="optimise", unit="candidate", disable=progress is False)
        done = 0
        while done < n_trials:
            k = min(batch, n_trials - done)
            trials = [study.ask() for _ in range(k)]
            X = np.array([[t.suggest_float(f, lo[j], hi[j]) for j, f in enumerate(space.factors)] for t in trials])
            viol = (~_feasible(space, X, constraints)).astype(float)
            o = evaluate(X, done)
            for t, v, val in zip(trials, viol, o):
                if constraints:
                    t.set_constraint("violation", float(v)) if new_api else t.set_user_attr("violation", [float(v)])
                study.tell(t, float(val) if np.isfinite(val) else None,
                           state=optuna.trial.TrialState.COMPLETE if np.isfinite(val) else optuna.trial.TrialState.FAIL)
            Xs.append(X)
            objs.append(o)
            done += k
            bar.update(k)
        bar.close()
        X, obj = np.concatenate(Xs), np.concatenate(objs)
    cand = pd.DataFrame(X, columns=space.factors)
    cand["objective"] = obj
    cand["feasible"] = _feasible(space, X, constraints) & np.isfinite(obj)
    cand["order"] = np.arange(len(cand))
    ok = cand[cand["feasible"]]
    if ok.empty:
        raise ValueError(f"no feasible candidate among {len(cand)} (constraints {constraints})")
    top = ok.sort_values("objective", ascending=direction == "minimize", kind="stable").head(top_k).reset_index(drop=True)
    if exact is None:
        exact = getattr(engine, "exact", None)
    confirmed = None
    if exact not in (None, False):
        ex_inputs = engine_inputs(exact, pop)
        scen = [space.scenario(x, name=f"top{i}") for i, x in enumerate(top[space.factors].to_numpy(float))]
        ex_times = times if times is not None else getattr(getattr(engine, "domain", None), "times", None)
        top["exact"] = _objective(exact, ex_inputs, scen, endpoint, ex_times, progress=False)
        best_exact = np.nanmax(sign * top["exact"].to_numpy())
        confirmed = bool(sign * top["exact"].iloc[0] >= best_exact - tolerance)
        top["exact_rank"] = (-sign * top["exact"]).rank(method="min").astype(int)
    return OptimisationResult(cand, top, top.iloc[0], confirmed, space, endpoint, direction, method)
