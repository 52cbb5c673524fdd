"""Benchmark: hybridtwin.simulate for N virtual patients vs a per-patient scipy solve_ivp (LSODA) loop.

Both run in this one process, side by side, at the same tolerances (rtol 1e-6, atol scaled to each state's
peak magnitude: atol_s = 1e-5 * rtol * max(1, peak_s)). scipy integrates an independent numpy
transcription of the equations; it is timed on a subset of patients and scaled per patient.

Scenarios
- ``baccam2006``: beta, k, delta, p, c log-normally varied (sd 0.2 on the log scale), 41 outputs over 10 days.
- ``vaccine_asc``: alpha/beta of S and L and delta_Ab varied likewise; prime at day 0, boost at a
  patient-specific day drawn uniformly in [21, 42] (continuous); 41 outputs over 180 days. scipy integrates
  piecewise between the doses and adds each bolus to Ag.

Engines, all in this one process on the same patients (one row per model, N and engine):

- ``ours``: ``ht.simulate`` (native batched dopri5, per-subject clocks), the library default;
- ``ours fused``: the same with ``fused=True`` (each step one ``torch.compile``-d graph); its one-off
  compilation is reported apart (``compile_s``) and excluded from its time;
- ``ours (solve)``, ``ours fused (solve)``: the same solver through ``ht.solve`` (tensors in, tensors out: the
  array-level call that torchdiffeq and torchode are timed by, without ``simulate``'s tables);
- ``torchdiffeq``: the library's ``backend="torchdiffeq"`` (dopri5, the whole batch as one system with one
  shared step; dose times are breakpoints for everyone);
- ``torchode``: torchode's Dopri5 with an integral controller (per-sample steps, like ours), on states scaled
  by their ``atol`` so that its scalar ``atol`` matches ours per state; no dose events in torchode, so
  ``baccam2006`` only;
- ``scipy``: the LSODA loop (a timed subset, scaled per patient).

Reported per row: per-patient time, speed-up over the scipy loop, and the max relative difference from scipy,
|x - scipy| / max(|scipy|, 1e-3 * peak_s) over all states, times and patients of the subset (a relative error
that ignores values below 0.1 % of a state's peak, where only atol controls either solver). Times are the best
of ``repeats`` runs (these machines are shared and have transient stalls); scipy's is the mean over its subset.

Run: ``python experiments/bench_solve.py`` (writes experiments/results/bench_solve.csv and .md);
``--engines ours "ours fused (solve)"`` restricts the engines (quote names with spaces).
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import hybridtwin as ht

RESULTS = Path(__file__).resolve().parent / "results"
RTOL = 1e-6


def _baccam_rhs(t, y, beta, k, delta, p, c):
    T, I1, I2, V = y
    return [-beta * T * V, beta * T * V - k * I1, k * I1 - delta * I2, p * I2 - c * V]


def _vaccine_rhs(t, y, dAg, KAg, rhoM, Mmax, aS, bS, aL, bL, thS, thL, dS, dL, dAb):
    Ag, M, S, L, Ab = y
    stim = Ag / (KAg + Ag)
    return [-dAg * Ag, rhoM * stim * (1 - M / Mmax), (aS + bS * M) * stim - dS * S,
            (aL + bL * M) * stim - dL * L, thS * S + thL * L - dAb * Ab]


def _lognormal(rng, defaults: dict, names, n, sd=0.2) -> pd.DataFrame:
    return pd.DataFrame({k: defaults[k] * np.exp(sd * rng.standard_normal(n)) for k in names})


def scenario(name: str, n: int, rng):
    """Parameters (DataFrame), dose table, output times, state names and the scipy problem for one scenario."""
    m = ht.models.get(name)
    d = m.default_parameters()
    if name == "baccam2006":
        params = _lognormal(rng, d, ["beta", "k", "delta", "p", "c"], n)
        times = np.linspace(0, 10, 41)
        doses = None
        order = ["beta", "k", "delta", "p", "c"]
        rhs = _baccam_rhs
        y0 = lambda row: [d["T0"], 0.0, 0.0, d["V0"]]
        dose_times = lambda i: []
    else:
        params = _lognormal(rng, d, ["alpha_S", "beta_S", "alpha_L", "beta_L", "delta_Ab"], n)
        times = np.linspace(0, 180, 41)
        boost = rng.uniform(21.0, 42.0, n)
        doses = pd.DataFrame({"subject_id": np.repeat(np.arange(n), 2), "time": np.c_[np.zeros(n), boost].ravel(),
                              "amount": 1.0, "target": "Ag", "duration": 0.0})
        order = ["delta_Ag", "K_Ag", "rho_M", "M_max", "alpha_S", "beta_S", "alpha_L", "beta_L", "theta_S",
                 "theta_L", "delta_S", "delta_L", "delta_Ab"]
        rhs = _vaccine_rhs
        y0 = lambda row: [0.0, 0.0, 0.0, 0.0, 0.0]
        dose_times = lambda i: [0.0, float(boost[i])]
    params.insert(0, "subject_id", np.arange(n))
    full = {**d}
    return m, params, doses, times, order, rhs, y0, dose_times, full


def scipy_solve(rhs, y0, args, times, dose_times, atol, target=0, amounts=None):
    """Piecewise LSODA between bolus times; a dose at time a adds ``amounts[i]`` (default 1) of dose i to state
    ``target`` (right-continuous)."""
    from scipy.integrate import solve_ivp

    out = np.full((len(times), len(y0)), np.nan)
    y = np.array(y0, dtype=float)
    edges = sorted({0.0, *dose_times, float(times[-1])})
    for a, b in zip(edges[:-1], edges[1:]):
        for i, d in enumerate(dose_times):
            if d == a:
                y[target] += 1.0 if amounts is None else float(amounts[i])
        sel = (times >= a) & ((times <= b) if b == edges[-1] else (times < b))
        t_eval = np.unique(np.r_[times[sel], b])
        sol = solve_ivp(rhs, (a, b), y, method="LSODA", t_eval=t_eval, args=args, rtol=RTOL, atol=atol)
        out[sel] = sol.y.T[np.searchsorted(t_eval, times[sel])]
        y = sol.y[:, -1].copy()
    return out


ENGINES = ("ours", "ours fused", "ours (solve)", "ours fused (solve)", "torchdiffeq", "torchode")
#: torchdiffeq integrates the batch between the union of everyone's dose times: with a patient-specific boost
#: day that is N intervals, each a solve of the whole batch (3.9 ms/patient at N = 1,000 already)
TORCHDIFFEQ_MAX_DOSED = 1000


def _torch_inputs(m, params, doses):
    from hybridtwin.dosing import BatchSchedule

    ids = params["subject_id"].tolist()
    theta = m.parameter_space.tensor_from(params.drop(columns="subject_id").to_dict("records"), dtype=torch.float64)
    target_map = {k: iv.target for k, iv in m.interventions.items()}
    frame = doses if doses is not None else pd.DataFrame(columns=["subject_id", "time", "amount", "target", "duration"])
    sched = BatchSchedule.from_frame(frame, ids, m.all_state_names, target_map, dtype=torch.float64)
    return theta, m.initial_state(theta), sched


def _torchode_solve(m, theta, y0, times, atol_states):
    """torchode Dopri5 + integral controller on states scaled by their atol (scalar atol 1 = ours per state)."""
    import torchode as to

    scale = torch.tensor(atol_states, dtype=torch.float64)

    def f(t, z):
        return m.vector_field(t, z * scale, theta) / scale

    term = to.ODETerm(f)
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=1.0, rtol=RTOL, term=term))
    t_eval = torch.as_tensor(times, dtype=torch.float64).expand(len(theta), -1)
    sol = solver.solve(to.InitialValueProblem(y0=y0 / scale, t_eval=t_eval))
    return (sol.ys * scale).numpy()


def run(name: str, sizes, n_scipy: int, seed: int = 0, repeats: int = 3, engines=ENGINES) -> list[dict]:
    from hybridtwin.solve import SolverConfig, solve

    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        m, params, doses, times, order, rhs, y0f, dose_times, d = scenario(name, n, rng)
        ref = ht.simulate(m, times, params=params.head(1), doses=None if doses is None else doses[doses.subject_id == 0])
        peak = ref[m.state_names].abs().max().to_numpy()
        if name == "vaccine_asc":
            peak = np.maximum(peak, 1.0)
        atol = 1e-5 * RTOL * np.maximum(1.0, peak)
        atol_cfg = tuple(atol.tolist()) + tuple([1e-12] * len(m.compartment_names))
        S = len(m.state_names)
        # scipy: a subset, scaled per patient
        k = min(n, n_scipy)
        row0 = {**d, **params.iloc[0].to_dict()}
        scipy_solve(rhs, y0f(row0), tuple(row0[o] for o in order), times, dose_times(0), atol)  # warm-up
        t0 = time.perf_counter()
        ref_states = []
        for i in range(k):
            row = {**d, **params.iloc[i].to_dict()}
            args = tuple(row[o] for o in order)
            ref_states.append(scipy_solve(rhs, y0f(row), args, times, dose_times(i), atol))
        t_scipy = (time.perf_counter() - t0) / k
        ref_arr = np.stack(ref_states)
        floor = 1e-3 * np.maximum(peak, 1e-300)
        theta, y0, sched = _torch_inputs(m, params, doses)
        t_tensor = torch.as_tensor(times, dtype=torch.float64)

        def simulate(fused):
            out = ht.simulate(m, times, params=params, doses=doses, rtol=RTOL, atol=atol_cfg, progress=False,
                              fused=fused)
            failed = int(sum(v != "ok" for v in out.attrs["status"].values()))
            return out[m.state_names].to_numpy().reshape(n, len(times), -1), failed

        def native(fused):
            with torch.no_grad():
                sol = solve(m, y0, t_tensor, theta, schedule=sched,
                            config=SolverConfig(rtol=RTOL, atol=atol_cfg, fused=fused))
            return sol.ys[..., :S].numpy(), int((~sol.ok).sum())

        def torchdiffeq():
            with torch.no_grad():
                sol = solve(m, y0, t_tensor, theta, schedule=sched,
                            config=SolverConfig(backend="torchdiffeq", rtol=RTOL, atol=atol_cfg))
            return sol.ys[..., :S].numpy(), int((~sol.ok).sum())

        def torchode():
            with torch.no_grad():
                return _torchode_solve(m, theta, y0, times, atol_cfg)[..., :S], 0

        available = {"ours": lambda: simulate(False), "ours fused": lambda: simulate(True),
                     "ours (solve)": lambda: native(False), "ours fused (solve)": lambda: native(True),
                     "torchdiffeq": torchdiffeq}
        if doses is None and importlib.util.find_spec("torchode") is not None:
            available["torchode"] = torchode
        elif "torchode" in engines and doses is None:
            print("torchode is not installed (pip install -e '.[bench]'): its rows are skipped", flush=True)
        rows.append(dict(model=name, n_patients=n, engine="scipy LSODA loop", total_s=t_scipy * n,
                         ms_per_patient=1e3 * t_scipy, speedup_vs_scipy=1.0, max_rel_diff=0.0, failed=0,
                         compile_s=0.0, scipy_patients_timed=k))
        for engine in engines:
            if engine not in available:
                continue
            if engine == "torchdiffeq" and doses is not None and n > TORCHDIFFEQ_MAX_DOSED:
                print(f"{name:<12} N={n:>6}  torchdiffeq  skipped: every subject's dose time is a breakpoint of the "
                      "whole batch (cost ~ N^2)", flush=True)
                continue
            compile_s = 0.0
            if "fused" in engine:  # the one-off compilation, reported apart
                t0 = time.perf_counter()
                available[engine]()
                compile_s = time.perf_counter() - t0
            best = np.inf
            for _ in range(repeats):  # best of `repeats`: shared machines have transient stalls
                t0 = time.perf_counter()
                states, failed = available[engine]()
                best = min(best, time.perf_counter() - t0)
            rel = np.abs(states[:k] - ref_arr) / np.maximum(np.abs(ref_arr), floor)
            rows.append(dict(model=name, n_patients=n, engine=engine, total_s=best, ms_per_patient=1e3 * best / n,
                             speedup_vs_scipy=t_scipy / (best / n), max_rel_diff=float(np.nanmax(rel)), failed=failed,
                             compile_s=compile_s, scipy_patients_timed=k))
            r = rows[-1]
            print(f"{name:<12} N={n:>6}  {engine:<12} {r['ms_per_patient']:8.4f} ms/pt  scipy {1e3 * t_scipy:7.3f} "
                  f"ms/pt  ratio {r['speedup_vs_scipy']:7.1f}x  max rel diff {r['max_rel_diff']:.2e}"
                  + (f"  (compile {compile_s:.0f} s)" if compile_s else ""), flush=True)
    return rows


def main(sizes=(100, 1_000, 10_000), n_scipy: int = 300, models=("baccam2006", "vaccine_asc"), out_dir=RESULTS,
         threads: int | None = None, repeats: int = 3, engines=ENGINES) -> pd.DataFrame:
    """Run the benchmark and write ``bench_solve.csv`` and ``bench_solve.md`` into ``out_dir``."""
    if threads:
        torch.set_num_threads(threads)
    rows = []
    for name in models:
        rows += run(name, sizes, n_scipy, repeats=repeats, engines=engines)
    table = pd.DataFrame(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "bench_solve.csv", index=False)
    env = (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
           f"{torch.get_num_threads()} torch threads, rtol {RTOL}")
    (out_dir / "bench_solve.md").write_text(
        "# bench_solve\n\n" + env + "\n\n" + table.to_markdown(index=False, floatfmt=".4g") + "\n"
        if _has_tabulate() else "# bench_solve\n\n" + env + "\n\n" + table.to_string(index=False) + "\n"
    )
    print(table.to_string(index=False))
    return table


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1_000, 10_000])
    ap.add_argument("--n-scipy", type=int, default=300)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--models", nargs="+", default=["baccam2006", "vaccine_asc"])
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    main(tuple(a.sizes), a.n_scipy, models=tuple(a.models), out_dir=a.out, threads=a.threads, engines=tuple(a.engines))
