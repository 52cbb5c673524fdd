"""Benchmark: neural surrogate vs the exact batched engine, a scipy loop and a Gaussian-process emulator.

Workload (the surrogate issue): ``vaccine_asc``, 1,000 virtual patients x 100 prime-boost schedules (booster
day 14-365 x booster dose 0.25-4, a 10 x 10 grid; prime of 1 at day 0) = 10^5 patient-scenario pairs, log10
antibody at 20 times over a year. Patients vary in the seven patient-level parameters (alpha_S, beta_S,
alpha_L, beta_L, delta_S, delta_L, delta_Ab), each log-uniform within a factor 2 of its default.

Engines, side by side in one process:

- **surrogate** (three architectures, chosen by this measurement): ``timed`` (the default) -- a rank-r split
  between patients and (scenario, output time), the trunk reading the time since each dose (hidden sizes
  ``TIMED_HIDDEN``); ``separable`` -- the same split with the whole output grid from the trunk at once;
  ``grid`` -- one ensemble MLP from all inputs to the whole output grid.
  Trained on ``--n-train`` exact simulations of a joint Sobol design; throughput of ``Surrogate.run`` (the
  engine protocol, long table included) and of the raw array prediction.
- **exact**: ``ExactEngine.run`` (all pairs in one batched adaptive solve, rtol 1e-6).
- **scipy**: ``solve_ivp`` (LSODA, rtol 1e-6, piecewise between doses) in a loop over ``--scipy-pairs`` pairs,
  scaled to 10^5.
- **Gaussian process**: scikit-learn ``GaussianProcessRegressor`` (Matern 5/2 with one length scale per input,
  plus white noise; the 20 standardised outputs share the kernel), the usual QSP emulator, trained on
  ``--gp-n`` pairs (an exact GP cannot take the surrogate's full budget: its cost grows as n^3); the
  surrogate is also trained on the same ``--gp-n`` pairs for the equal-data comparison.

A trained hybrid twin with a closure (``--twin``; default the fold-1 hybrid twin of ``challenger_folds.py``):
its surrogate against the twin's own exact solve (``TwinEngine``), accuracy and speed-up.

Accuracy: absolute error of log10 antibody on 2,000 held-out pairs drawn independently (uniform random) of the
training design: median, 95th percentile, worst. Targets (2 CPU cores): surrogate >= 100x the exact engine and
>= 1,000x the scipy loop; median error <= 0.05 and 95th percentile <= 0.15; better than the GP at equal data.

Run ``python experiments/bench_surrogate.py`` (about 15 min on 2 cores); results:
``experiments/results/bench_surrogate.{md,json}``. ``--small`` is a 1-minute smoke run.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import RESULTS, ROOT
from bench_solve import _vaccine_rhs, scipy_solve
from hybridtwin.engine import ExactEngine
from hybridtwin.surrogate import Domain, certify, fit_surrogate, simulate_domain

PATIENT = {"alpha_S": 1.0, "beta_S": 4000.0, "alpha_L": 0.005, "beta_L": 5.0, "delta_S": 0.231, "delta_L": 0.000316,
           "delta_Ab": 0.025}
DOMAIN = {"model": "vaccine_asc", "parameters": {k: [v / 2, v * 2] for k, v in PATIENT.items()},
          "scenarios": {"doses": [{"name": "prime", "target": "Ag", "time": 0, "amount": 1},
                                  {"name": "boost", "target": "Ag", "time": [14, 365], "amount": [0.25, 4]}]},
          "times": {"start": 18.25, "stop": 365, "num": 20}, "outputs": ["log10_Ab"]}
#: the timed architecture's hidden sizes (its recipe in ``bench_surrogate_equal_data.py``)
TIMED_HIDDEN = (128, 128, 128)


#: the hybrid twin (sarscov2_cd8 + a neural clearance closure) trained in leave-studies-out fold 1
TWIN = RESULTS / "challenger_folds" / "fold1_hybrid"
ORDER = ["delta_Ag", "K_Ag", "rho_M", "M_max", "alpha_S", "beta_S", "alpha_L", "beta_L", "theta_S", "theta_L",
         "delta_S", "delta_L", "delta_Ab"]


def timed(fn, repeats: int = 3):
    """(best wall seconds over ``repeats``, last result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def workload(domain: Domain, n_patients: int, n_days: int, n_doses: int, seed: int = 7):
    rng = np.random.default_rng(seed)
    pop = domain.parameters.from_unit(rng.random((n_patients, len(domain.parameters.names))))
    pop.insert(0, "subject_id", [f"p{i}" for i in range(n_patients)])
    grid = domain.scenarios.grid({"boost.time": np.linspace(14, 365, n_days), "boost.amount":
                                  np.geomspace(0.25, 4, n_doses)})
    return pop, list(grid)


def scipy_loop(domain: Domain, pop: pd.DataFrame, scenarios, n_pairs: int, seed: int = 0):
    """Seconds per pair of a solve_ivp loop and its values for a random subset of pairs."""
    rng = np.random.default_rng(seed)
    defaults = domain.model.parameter_space.defaults()
    times = domain.times
    pick = [(int(rng.integers(len(pop))), int(rng.integers(len(scenarios)))) for _ in range(n_pairs)]
    out = []
    t0 = time.perf_counter()
    for i, j in pick:
        p = {**defaults, **pop.iloc[i].drop("subject_id").to_dict()}
        sc = scenarios[j]
        dt = [float(d.time) for d in sc.doses]
        am = [float(d.amount) for d in sc.doses]
        y = scipy_solve(_vaccine_rhs, [0.0] * 5, tuple(p[k] for k in ORDER), np.r_[0.0, times], dt, 1e-10,
                        target=0, amounts=am)[1:, 4]
        out.append(np.log10(np.maximum(y, 1e-300)))
    return (time.perf_counter() - t0) / n_pairs, pick, np.array(out)


def gaussian_process(train: dict, n: int, held: dict, seed: int = 0):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    u, y = train["u"][train["ok"]][:n], train["y"][train["ok"]][:n].reshape(n, -1)
    mu, sd = y.mean(0), y.std(0) + 1e-9
    kernel = ConstantKernel(1.0) * Matern(length_scale=np.ones(u.shape[1]), nu=2.5,
                                          length_scale_bounds=(1e-2, 1e2)) + WhiteKernel(1e-4, (1e-8, 1e-1))
    gp = GaussianProcessRegressor(kernel, normalize_y=False, random_state=seed, n_restarts_optimizer=0)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gp.fit(u, (y - mu) / sd)
    fit_s = time.perf_counter() - t
    ok = held["ok"]
    t = time.perf_counter()
    pred = gp.predict(held["u"][ok]) * sd + mu
    per_pair = (time.perf_counter() - t) / int(ok.sum())
    err = np.abs(pred - held["y"][ok].reshape(int(ok.sum()), -1))
    return {"n_train": n, "fit_seconds": fit_s, "seconds_per_pair": per_pair, "kernel": str(gp.kernel_),
            "median": float(np.median(err)), "p95": float(np.quantile(err, 0.95)), "max": float(err.max())}


def main(n_train: int = 20000, epochs: int = 300, gp_n: int = 2000, scipy_pairs: int = 200, n_patients: int = 1000,
         n_days: int = 10, n_doses: int = 10, n_held: int = 2000, out=RESULTS, stem: str = "bench_surrogate",
         archs=("timed", "separable", "grid"), hidden=(256, 256, 256), members: int = 5, twin=None) -> dict:
    torch.manual_seed(0)
    domain = Domain.from_dict(DOMAIN)
    pop, scenarios = workload(domain, n_patients, n_days, n_doses)
    n_pairs = len(pop) * len(scenarios)
    res = {"threads": torch.get_num_threads(), "n_pairs": n_pairs, "n_patients": len(pop), "n_scenarios": len(scenarios),
           "n_times": len(domain.times), "domain": domain.to_dict()}
    print(f"workload: {len(pop)} patients x {len(scenarios)} schedules = {n_pairs} pairs", flush=True)

    t = time.perf_counter()
    train = simulate_domain(domain, n_train, seed=0, method="sobol")
    res["train_simulation_seconds"] = time.perf_counter() - t
    held = simulate_domain(domain, n_held, seed=99, method="random")
    print(f"training data: {n_train} exact simulations in {res['train_simulation_seconds']:.1f} s", flush=True)

    exact = ExactEngine("vaccine_asc", rtol=1e-6)
    ex_s, ex_sims = timed(lambda: exact.run(pop, scenarios, domain.times), repeats=1)
    res["exact"] = {"seconds": ex_s, "pairs_per_second": n_pairs / ex_s, "n_failed": ex_sims.n_failed}
    print(f"exact engine: {ex_s:.1f} s ({n_pairs / ex_s:,.0f} pairs/s)", flush=True)

    sp, pick, sp_vals = scipy_loop(domain, pop, scenarios, scipy_pairs)
    wide = ex_sims.frame.pivot_table(index=["subject_id", "scenario"], columns="time", values="value")
    ref = np.array([wide.loc[(pop["subject_id"].iloc[i], scenarios[j].name)].to_numpy() for i, j in pick])
    res["scipy"] = {"seconds_per_pair": sp, "pairs_per_second": 1 / sp, "n_timed": scipy_pairs,
                    "max_abs_diff_vs_exact_log10": float(np.nanmax(np.abs(sp_vals - ref)))}
    print(f"scipy loop: {sp * 1e3:.2f} ms/pair ({1 / sp:,.0f} pairs/s); max |diff| vs exact "
          f"{res['scipy']['max_abs_diff_vs_exact_log10']:.2e}", flush=True)

    res["surrogates"] = []
    exact_vals = wide  # reference for the workload's own pairs
    for arch in archs:
        size = TIMED_HIDDEN if arch == "timed" else hidden
        s = fit_surrogate(domain, members=members, hidden=size, epochs=epochs, progress=False, seed=0, data=train,
                          arch=arch)
        cert = certify(s, data=held)
        run_s, sims = timed(lambda: s.run(pop, scenarios))
        up, us, _, _ = s.encode(pop.drop(columns="subject_id"), scenarios)
        arr_s, _ = timed(lambda: s.predict_product(up, us, sd=True))  # arrays with the ensemble SD
        got = sims.frame.pivot_table(index=["subject_id", "scenario"], columns="time", values="value")
        werr = np.abs(got.to_numpy() - exact_vals.loc[got.index].to_numpy())
        row = {"arch": arch, "n_train": n_train, "train_seconds": s.info["training_seconds"],
               "median": cert["overall"]["median"], "p95": cert["overall"]["p95"], "max": cert["overall"]["max"],
               "calibration": cert["calibration"], "workload_median": float(np.median(werr)),
               "workload_p95": float(np.quantile(werr, 0.95)), "run_seconds": run_s, "array_seconds": arr_s,
               "pairs_per_second_run": n_pairs / run_s, "pairs_per_second_array": n_pairs / arr_s,
               "speedup_vs_exact_run": ex_s / run_s, "speedup_vs_exact_array": ex_s / arr_s,
               "speedup_vs_scipy_run": sp * n_pairs / run_s, "speedup_vs_scipy_array": sp * n_pairs / arr_s}
        # equal data: as many optimiser steps as the full fit (epochs scaled by the data ratio, at most 10x)
        small_epochs = int(min(10 * epochs, round(epochs * n_train / gp_n)))
        small = fit_surrogate(domain, members=members, hidden=size, epochs=small_epochs, progress=False, seed=0, arch=arch,
                              data={k: (v[:gp_n] if not isinstance(v, list) else v[:gp_n]) for k, v in train.items()})
        c_small = certify(small, data=held)
        row["equal_data"] = {"n_train": gp_n, "epochs": small_epochs, "median": c_small["overall"]["median"], "p95": c_small["overall"]["p95"],
                             "max": c_small["overall"]["max"]}
        res["surrogates"].append(row)
        print(f"surrogate {arch}: trained {row['train_seconds']:.0f} s; held-out median {row['median']:.4f} p95 "
              f"{row['p95']:.4f} max {row['max']:.3f}; run {run_s:.3f} s ({row['speedup_vs_exact_run']:.0f}x exact, "
              f"{row['speedup_vs_scipy_run']:.0f}x scipy), array {arr_s:.3f} s ({row['speedup_vs_exact_array']:.0f}x "
              f"exact); at n={gp_n}: median {c_small['overall']['median']:.4f} p95 {c_small['overall']['p95']:.4f}",
              flush=True)

    res["gp"] = gaussian_process(train, gp_n, held)
    g = res["gp"]
    print(f"GP (n={gp_n}): fit {g['fit_seconds']:.0f} s; median {g['median']:.4f} p95 {g['p95']:.4f}; "
          f"{1 / g['seconds_per_pair']:,.0f} pairs/s", flush=True)
    if twin:
        # the twin's own recipe (twin_bench's defaults); a smoke run shrinks it with the rest
        small = n_train < 5000
        res["twin"] = twin_bench(twin, **({"n_train": 500, "n_patients": 200, "epochs": epochs, "hidden": hidden,
                                           "members": members, "gp_n": 100, "gp_n_recipe": (32, epochs)}
                                          if small else {}))
    if torch.cuda.is_available():
        res["cuda"] = torch.cuda.get_device_name(0)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=float))
    (out / f"{stem}.md").write_text(report(res))
    print(report(res))
    return res


def timing(n_patients: int = 1000, n_days: int = 10, n_doses: int = 10, hidden=(256, 256, 256), members: int = 5,
           rank: int = 32, out=RESULTS, stem: str = "bench_surrogate_timing") -> dict:
    """Throughput only, side by side in one process: the exact engine and the surrogate architectures on the
    workload (a surrogate's speed does not depend on its trained weights, so freshly initialised networks of
    the benchmark's sizes are timed; accuracy is in ``bench_surrogate.md``). The engine protocol's run (long
    table included; the mean only, as a sweep uses it) and the raw arrays."""
    from hybridtwin.surrogate import Surrogate
    from hybridtwin.surrogate.emulator import _network

    domain = Domain.from_dict(DOMAIN)
    pop, scenarios = workload(domain, n_patients, n_days, n_doses)
    n_pairs = len(pop) * len(scenarios)
    exact = ExactEngine("vaccine_asc", rtol=1e-6)
    ex_s, _ = timed(lambda: exact.run(pop, scenarios, domain.times), repeats=1)
    res = {"threads": torch.get_num_threads(), "n_pairs": n_pairs, "exact_seconds": ex_s, "surrogates": []}
    K = len(domain.times)
    for arch in ("grid", "separable", "timed"):
        torch.manual_seed(0)
        size = TIMED_HIDDEN if arch == "timed" else hidden
        s = Surrogate(domain, _network(arch, domain, K, size, members, "silu", rank), torch.zeros(K), torch.ones(K))
        up, us, _, _ = s.encode(pop.drop(columns="subject_id"), scenarios)
        run_s, _ = timed(lambda: s.run(pop, scenarios))
        arr_s, _ = timed(lambda: s.predict_product(up, us, sd=False))
        sd_s, _ = timed(lambda: s.predict_product(up, us, sd=True))
        res["surrogates"].append({"arch": arch, "run_seconds": run_s, "array_mean_seconds": arr_s,
                                  "array_mean_sd_seconds": sd_s, "x_exact_run": ex_s / run_s,
                                  "x_exact_array": ex_s / arr_s, "x_exact_array_sd": ex_s / sd_s})
        print(f"{arch}: run {run_s:.3f} s ({ex_s / run_s:.0f}x exact), arrays {arr_s:.4f} s ({ex_s / arr_s:.0f}x), "
              f"with SD {sd_s:.3f} s ({ex_s / sd_s:.0f}x)", flush=True)
    lines = ["# Surrogate throughput vs the exact engine (one process, side by side)", "",
             f"{n_pairs:,} patient-scenario pairs (vaccine_asc, {K} output times); exact batched engine "
             f"{ex_s:.1f} s ({n_pairs / ex_s:,.0f} pairs/s); {res['threads']} torch thread(s).", "",
             "| surrogate | engine protocol (long table, mean) | x exact | arrays, mean | x exact | arrays, mean + SD | x exact |",
             "|---|---|---|---|---|---|---|"]
    for r in res["surrogates"]:
        lines.append(f"| `{r['arch']}` | {r['run_seconds']:.3f} s | {r['x_exact_run']:.0f} | {r['array_mean_seconds']:.4f} s | "
                     f"{r['x_exact_array']:.0f} | {r['array_mean_sd_seconds']:.3f} s | {r['x_exact_array_sd']:.0f} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return res


def twin_throughput(engine, domain, n_patients: int = 20000, seed: int = 3):
    """Time the twin's exact solve of ``n_patients`` random patients of ``domain`` and return a function that
    times a trained surrogate on the same patients and reports both with the ratios (each the best of several
    calls, so that a stall of the shared machine slows neither: the exact solve, seconds long, the best of 3;
    each surrogate call, ~0.05 s, the best of 10)."""
    pop = domain.parameters.from_unit(np.random.default_rng(seed).random((n_patients, len(domain.parameters.names))))
    scen = [domain.scenarios.scenario([], name="none")]
    exact_run, exact = timed(lambda: engine.run(pop, scen, domain.times), repeats=3)
    params = pop.drop(columns="subject_id", errors="ignore")
    exact_arrays, _ = timed(lambda: engine.simulate_pairs(params, scen * len(params), domain.times, domain.outputs),
                            repeats=3)

    def measure(s) -> dict:
        # a surrogate call takes ~0.02-0.06 s: the best of 10 keeps the shared machine's stalls out of it
        up, us, _, _ = s.encode(params, scen)
        run, _ = timed(lambda: s.run(pop, scen), repeats=10)
        mean, _ = timed(lambda: s.predict_product(up, us, sd=False), repeats=10)
        mean_sd, _ = timed(lambda: s.predict_product(up, us, sd=True), repeats=10)
        return {"n_patients": n_patients, "threads": torch.get_num_threads(), "exact_run_s": exact_run,
                "exact_failed": exact.n_failed, "exact_arrays_s": exact_arrays, "run_s": run, "arrays_mean_s": mean, "arrays_mean_sd_s": mean_sd,
                "x_exact_run": exact_run / run, "x_exact_arrays_mean": exact_arrays / mean,
                "x_exact_arrays_mean_sd": exact_arrays / mean_sd}
    return measure


def twin_bench(path, n_train: int = 10000, n_patients: int = 20000, epochs: int = 800, hidden=(40, 40, 40),
               batch_size: int = 64, members: int = 5, width: float = 2.5, gp_n: int = 2000,
               gp_n_recipe=(32, 1200, (64, 64, 64))) -> dict:
    """The same comparison for a trained hybrid twin with a closure (default: the leave-studies-out fold-1
    hybrid of ``challenger_folds.py``, ``sarscov2_cd8`` with a learned clearance): its surrogate over the twin's
    patient parameters (within ``width`` between-patient SDs) vs the twin's own exact solve (``TwinEngine``),
    log10 viral load at 15 days since onset (0-28), floored at 0 (1 copy/ml: far below any assay's limit;
    a cleared infection's exact log10 V falls to -20 and below, where its value carries no information).

    The recipe (a ``grid`` ensemble of 40-40-40 networks, batch 64, 800 epochs) is the one chosen by
    ``bench_surrogate_twin_arch.py``: with three inputs and no scenario factors, small networks trained longer
    are as accurate as 256-wide ones (median 0.018 vs 0.015, p95 0.095 vs 0.091, before outputs with a floor were
    learned as censored) and ten times cheaper to run.
    Throughput: :func:`twin_throughput` (engine protocol and arrays, side by side).

    Equal data (``gp_n`` > 0): a ``grid`` ensemble (the same members) and the Gaussian process each trained on
    the same ``gp_n`` fresh simulations of the twin, certified on the same held-out pairs, in this process; with
    five times fewer pairs the network takes its own recipe (``gp_n_recipe``: batch, epochs, hidden sizes). The
    recipe is the best of those tried in ``bench_surrogate_twin_arch.jsonl`` at n = 2,000 on held-out pairs of
    another seed (``--held-seed 98``), so the choice never saw the pairs reported here."""
    from hybridtwin.engine import TwinEngine
    from hybridtwin.scenarios import ScenarioSpace
    from hybridtwin.surrogate import twin_domain

    engine = TwinEngine.from_checkpoint(path)
    closures = [c.name for c in getattr(engine.twin.dynamics, "closures", [])]
    domain = twin_domain(engine.twin, ScenarioSpace([]), np.linspace(0, 28, 15), width=width, floor={"log10_V": 0.0})
    t = time.perf_counter()
    train = simulate_domain(domain, n_train, seed=0, engine=engine)
    sim_s = time.perf_counter() - t
    held = simulate_domain(domain, 2000, seed=99, method="random", engine=engine)
    s = fit_surrogate(domain, members=members, hidden=hidden, epochs=epochs, batch_size=batch_size, progress=False,
                      seed=0, data=train, engine=engine, arch="grid")
    cert = certify(s, data=held)
    speed = twin_throughput(engine, domain, n_patients)(s)
    shown = Path(path).resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    out = {"checkpoint": str(shown), "model": engine.model.name, "closures": closures, "inputs": domain.input_names,
           "recipe": {"arch": "grid", "hidden": list(hidden), "batch_size": batch_size, "epochs": epochs,
                      "members": members},
           "n_train": n_train, "n_failed_train": int((~train["ok"]).sum()), "train_simulation_seconds": sim_s,
           "train_seconds": s.info["training_seconds"], "median": cert["overall"]["median"],
           "p95": cert["overall"]["p95"], "max": cert["overall"]["max"], "calibration": cert["calibration"],
           **speed, "exact_seconds": speed["exact_run_s"], "surrogate_seconds": speed["run_s"],
           "speedup": speed["x_exact_run"]}
    if gp_n:
        small = simulate_domain(domain, gp_n, seed=0, engine=engine)
        s_small = fit_surrogate(domain, members=members, hidden=tuple(gp_n_recipe[2]), epochs=gp_n_recipe[1],
                                batch_size=gp_n_recipe[0], progress=False, seed=0, data=small, engine=engine,
                                arch="grid")
        c_small = certify(s_small, data=held)["overall"]
        gp = gaussian_process(small, int(small["ok"].sum()), held)
        out["equal_data"] = {"n_train": gp_n, "batch_size": gp_n_recipe[0], "epochs": gp_n_recipe[1],
                             "hidden": list(gp_n_recipe[2]),
                             "surrogate": {k: c_small[k] for k in ("median", "p95", "max")},
                             "gp": {k: gp[k] for k in ("median", "p95", "max", "fit_seconds", "kernel")}}
        print(f"twin at equal data (n = {gp_n}): surrogate median {c_small['median']:.4f} p95 {c_small['p95']:.4f}; "
              f"GP median {gp['median']:.4f} p95 {gp['p95']:.4f}", flush=True)
    print(f"twin surrogate ({engine.model.name}, closures {closures}): held-out median {out['median']:.4f} p95 "
          f"{out['p95']:.4f}; {n_patients} patients: exact {speed['exact_run_s']:.1f} s, surrogate run "
          f"{speed['run_s']:.3f} s ({speed['x_exact_run']:.0f}x), arrays {speed['arrays_mean_sd_s']:.3f} s "
          f"({speed['x_exact_arrays_mean_sd']:.0f}x)", flush=True)
    return out


def report(r: dict) -> str:
    lines = ["# Surrogate benchmark: vaccine_asc prime-boost sweep", "",
             f"{r['n_patients']} patients x {r['n_scenarios']} schedules = {r['n_pairs']:,} pairs, log10 antibody at "
             f"{r['n_times']} times; {r['threads']} torch thread(s); measured side by side in one process "
             "(`experiments/bench_surrogate.py`).", "",
             "| engine | pairs/s | x exact | x scipy | held-out median abs error | p95 | worst | training |",
             "|---|---|---|---|---|---|---|---|"]
    ex, sp = r["exact"], r["scipy"]
    lines.append(f"| exact batched engine (rtol 1e-6) | {ex['pairs_per_second']:,.0f} | 1 | "
                 f"{ex['pairs_per_second'] / sp['pairs_per_second']:.0f} | 0 | 0 | 0 | - |")
    lines.append(f"| scipy LSODA loop ({sp['n_timed']} pairs timed, scaled) | {sp['pairs_per_second']:,.0f} | "
                 f"{sp['pairs_per_second'] / ex['pairs_per_second']:.3f} | 1 | (max diff vs exact "
                 f"{sp['max_abs_diff_vs_exact_log10']:.1e}) | | | - |")
    for s in r["surrogates"]:
        lines.append(f"| surrogate `{s['arch']}`, engine protocol | {s['pairs_per_second_run']:,.0f} | "
                     f"{s['speedup_vs_exact_run']:.0f} | {s['speedup_vs_scipy_run']:,.0f} | {s['median']:.4f} | "
                     f"{s['p95']:.4f} | {s['max']:.3f} | {s['n_train']} sims, {s['train_seconds']:.0f} s |")
        lines.append(f"| surrogate `{s['arch']}`, arrays (mean + ensemble SD) | {s['pairs_per_second_array']:,.0f} | "
                     f"{s['speedup_vs_exact_array']:.0f} | {s['speedup_vs_scipy_array']:,.0f} | | | | |")
    g = r["gp"]
    lines.append(f"| Gaussian process (n = {g['n_train']}) | {1 / g['seconds_per_pair']:,.0f} | "
                 f"{1 / g['seconds_per_pair'] / ex['pairs_per_second']:.1f} | | {g['median']:.4f} | {g['p95']:.4f} | "
                 f"{g['max']:.3f} | {g['n_train']} sims, {g['fit_seconds']:.0f} s |")
    lines += ["", f"Equal training data (n = {g['n_train']}): GP median {g['median']:.4f} / p95 {g['p95']:.4f}; " +
              "; ".join(f"surrogate `{s['arch']}` median {s['equal_data']['median']:.4f} / p95 {s['equal_data']['p95']:.4f}"
                        for s in r["surrogates"]) + ".", "",
              "Ensemble calibration on the held-out pairs (share of errors within mean +- 1.645 SD, nominal 0.90): " +
              "; ".join(f"`{s['arch']}` {s['calibration']['coverage90']:.2f} (Spearman SD vs error "
                        f"{s['calibration']['spearman_sd_error']:.2f})" for s in r["surrogates"]) + ".",
              f"Exact engine on the workload: {ex['seconds']:.1f} s, {ex['n_failed']} failed pairs. Training data: "
              f"{r['train_simulation_seconds']:.1f} s of exact simulation."]
    if r.get("twin"):
        t = r["twin"]
        lines += ["", "## A trained hybrid twin with a closure", "",
                  f"`{t['checkpoint']}`: `{t['model']}` with closure(s) {t['closures']}; surrogate inputs {t['inputs']}, "
                  f"log10 viral load at 15 days (0-28 since onset); {t['n_train']} training simulations of the twin's "
                  f"own dynamics ({t['n_failed_train']} failed, excluded).", "",
                  "| | held-out median abs error | p95 | worst | exact twin solve | surrogate | speed-up |",
                  "|---|---|---|---|---|---|---|",
                  f"| {t['n_patients']:,} patients, engine protocol (long table) | {t['median']:.4f} | {t['p95']:.4f} | "
                  f"{t['max']:.3f} | {t['exact_seconds']:.2f} s | {t['surrogate_seconds']:.3f} s | {t['speedup']:.0f}x |"]
        if "arrays_mean_sd_s" in t:
            lines += [f"| same patients, arrays (mean + ensemble SD) | | | | {t['exact_arrays_s']:.2f} s | "
                      f"{t['arrays_mean_sd_s']:.3f} s | {t['x_exact_arrays_mean_sd']:.0f}x |"]
        if "equal_data" in t:
            e = t["equal_data"]
            lines += ["", f"Equal training data (n = {e['n_train']} simulations of the twin, same held-out pairs; "
                      + (f"`grid` {e['hidden']}, " if "hidden" in e else "the same network, ")
                      + f"batch {e.get('batch_size')}, {e.get('epochs')} epochs, chosen on held-out pairs of another "
                      f"seed): surrogate median {e['surrogate']['median']:.4f} / p95 {e['surrogate']['p95']:.4f} / worst "
                      f"{e['surrogate']['max']:.3f}; Gaussian process median {e['gp']['median']:.4f} / p95 "
                      f"{e['gp']['p95']:.4f} / worst {e['gp']['max']:.3f}."]
        if "recipe" in t:
            r = t["recipe"]
            lines += ["", f"Recipe: `{r['arch']}`, hidden {r['hidden']}, batch {r['batch_size']}, {r['epochs']} epochs, "
                      f"{r['members']} members ({t['train_seconds']:.0f} s of training; chosen by "
                      f"`bench_surrogate_twin_arch.py`); {t['threads']} torch thread(s)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="a 1-minute smoke run (small sizes; not the benchmark)")
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--twin", default=str(TWIN) if TWIN.is_dir() else None,
                    help="a trained hybrid twin's checkpoint folder (default: challenger_folds' fold-1 hybrid, if run)")
    ap.add_argument("--timing", action="store_true", help="throughput only (1 min): exact engine vs the architectures")
    ap.add_argument("--twin-only", action="store_true",
                    help="rerun only the twin section (about 5 min) and merge it into bench_surrogate.{json,md}")
    a = ap.parse_args()
    if a.timing:
        timing()
    elif a.twin_only:
        saved = json.loads((RESULTS / "bench_surrogate.json").read_text())
        saved["twin"] = twin_bench(a.twin)
        (RESULTS / "bench_surrogate.json").write_text(json.dumps(saved, indent=1, default=float))
        (RESULTS / "bench_surrogate.md").write_text(report(saved))
    elif a.small:
        main(n_train=1000, epochs=20, gp_n=200, scipy_pairs=10, n_patients=50, n_days=4, n_doses=5, n_held=200,
             stem="bench_surrogate_small", hidden=(64, 64), members=2, twin=a.twin)
    else:
        main(n_train=a.n_train, epochs=a.epochs, twin=a.twin)
