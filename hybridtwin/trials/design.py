"""Virtual trial designs: arms, endpoints, sample size, replicate trials; per-arm summaries, comparisons, power.

A :class:`TrialDesign` is a parallel-group trial: each arm is a :class:`~hybridtwin.engine.Scenario` (a
schedule, dose or therapy), ``n_per_arm`` patients per arm are drawn from a virtual population (different
patients in each arm -- or, with ``paired=True``, the same patients in every arm: the in-silico crossover
only a twin allows, compared with paired intervals; a population with a ``replicate`` column -- :func:`virtual_population` with
``parameter_uncertainty`` -- gives each replicate its own draw of the population estimates), and the trial is
replicated ``replicates`` times. :func:`run_trial` simulates every drawn (patient, arm) once on any engine
(exact, twin or surrogate) and returns a :class:`TrialResult`:

- ``patients``: one row per (replicate, arm, patient) with the covariates and every endpoint;
- ``per_replicate``: each replicate's estimate per arm and endpoint (rate with its Wilson interval,
  statsmodels; or mean with its t interval, scipy) and the difference vs the reference arm (Newcombe
  interval for rates, statsmodels; Welch interval for means, scipy) with whether the interval excludes 0;
- ``summary()`` / ``differences()``: across replicates -- the mean estimate, the mean interval, the
  2.5-97.5 % spread of the replicate estimates and, for differences, the share of replicates that reject
  "no difference" at ``alpha`` (the design's power under the model);
- ``subgroups()``: the same per subgroup (covariate filters);
- :func:`power_curve`: power vs patients per arm, simulated (resampling the simulated patients) and, for a
  stated effect, analytic (statsmodels) from the reference arm's rate or SD.

Times to a threshold (``time_above``, ``time_below``) that never happen are counted at the horizon (the
last output time): a restricted mean time. Same seed, same result.

Example
-------
>>> import pandas as pd
>>> from hybridtwin.engine import ExactEngine
>>> from hybridtwin.scenarios import ScenarioSpace
>>> from hybridtwin.sweep import Endpoint
>>> from hybridtwin.trials import Arm, TrialDesign, run_trial
>>> space = ScenarioSpace([{"name": "prime", "target": "Ag", "time": 0, "amount": 1},
...                        {"name": "boost", "target": "Ag", "time": 90, "amount": [0, 4]}])
>>> design = TrialDesign([Arm("no boost", space.scenario([0])), Arm("boost", space.scenario([1]))],
...                      [Endpoint("above", "log10_Ab", time=360, threshold=1.0)], n_per_arm=20, replicates=5,
...                      times=[180, 360])
>>> pop = pd.DataFrame({"delta_Ab": [0.01 + 0.0004 * k for k in range(60)]})
>>> result = run_trial(design, ExactEngine("vaccine_asc"), pop, progress=False)
>>> s = result.summary().set_index("arm")["estimate"]
>>> bool(s["boost"] >= s["no boost"])
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..engine import ExactEngine, Scenario, TwinEngine
from ..sweep import TIMES, sweep
from .population import subgroup


@dataclass(frozen=True)
class Arm:
    """A trial arm: a name and the scenario every patient of the arm receives."""

    name: str
    scenario: Scenario

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"an arm needs a non-empty name, got {self.name!r}")
        if not isinstance(self.scenario, Scenario):
            raise TypeError(f"arm {self.name!r}: scenario must be a Scenario, got {type(self.scenario).__name__}")


def _binary(endpoint) -> bool:
    return bool(getattr(endpoint, "binary", False))


@dataclass
class TrialDesign:
    """A parallel-group virtual trial (see the module docstring).

    arms: :class:`Arm` objects (unique names). endpoints: :class:`~hybridtwin.sweep.Endpoint` objects or
    user endpoints (``label`` + ``compute(sims)``). n_per_arm: patients per arm and replicate. replicates:
    replicate trials. seed: the patient draws. reference: the arm the others are compared with (default
    the first). times: output times of the simulation (must hold the endpoints' times; default: the
    engine's grid for a surrogate). alpha: two-sided level of the intervals and tests. subgroups:
    ``{name: filter}`` (see :func:`~hybridtwin.trials.subgroup`).
    """

    arms: Sequence[Arm]
    endpoints: Sequence
    n_per_arm: int
    replicates: int = 100
    seed: int = 0
    reference: str | None = None
    times: Sequence[float] | None = None
    alpha: float = 0.05
    subgroups: Mapping = field(default_factory=dict)
    paired: bool = False

    def __post_init__(self):
        self.arms = list(self.arms)
        if len(self.arms) < 1 or not all(isinstance(a, Arm) for a in self.arms):
            raise ValueError("a trial needs at least one Arm")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        # the engine tells arms apart by scenario name: two arms may give the same scenario
        self.arms = [a if a.scenario.name == a.name else Arm(a.name, Scenario(a.name, a.scenario.doses, a.scenario.overrides))
                     for a in self.arms]
        self.endpoints = list(self.endpoints)
        if not self.endpoints:
            raise ValueError("a trial needs at least one endpoint")
        for e in self.endpoints:
            if not (hasattr(e, "label") and callable(getattr(e, "compute", None))):
                raise TypeError(f"endpoint {e!r} needs a label and a compute(sims) method")
        labels = [e.label for e in self.endpoints]
        if len(set(labels)) != len(labels):
            raise ValueError(f"endpoint labels must be unique, got {labels}")
        for name, v in (("n_per_arm", self.n_per_arm), ("replicates", self.replicates)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2 - (name == "replicates"):
                raise ValueError(f"{name} must be an integer >= {2 - (name == 'replicates')}, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.reference is None:
            self.reference = names[0]
        elif self.reference not in names:
            raise ValueError(f"reference arm {self.reference!r} is not one of the arms {names}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha!r}")
        if self.times is not None:
            self.times = sorted(float(t) for t in self.times)
        self.subgroups = dict(self.subgroups or {})

    @property
    def arm_names(self) -> list[str]:
        return [a.name for a in self.arms]

    def with_(self, **changes) -> "TrialDesign":
        """A copy with some fields changed (e.g. ``n_per_arm``)."""
        d = {k: getattr(self, k) for k in ("arms", "endpoints", "n_per_arm", "replicates", "seed", "reference",
                                            "times", "alpha", "subgroups", "paired")}
        d.update(changes)
        return TrialDesign(**d)


def engine_inputs(engine, population: pd.DataFrame) -> pd.DataFrame:
    """The columns of ``population`` an engine reads (its parameters; ``cohort`` for a twin), so that a
    population carrying covariates and bookkeeping columns runs on any engine."""
    if isinstance(engine, TwinEngine):
        keep = list(engine.twin.patient_names) + ["cohort"]
    elif isinstance(engine, ExactEngine):
        keep = list(engine.model.parameter_names)
    elif hasattr(engine, "domain"):  # a surrogate
        keep = list(engine.domain.parameters.names) + list(engine.domain.parameters.fixed)
    else:
        return population
    return population[["subject_id"] + [c for c in population.columns if c in keep]]


def _draw(design: TrialDesign, population: pd.DataFrame) -> pd.DataFrame:
    """(replicate, arm, row) of every drawn patient: within a replicate, different patients in each arm
    (without replacement when the population is large enough, else with)."""
    rng = np.random.default_rng(design.seed)
    A, n = len(design.arms), design.n_per_arm
    reps = population["replicate"].to_numpy() if "replicate" in population.columns else None
    n_pop_reps = int(reps.max()) + 1 if reps is not None else 1
    rows = []
    for r in range(design.replicates):
        pool = np.flatnonzero(reps == r % n_pop_reps) if reps is not None else np.arange(len(population))
        need = n if design.paired else A * n
        pick = rng.choice(pool, size=need, replace=len(pool) < need)
        for a in range(A):
            own = pick if design.paired else pick[a * n:(a + 1) * n]
            rows.append(pd.DataFrame({"replicate": r, "arm": design.arms[a].name, "row": own}))
    return pd.concat(rows, ignore_index=True)


def _interval_one(x: np.ndarray, binary: bool, alpha: float) -> tuple[float, float, float]:
    from scipy import stats
    from statsmodels.stats.proportion import proportion_confint

    n = len(x)
    if binary:
        k = float(x.sum())
        lo, hi = proportion_confint(k, n, alpha=alpha, method="wilson")
        return k / n, round(float(lo), 12), round(float(hi), 12)  # no 1e-18 left of a bound at 0 or 1
    m = float(x.mean())
    if n < 2 or np.allclose(x, m):
        return m, m, m
    ci = stats.ttest_1samp(x, m).confidence_interval(1 - alpha)
    return m, float(ci.low), float(ci.high)


def _interval_diff(x: np.ndarray, x0: np.ndarray, binary: bool, alpha: float,
                   paired: bool = False) -> tuple[float, float, float]:
    """Difference ``mean(x) - mean(x0)`` and its interval: Newcombe (rates, statsmodels) or Welch (means);
    paired samples (``x[i]`` and ``x0[i]`` the same patient): the paired t interval."""
    from scipy import stats
    from statsmodels.stats.proportion import confint_proportions_2indep

    if paired:
        diff = x - x0
        d = float(diff.mean())
        if len(diff) < 2 or np.allclose(diff, d):
            return d, d, d
        ci = stats.ttest_1samp(diff, 0.0).confidence_interval(1 - alpha)
        return d, float(ci.low), float(ci.high)
    if binary:
        k1, k0 = float(x.sum()), float(x0.sum())
        lo, hi = confint_proportions_2indep(k1, len(x), k0, len(x0), method="newcomb", compare="diff", alpha=alpha)
        return k1 / len(x) - k0 / len(x0), float(lo), float(hi)
    d = float(x.mean() - x0.mean())
    if np.allclose(x, x[0]) and np.allclose(x0, x0[0]):
        return d, d, d
    ci = stats.ttest_ind(x, x0, equal_var=False).confidence_interval(1 - alpha)
    return d, float(ci.low), float(ci.high)


def _estimates(table: pd.DataFrame, design: TrialDesign, labels: list[str], binary: dict) -> pd.DataFrame:
    """Per replicate, arm and endpoint: estimate and interval; per non-reference arm, the difference."""
    rows = []
    ref = design.reference
    for r, rep in table.groupby("replicate", sort=True):
        by_arm = {a: g for a, g in rep.groupby("arm", sort=False)}
        for ep, arm in [(ep, arm) for ep in labels for arm in design.arm_names]:
            x0 = by_arm[ref][ep].to_numpy(float) if ref in by_arm else np.array([])
            x = by_arm[arm][ep].to_numpy(float) if arm in by_arm else np.array([])
            row = {"replicate": r, "endpoint": ep, "arm": arm, "n": int(np.isfinite(x).sum())}
            if row["n"]:
                row["estimate"], row["ci_low"], row["ci_high"] = _interval_one(x[np.isfinite(x)], binary[ep], design.alpha)
            if design.paired:  # the same patients in the same order: keep the pairs both arms have
                both = np.isfinite(x) & np.isfinite(x0) if len(x) == len(x0) else np.zeros(0, bool)
                x, x0 = x[both] if len(both) else x[:0], x0[both] if len(both) else x0[:0]
            else:
                x, x0 = x[np.isfinite(x)], x0[np.isfinite(x0)]
            if arm != ref and len(x) and len(x0):
                d, lo, hi = _interval_diff(x, x0, binary[ep], design.alpha, design.paired)
                row.update(difference=d, diff_low=lo, diff_high=hi, reject=bool(lo > 0 or hi < 0))
            rows.append(row)
    return pd.DataFrame(rows)


def _summarise(per_rep: pd.DataFrame, arm_names: list[str]) -> pd.DataFrame:
    order = {a: i for i, a in enumerate(arm_names)}
    g = per_rep.groupby(["endpoint", "arm"], sort=False)
    out = g.agg(n=("n", "mean"), estimate=("estimate", "mean"), ci_low=("ci_low", "mean"), ci_high=("ci_high", "mean"),
                spread_low=("estimate", lambda v: float(np.nanquantile(v, 0.025))),
                spread_high=("estimate", lambda v: float(np.nanquantile(v, 0.975))), replicates=("estimate", "size"))
    out = out.reset_index()
    return out.sort_values(["endpoint", "arm"], key=lambda s: s.map(order) if s.name == "arm" else s,
                           kind="stable").reset_index(drop=True)


def _diff_summary(per_rep: pd.DataFrame, arm_names: list[str], reference: str) -> pd.DataFrame:
    d = per_rep.dropna(subset=["difference"]) if "difference" in per_rep.columns else per_rep.iloc[:0]
    if d.empty:
        return pd.DataFrame(columns=["endpoint", "arm", "reference", "difference", "diff_low", "diff_high",
                                     "spread_low", "spread_high", "power"])
    order = {a: i for i, a in enumerate(arm_names)}
    out = d.groupby(["endpoint", "arm"], sort=False).agg(
        difference=("difference", "mean"), diff_low=("diff_low", "mean"), diff_high=("diff_high", "mean"),
        spread_low=("difference", lambda v: float(np.quantile(v, 0.025))),
        spread_high=("difference", lambda v: float(np.quantile(v, 0.975))),
        power=("reject", "mean")).reset_index()
    out.insert(2, "reference", reference)
    return out.sort_values(["endpoint", "arm"], key=lambda s: s.map(order) if s.name == "arm" else s,
                           kind="stable").reset_index(drop=True)


@dataclass
class TrialResult:
    """What :func:`run_trial` returns (see the module docstring)."""

    design: TrialDesign
    patients: pd.DataFrame
    per_replicate: pd.DataFrame
    n_failed: int
    engine: str
    binary: dict

    @property
    def labels(self) -> list[str]:
        return [e.label for e in self.design.endpoints]

    def summary(self) -> pd.DataFrame:
        """Per arm and endpoint across replicates: ``estimate`` (rate or mean; mean over replicates),
        ``ci_low``/``ci_high`` (the mean of the replicates' 1 - alpha intervals: what one trial reports),
        ``spread_low``/``spread_high`` (2.5 and 97.5 % of the replicates' estimates: how much trials vary)."""
        return _summarise(self.per_replicate, self.design.arm_names)

    def differences(self) -> pd.DataFrame:
        """Each arm vs the reference across replicates: mean difference, mean interval, spread, and
        ``power`` (share of replicates whose interval excludes 0)."""
        return _diff_summary(self.per_replicate, self.design.arm_names, self.design.reference)

    def subgroups(self) -> pd.DataFrame:
        """:meth:`summary` and :meth:`differences` per subgroup of the design (one table, column
        ``subgroup``); each replicate's estimate uses the patients of the subgroup only."""
        frames = []
        for name, where in self.design.subgroups.items():
            sub = subgroup(self.patients, where)
            per_rep = _estimates(sub, self.design, self.labels, self.binary)
            s = _summarise(per_rep, self.design.arm_names)
            dd = _diff_summary(per_rep, self.design.arm_names, self.design.reference)
            s = s.merge(dd[["endpoint", "arm", "difference", "diff_low", "diff_high", "power"]], on=["endpoint", "arm"],
                        how="left")
            s.insert(0, "subgroup", name)
            frames.append(s)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run_trial(design: TrialDesign, engine, population: pd.DataFrame, progress: bool | None = None,
              **run_options) -> TrialResult:
    """Run ``design`` on ``engine`` (an :class:`~hybridtwin.engine.ExactEngine`, a
    :class:`~hybridtwin.engine.TwinEngine`, a surrogate, or anything with the engine protocol) for patients
    drawn from ``population`` (one row per patient: parameters the engine reads, any covariates, optionally
    ``subject_id`` and ``replicate``). Every drawn (patient, arm) is simulated once, in one sweep.
    Simulations that fail (or, on a surrogate, fall outside its validated domain) are counted in
    ``n_failed`` and their patients' endpoints are missing (left out of the estimates, never filled in)."""
    if not isinstance(population, pd.DataFrame) or population.empty:
        raise ValueError("population must be a non-empty DataFrame with one row per patient")
    pop = population.reset_index(drop=True)
    if "subject_id" not in pop.columns:
        pop.insert(0, "subject_id", [f"p{i}" for i in range(len(pop))])
    pop["subject_id"] = pop["subject_id"].astype(str)
    if pop["subject_id"].duplicated().any():
        raise ValueError("population subject_id values must be unique")
    draws = _draw(design, pop)
    rows = np.unique(draws["row"].to_numpy())
    inputs = engine_inputs(engine, pop.iloc[rows])
    times = design.times
    if times is None and not hasattr(engine, "domain"):
        raise ValueError("design.times is needed for this engine (only a surrogate has its own output grid)")
    sims = sweep(engine, inputs, [a.scenario for a in design.arms], times=times, progress=progress, **run_options)
    horizon = float(sims.frame["time"].max()) if len(sims.frame) else math.nan
    values = []
    binary = {}
    for e in design.endpoints:
        v = e.compute(sims)
        if getattr(e, "kind", None) in TIMES:
            v = v.fillna(horizon)
        binary[e.label] = _binary(e)
        values.append(v.rename(e.label))
    ep = pd.concat(values, axis=1)
    arm_of = {a.scenario.name: a.name for a in design.arms}
    ep = ep.reset_index()
    ep["arm"] = ep["scenario"].map(arm_of)
    ep = ep.drop(columns="scenario")
    table = draws.assign(subject_id=pop["subject_id"].to_numpy()[draws["row"]]).merge(
        pop.drop(columns=[c for c in ("replicate",) if c in pop.columns]), on="subject_id", how="left").merge(
        ep, on=["subject_id", "arm"], how="left")
    table = table.drop(columns="row")
    labels = [e.label for e in design.endpoints]
    per_rep = _estimates(table, design, labels, binary)
    return TrialResult(design, table, per_rep, sims.n_failed, getattr(sims, "engine", ""), binary)


def power_curve(result: TrialResult, sizes: Sequence[int], endpoint: str | None = None, effect: float | None = None,
                replicates: int = 500, seed: int = 0) -> pd.DataFrame:
    """Power vs patients per arm for each non-reference arm against the reference.

    ``simulated``: share of ``replicates`` resampled trials (patients drawn with replacement from the
    trial's simulated patients of each arm) whose 1 - alpha interval of the difference excludes 0 -- power at
    the effect the model predicts. ``analytic`` (when ``effect`` is given, in the endpoint's units: a
    difference in rate or in mean): statsmodels' power of the two-sample z-test for that effect, with the
    reference arm's simulated rate (Cohen's h) or SD (Cohen's d).

    endpoint: label of the endpoint (default the design's first). Returns columns ``arm, n_per_arm,
    simulated, analytic, effect_model``.
    """
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    d = result.design
    label = endpoint if endpoint is not None else result.labels[0]
    if label not in result.labels:
        raise ValueError(f"unknown endpoint {label!r}; the trial's endpoints are {result.labels}")
    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 2:
        raise ValueError(f"sizes must be integers >= 2, got {sizes}")
    binary = result.binary[label]
    if d.paired:  # aligned by patient: row k of every arm is the same patient
        wide = result.patients.pivot_table(index=["replicate", "subject_id"], columns="arm", values=label).dropna()
        pool = {a: wide[a].to_numpy(float) if a in wide.columns else np.array([]) for a in d.arm_names}
    else:
        pool = {a: result.patients.loc[result.patients["arm"] == a, label].dropna().to_numpy(float) for a in d.arm_names}
    x0 = pool[d.reference]
    if len(x0) < 2:
        raise ValueError(f"the reference arm {d.reference!r} has fewer than 2 patients with endpoint {label!r}")
    rng = np.random.default_rng(seed)
    rows = []
    for arm in d.arm_names:
        if arm == d.reference or len(pool[arm]) < 2:
            continue
        x1 = pool[arm]
        for n in sizes:
            hits = 0
            for _ in range(replicates):
                if d.paired:  # resample patients, keeping each patient's pair of outcomes
                    i = rng.integers(0, min(len(x1), len(x0)), n)
                    a, b = x1[i], x0[i]
                else:
                    a, b = rng.choice(x1, n), rng.choice(x0, n)
                _, lo, hi = _interval_diff(a, b, binary, d.alpha, d.paired)
                hits += bool(lo > 0 or hi < 0)
            analytic = math.nan
            if effect is not None:
                if binary:
                    p0 = float(np.clip(x0.mean(), 1e-6, 1 - 1e-6))
                    es = proportion_effectsize(float(np.clip(p0 + effect, 1e-6, 1 - 1e-6)), p0)
                else:
                    es = effect / max(float(x0.std(ddof=1)), 1e-12)
                analytic = float(NormalIndPower().power(abs(es), nobs1=n, alpha=d.alpha, ratio=1.0))
            rows.append({"arm": arm, "n_per_arm": n, "simulated": hits / replicates, "analytic": analytic,
                         "effect_model": float(x1.mean() - x0.mean())})
    return pd.DataFrame(rows)
