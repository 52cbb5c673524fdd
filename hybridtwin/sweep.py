"""Scenario sweeps on any engine, endpoints, exact verification, plots and global sensitivity analysis.

- :func:`sweep`: ``engine.run`` over population x scenarios in chunks that bound memory, with a progress bar;
  the exact engine and a surrogate give the same table; ``backend="ray"`` runs the chunks as Ray tasks on a
  cluster (or a local Ray instance), each shard optionally written to disk (:func:`merge_shards`).
- :class:`Endpoint`: a number per (patient, scenario) from a trajectory -- the value at a time, above a
  threshold at a time, the peak, the area under the curve, the first time above a threshold.
- :func:`verify`: re-run a random subset or the top-k scenarios of a sweep with the exact engine and report
  the disagreement.
- :func:`heatmap` / :func:`distributions`: an endpoint over a 2-D scenario grid; per-scenario distributions.
- :func:`sensitivity`: Sobol indices (SALib, Saltelli sampling) of an endpoint to the surrogate's patient
  parameters and scenario factors, spot-checked by the exact engine.

Example
-------
>>> import pandas as pd
>>> import hybridtwin as ht
>>> from hybridtwin.engine import ExactEngine
>>> from hybridtwin.scenarios import ScenarioSpace
>>> from hybridtwin.sweep import Endpoint, sweep
>>> space = ScenarioSpace([{"name": "prime", "target": "Ag", "time": 0, "amount": 1},
...                        {"name": "boost", "target": "Ag", "time": [14, 365], "amount": [0, 4]}])
>>> grid = space.grid({"boost.time": [28, 180], "boost.amount": [0, 1]})
>>> pop = pd.DataFrame({"delta_Ab": [0.02, 0.03]})
>>> sims = sweep(ExactEngine("vaccine_asc"), pop, grid, times=[200, 365], progress=False)
>>> ep = Endpoint("value_at", "log10_Ab", time=365).compute(sims)
>>> means = ep.groupby("scenario").mean()
>>> bool(means["boost.time=180,boost.amount=1"] > means["boost.time=180,boost.amount=0"])
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .engine import ExactEngine, Scenario, SimulationSet

KINDS = ("value_at", "above", "below", "peak", "auc", "time_above", "time_below", "ever_above", "always_above")
#: kinds whose value is 0/1 (a response rate in a trial)
BINARY = ("above", "below", "ever_above", "always_above")
#: kinds computed over a window [start, time] of the grid (either end open when None)
WINDOWED = ("peak", "auc", "ever_above", "always_above")
#: kinds whose value is a time on the grid, NaN when the threshold is never crossed
TIMES = ("time_above", "time_below")
_trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # numpy < 2 has only trapz


@dataclass(frozen=True)
class Endpoint:
    """One number per (patient, scenario) from an output's trajectory.

    kind: ``"value_at"`` (the output at ``time``), ``"above"`` (1.0 if the output at ``time`` is >=
    ``threshold``, else 0.0), ``"below"`` (1.0 if it is < ``threshold`` at ``time``), ``"peak"`` (maximum
    over the grid), ``"auc"`` (trapezoidal area over the grid), ``"time_above"`` (first grid time the output
    reaches ``threshold``; NaN if never), ``"time_below"`` (first grid time after the output's peak at which it
    is below ``threshold``, e.g. time to viral clearance; NaN if never), ``"ever_above"`` (1.0 if the output
    reaches ``threshold`` at any grid time up to ``time`` -- the whole grid when ``time`` is None -- e.g. a
    flare by a given day), ``"always_above"`` (1.0 if the output is >= ``threshold`` at every grid time of
    the window, e.g. protected throughout months 6-18). start: the window's first time for ``peak``, ``auc``,
    ``ever_above`` and ``always_above`` (default the grid's start; their ``time`` is the window's end, default
    the grid's end). name: an optional label for tables (default: built from the fields).

    Any object with a ``label`` and a ``compute(sims) -> Series`` indexed by (subject_id, scenario) can stand
    in for an :class:`Endpoint` in a trial (set ``binary = True`` on it for a 0/1 endpoint).

    >>> Endpoint("above", "log10_Ab", time=365, threshold=2.0).label
    'above log10_Ab t=365 >=2'
    >>> Endpoint("time_below", "log10_V", threshold=2.0, name="clearance").label
    'clearance'
    """

    kind: str
    output: str
    time: float | None = None
    threshold: float | None = None
    name: str | None = None
    start: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"endpoint kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.output, str) or not self.output:
            raise ValueError(f"endpoint {self.kind!r} needs an output name, got {self.output!r}")
        if self.kind in ("value_at", "above", "below") and self.time is None:
            raise ValueError(f"endpoint {self.kind!r} needs a time")
        if self.kind in ("above", "below", "time_above", "time_below", "ever_above", "always_above") and self.threshold is None:
            raise ValueError(f"endpoint {self.kind!r} needs a threshold")
        if self.start is not None and self.kind not in WINDOWED:
            raise ValueError(f"endpoint {self.kind!r} takes no start (only {WINDOWED} are computed over a window)")
        for field in ("time", "threshold", "start"):
            v = getattr(self, field)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
                    raise ValueError(f"endpoint {self.kind!r}: {field} must be a finite number, got {v!r}")
                object.__setattr__(self, field, float(v))
        if self.start is not None and self.time is not None and self.start > self.time:
            raise ValueError(f"endpoint {self.kind!r}: start {self.start:g} is after time {self.time:g}")
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ValueError(f"endpoint name must be a non-empty string, got {self.name!r}")

    @property
    def binary(self) -> bool:
        """Whether the endpoint is 0/1 (a rate when averaged)."""
        return self.kind in BINARY

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        op = "<" if self.kind == "below" else ">="
        when = ([f"t={self.start:g}-{self.time:g}" if self.start is not None and self.time is not None else
                 f"t>={self.start:g}"] if self.start is not None else [f"t={self.time:g}"] if self.time is not None else [])
        bits = [self.kind, self.output] + when + ([f"{op}{self.threshold:g}"] if self.threshold is not None else [])
        return " ".join(bits)

    @classmethod
    def from_dict(cls, d) -> "Endpoint":
        """From a mapping ``{kind, output, time?, threshold?, name?}`` (a config file's endpoint)."""
        if not isinstance(d, dict):
            raise ValueError(f"an endpoint must be a mapping with kind and output, got {d!r}")
        unknown = set(d) - {"kind", "output", "time", "threshold", "name", "start"}
        if unknown:
            raise ValueError(f"endpoint: unknown key(s) {sorted(unknown)}; allowed: kind, output, time, threshold, name, "
                             "start")
        missing = {"kind", "output"} - set(d)
        if missing:
            raise ValueError(f"endpoint {d!r} lacks {sorted(missing)}")
        return cls(**d)

    def compute(self, sims: SimulationSet | pd.DataFrame) -> pd.Series:
        """The endpoint per (subject_id, scenario); pairs whose simulation failed are left out (use
        ``sims.failed()`` to see them)."""
        frame = sims.ok_frame() if isinstance(sims, SimulationSet) else sims
        f = frame[frame["output"] == self.output]
        if f.empty:
            raise ValueError(f"no rows of output {self.output!r} (outputs: {sorted(frame['output'].unique())})")
        keys = ["subject_id", "scenario"]
        wide = f.set_index(keys + ["time"])["value"].unstack("time").sort_index(axis=1)
        times = wide.columns.to_numpy(dtype=float)
        values = self.from_array(wide.to_numpy(dtype=float)[:, None, :], times, 0)
        return pd.Series(values, index=wide.index, name=self.label)

    def from_array(self, values: np.ndarray, times: np.ndarray, output_index: int) -> np.ndarray:
        """The endpoint from an array (N, outputs, times) on the grid ``times`` (for surrogate-driven analyses)."""
        y = values[:, output_index]
        times = np.asarray(times, dtype=float)
        if self.kind in ("value_at", "above", "below"):
            j = np.flatnonzero(np.isclose(times, self.time))
            if not len(j):
                raise ValueError(f"time {self.time:g} is not on the grid {[float(t) for t in times]}")
            v = y[:, j[0]]
            if self.kind == "value_at":
                return v
            hit = v >= self.threshold if self.kind == "above" else v < self.threshold
            return np.where(np.isnan(v), np.nan, hit.astype(float))
        if self.kind in WINDOWED:
            inside = np.ones(len(times), bool)
            if self.start is not None:
                inside &= times >= self.start - 1e-9
            if self.time is not None:
                inside &= times <= self.time + 1e-9
            if not inside.any():
                raise ValueError(f"no grid time in the window [{self.start}, {self.time}] of endpoint {self.label!r} "
                                 f"(grid {times[0]:g}-{times[-1]:g})")
            v, tw = y[:, inside], times[inside]
            if self.kind == "peak":
                return v.max(1)
            if self.kind == "auc":
                return _trapezoid(v, tw, axis=1)
            hit = (v >= self.threshold).any(1) if self.kind == "ever_above" else (v >= self.threshold).all(1)
            return np.where(np.isnan(v).any(1), np.nan, hit.astype(float))
        if self.kind == "time_above":
            hit = y >= self.threshold
            return np.where(hit.any(1), times[hit.argmax(1)], np.nan)
        # time_below: first time after the peak below the threshold
        after_peak = np.arange(len(times))[None, :] >= np.nanargmax(np.where(np.isnan(y), -np.inf, y), axis=1)[:, None]
        hit = (y < self.threshold) & after_peak
        return np.where(hit.any(1), times[hit.argmax(1)], np.nan)


def sweep(engine, population: pd.DataFrame, scenarios: Sequence[Scenario], times=None,
          outputs: Sequence[str] | None = None, max_pairs: int = 200_000, progress: bool | None = None,
          backend: str = "local", shard_dir=None, **run_options) -> SimulationSet:
    """``engine.run`` for every patient under every scenario, in chunks of scenarios with at most ``max_pairs``
    (patient, scenario) pairs each (memory stays bounded), with a progress bar (default: when there is more
    than one chunk). ``times`` may be omitted for a surrogate (its grid). Failed or out-of-domain pairs keep
    their status (see :class:`~hybridtwin.engine.SimulationSet`). Rows are ordered scenario by scenario.

    backend: ``"local"`` (this process) or ``"ray"``: every chunk is a Ray task (``pip install
    'hybridtwin[ray]'``; connects to a running cluster, or starts a local one, with ``ray.init()``), the
    results are merged into the same table as the local backend gives. shard_dir: with Ray, each task also
    writes its shard there (``shard_00000.csv`` ...), so that a sweep too large for memory can be merged
    later (:func:`merge_shards`).
    """
    if backend not in ("local", "ray"):
        raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
    from tqdm.auto import tqdm

    scenarios = list(scenarios)
    if not isinstance(population, pd.DataFrame) or population.empty:
        raise ValueError("population must be a non-empty DataFrame with one row per patient")
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
        raise ValueError(f"max_pairs must be a positive integer, got {max_pairs!r}")
    if times is None and not hasattr(engine, "domain"):
        raise ValueError("times are required for an exact engine (a surrogate defaults to its grid)")
    per = max(1, max_pairs // len(population))
    chunks = [scenarios[i:i + per] for i in range(0, len(scenarios), per)]
    progress = len(chunks) > 1 if progress is None else progress
    frames, statuses, name = [], [], ""
    if backend == "ray":
        results = _ray_run(engine, population, chunks, times, outputs, run_options, shard_dir, progress)
    else:
        results = (engine.run(population, chunk, times, outputs, **run_options) for chunk in chunks)
    for sims in tqdm(results, total=len(chunks), desc="sweep", unit="chunk", disable=not progress or backend == "ray"):
        frames.append(sims.frame)
        statuses.append(sims.status)
        name = sims.engine
    order = {sc.name: j for j, sc in enumerate(scenarios)}

    def scenario_major(df: pd.DataFrame) -> pd.DataFrame:  # the same row order whatever the chunking
        return df.iloc[np.argsort(df["scenario"].map(order).to_numpy(), kind="stable")].reset_index(drop=True)

    return SimulationSet(scenario_major(pd.concat(frames, ignore_index=True)),
                         scenario_major(pd.concat(statuses, ignore_index=True)), engine=name)


def _ray_run(engine, population, chunks, times, outputs, run_options, shard_dir, progress) -> list:
    try:
        import ray
    except ImportError:
        raise ImportError("backend='ray' needs Ray: pip install 'hybridtwin[ray]'") from None
    from tqdm.auto import tqdm

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    folder = None if shard_dir is None else str(Path(shard_dir).resolve())
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)

    @ray.remote
    def task(engine, population, chunk, index):
        sims = engine.run(population, chunk, times, outputs, **run_options)
        if folder is not None:
            sims.frame.to_csv(Path(folder) / f"shard_{index:05d}.csv", index=False)
            sims.status.to_csv(Path(folder) / f"status_{index:05d}.csv", index=False)
        return sims

    eng, pop = ray.put(engine), ray.put(population)
    refs = [task.remote(eng, pop, chunk, i) for i, chunk in enumerate(chunks)]
    bar = tqdm(total=len(refs), desc="sweep (ray)", unit="shard", disable=not progress)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        bar.update(len(done))
    bar.close()
    return ray.get(refs)


def merge_shards(shard_dir, scenarios: Sequence[Scenario] | None = None) -> SimulationSet:
    """The sweep written shard by shard into ``shard_dir`` by ``sweep(..., backend="ray", shard_dir=...)``,
    merged (rows ordered scenario by scenario when ``scenarios`` are given, else as the shards come)."""
    folder = Path(shard_dir)
    shards = sorted(folder.glob("shard_*.csv"))
    if not shards:
        raise ValueError(f"{folder} holds no shard_*.csv files")
    frame = pd.concat([pd.read_csv(f, dtype={"subject_id": str}) for f in shards], ignore_index=True)
    status = pd.concat([pd.read_csv(f, dtype={"subject_id": str}) for f in sorted(folder.glob("status_*.csv"))],
                       ignore_index=True)
    if scenarios is not None:
        order = {sc.name: j for j, sc in enumerate(scenarios)}
        frame = frame.iloc[np.argsort(frame["scenario"].map(order).to_numpy(), kind="stable")].reset_index(drop=True)
        status = status.iloc[np.argsort(status["scenario"].map(order).to_numpy(), kind="stable")].reset_index(drop=True)
    return SimulationSet(frame, status, engine="merged")


def verify(sims: SimulationSet, exact: ExactEngine, population: pd.DataFrame, scenarios: Sequence[Scenario],
           endpoint: Endpoint | None = None, n_scenarios: int = 10, top_k: int | None = None, seed: int = 0) -> dict:
    """Re-run part of a sweep with the exact engine: ``n_scenarios`` random scenarios, or the ``top_k`` with
    the highest mean ``endpoint``. Returns the scenarios checked, the absolute differences of every output
    value (median, 95th percentile, max) and, with an endpoint, of the per-scenario endpoint means."""
    scenarios = list(scenarios)
    by_name = {s.name: s for s in scenarios}
    if top_k is not None:
        if endpoint is None:
            raise ValueError("top_k needs an endpoint to rank scenarios by")
        means = endpoint.compute(sims).groupby("scenario").mean().sort_values(ascending=False)
        chosen = [by_name[n] for n in means.index[:top_k]]
    else:
        rng = np.random.default_rng(seed)
        chosen = [scenarios[i] for i in sorted(rng.choice(len(scenarios), min(n_scenarios, len(scenarios)), replace=False))]
    names = {s.name for s in chosen}
    times = sorted(sims.frame["time"].unique())
    outputs = list(sims.frame["output"].unique())
    ex = exact.run(population, chosen, times, outputs)
    keys = ["subject_id", "scenario", "time", "output"]
    a = sims.ok_frame()
    a = a[a["scenario"].isin(names)]
    m = a.merge(ex.ok_frame(), on=keys, suffixes=("", "_exact"))
    d = (m["value"] - m["value_exact"]).abs()
    out = {"scenarios": sorted(names), "n_values": int(len(m)), "n_failed_exact": ex.n_failed,
           "abs_error": {"median": float(d.median()), "p95": float(d.quantile(0.95)), "max": float(d.max())}}
    if endpoint is not None:
        e1 = endpoint.compute(SimulationSet(a, sims.status)).groupby("scenario").mean()
        e2 = endpoint.compute(ex).groupby("scenario").mean()
        j = pd.concat([e1.rename("engine"), e2.rename("exact")], axis=1).dropna()
        out["endpoint"] = {"label": endpoint.label, "per_scenario": j.reset_index().to_dict(orient="records"),
                           "max_abs_difference_of_means": float((j["engine"] - j["exact"]).abs().max())}
    return out


# ---------------------------------------------------------------------- plots
def heatmap(values: pd.Series, grid, path, title: str = "") -> Path:
    """Mean endpoint per scenario of a 2-factor :class:`~hybridtwin.scenarios.ScenarioGrid` as a heatmap (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = grid.frame()
    varied = [c for c in grid.values if len(grid.values[c]) > 1]
    if len(varied) != 2:
        raise ValueError(f"a heatmap needs a grid with exactly two varied factors, got {varied}")
    means = values.groupby("scenario").mean()
    f = f.assign(value=f["scenario"].map(means))
    table = f.pivot_table(index=varied[1], columns=varied[0], values="value")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    im = ax.imshow(table.to_numpy(), origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(table.shape[1]), [f"{v:g}" for v in table.columns], rotation=90 if table.shape[1] > 12 else 0)
    ax.set_yticks(range(table.shape[0]), [f"{v:g}" for v in table.index])
    ax.set_xlabel(varied[0])
    ax.set_ylabel(varied[1])
    fig.colorbar(im, ax=ax, label=f"mean {values.name or 'endpoint'}")
    ax.set_title(title or f"{values.name}: mean over patients")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def distributions(values: pd.Series, path, max_scenarios: int = 30, title: str = "") -> Path:
    """Box plots of an endpoint per scenario (the ``max_scenarios`` with the highest means when there are more)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = values.rename("value").reset_index()
    order = df.groupby("scenario")["value"].mean().sort_values(ascending=False).index[:max_scenarios]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(order) + 2), 4.5))
    ax.boxplot([df.loc[df["scenario"] == s, "value"].dropna() for s in order], showfliers=False)
    ax.set_xticks(range(1, len(order) + 1), list(order), rotation=75, fontsize=7)
    ax.set_ylabel(values.name or "endpoint")
    ax.set_title(title or "endpoint per scenario (box: quartiles, whiskers: 1.5 IQR)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- sensitivity
def sensitivity(surrogate, endpoint: Endpoint, n: int = 1024, seed: int = 0, n_check: int = 200,
                plot: str | Path | None = None) -> dict:
    """First-order and total Sobol indices of ``endpoint`` to every surrogate input (patient parameters on
    their domain scale, scenario factors uniform over their ranges), by SALib's Saltelli design of
    ``n * (2 * inputs + 2)`` evaluations of the surrogate; ``n_check`` of those points are re-simulated with
    the exact engine and the endpoint's disagreement reported. ``plot``: a PNG path for a bar chart."""
    from SALib.analyze import sobol as sobol_analyze
    from SALib.sample import sobol as sobol_sample

    dom = surrogate.domain
    names = dom.input_names
    if endpoint.output not in dom.outputs:
        raise ValueError(f"endpoint output {endpoint.output!r} is not a surrogate output {dom.outputs}")
    problem = {"num_vars": len(names), "names": names, "bounds": [[0.0, 1.0]] * len(names)}
    u = sobol_sample.sample(problem, n, calc_second_order=False, seed=seed)
    mean, _ = surrogate.predict_unit(u)
    o = dom.outputs.index(endpoint.output)
    y = endpoint.from_array(mean, dom.times, o)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"endpoint {endpoint.label} is undefined (NaN) for some inputs; choose one defined everywhere")
    res = sobol_analyze.analyze(problem, y, calc_second_order=False, seed=seed)
    table = pd.DataFrame({"input": names, "S1": res["S1"], "S1_conf": res["S1_conf"], "ST": res["ST"],
                          "ST_conf": res["ST_conf"]})
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(u), min(n_check, len(u)), replace=False)
    P = len(dom.parameters.names)
    from .surrogate.emulator import exact_params

    pop = exact_params(surrogate.exact, dom, dom.parameters.from_unit(u[pick, :P]))
    b = dom.scenarios.bounds
    scen = [dom.scenarios.scenario(b[:, 0] + x * (b[:, 1] - b[:, 0]), name=f"c{i}") for i, x in enumerate(u[pick, P:])]
    exact, status = surrogate.exact.simulate_pairs(pop, scen, dom.times, dom.outputs)
    ok = np.array([s == "ok" for s in status])
    ye = endpoint.from_array(exact[ok], dom.times, o)
    diff = np.abs(y[pick][ok] - ye)
    check = {"n": int(ok.sum()), "median_abs_error": float(np.median(diff)), "max_abs_error": float(diff.max()),
             "endpoint_sd": float(np.std(y))}
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(names) + 2), 4))
        x = np.arange(len(names))
        ax.bar(x - 0.2, table["S1"], 0.4, yerr=table["S1_conf"], label="first order S1")
        ax.bar(x + 0.2, table["ST"], 0.4, yerr=table["ST_conf"], label="total ST")
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel("Sobol index")
        ax.set_title(f"sensitivity of {endpoint.label} ({len(u)} surrogate evaluations)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot, dpi=120)
        plt.close(fig)
    return {"table": table, "n_evaluations": int(len(u)), "exact_check": check}


__all__ = ["Endpoint", "distributions", "heatmap", "merge_shards", "sensitivity", "sweep", "verify"]
