"""Network recipes at the Gaussian process's budget: 2,000 training simulations of the surrogate benchmark's
domain (``bench_surrogate.DOMAIN``: vaccine_asc, 7 patient parameters x booster day x dose, log10 antibody at
20 times), certified on the same 2,000 fresh random pairs as ``bench_surrogate.py`` (whose GP at n = 2,000 has
median 0.0074 / p95 0.046).

With ``--workload``, each trained surrogate is also timed on the benchmark's workload (1,000 patients x 100
prime-boost schedules = 10^5 pairs) beside the exact batched engine and a scipy loop (``--scipy-pairs`` pairs
timed, scaled) measured in the same process, and its error on the workload's own pairs is read against the exact
engine's values: one trained surrogate then answers every target of the benchmark (throughput, accuracy, and
accuracy at the GP's budget).

With ``--gp``, the scikit-learn Gaussian process of ``bench_surrogate.py`` is fitted and certified on the same
pairs in the same process (about 3 minutes on 2 cores).

Usage: ``python experiments/bench_surrogate_equal_data.py [--workload] [--gp] ARCH:HIDDEN:BATCH:EPOCHS:WEIGHT_DECAY:MEMBERS
...`` (e.g. ``timed:128,128,128:16:200:1e-6:5``); results appended to
``experiments/results/bench_surrogate_equal_data.jsonl``.
"""

import argparse
import time

import numpy as np

from _common import RESULTS, gp_recipe, surrogate_recipes
from bench_surrogate import DOMAIN, scipy_loop, timed, workload
from hybridtwin.engine import ExactEngine
from hybridtwin.surrogate import Domain, simulate_domain


def workload_timing(dom: Domain, scipy_pairs: int = 200):
    """Time the exact engine and a scipy loop on the workload once; returns a function that times a trained
    surrogate there and reports its throughput, ratios and error on the workload's pairs."""
    pop, scenarios = workload(dom, 1000, 10, 10)
    n_pairs = len(pop) * len(scenarios)
    ex_s, ex = timed(lambda: ExactEngine("vaccine_asc", rtol=1e-6).run(pop, scenarios, dom.times), repeats=1)
    exact = ex.frame.pivot_table(index=["subject_id", "scenario"], columns="time", values="value")
    sp, _, _ = scipy_loop(dom, pop, scenarios, scipy_pairs)
    print(f"workload: {n_pairs} pairs; exact engine {ex_s:.1f} s; scipy {sp * 1e3:.2f} ms/pair", flush=True)

    def measure(s) -> dict:
        run_s, sims = timed(lambda: s.run(pop, scenarios))
        up, us, _, _ = s.encode(pop.drop(columns="subject_id"), scenarios)
        arr_s, _ = timed(lambda: s.predict_product(up, us, sd=False))
        got = sims.frame.pivot_table(index=["subject_id", "scenario"], columns="time", values="value")
        err = np.abs(got.to_numpy() - exact.loc[got.index].to_numpy())
        return {"workload_pairs": n_pairs, "exact_seconds": ex_s, "scipy_seconds_per_pair": sp,
                "run_seconds": run_s, "array_mean_seconds": arr_s, "x_exact_run": ex_s / run_s,
                "x_exact_array": ex_s / arr_s, "x_scipy_run": sp * n_pairs / run_s,
                "x_scipy_array": sp * n_pairs / arr_s, "workload_median": float(np.median(err)),
                "workload_p95": float(np.quantile(err, 0.95))}

    return measure


def main(configs=("timed:128,128,128:16:200:1e-6:5",), n_train: int = 2000, n_held: int = 2000, out=RESULTS,
         stem: str = "bench_surrogate_equal_data", with_workload: bool = False, scipy_pairs: int = 200,
         with_gp: bool = False) -> list:
    dom = Domain.from_dict(DOMAIN)
    t = time.perf_counter()
    train = simulate_domain(dom, n_train, seed=0, method="sobol")
    print(f"{n_train} training simulations in {time.perf_counter() - t:.1f} s", flush=True)
    held = simulate_domain(dom, n_held, seed=99, method="random")
    timing = workload_timing(dom, scipy_pairs) if with_workload else None
    rows = surrogate_recipes(dom, train, held, configs, stem, out, timing=timing)
    if with_gp:  # the Gaussian process on the same pairs, in the same process
        rows.append(gp_recipe(train, held, stem, out))
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="*", default=["timed:128,128,128:16:200:1e-6:5"])
    ap.add_argument("--workload", action="store_true", help="also time each surrogate on the 10^5-pair workload")
    ap.add_argument("--scipy-pairs", type=int, default=200)
    ap.add_argument("--gp", action="store_true", help="also fit and certify the Gaussian process on the same pairs")
    a = ap.parse_args()
    main(tuple(a.recipes), with_workload=a.workload, scipy_pairs=a.scipy_pairs, with_gp=a.gp)
