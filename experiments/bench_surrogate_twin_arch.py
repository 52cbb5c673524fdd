"""Which surrogate architecture for a twin without scenario factors? ``grid`` vs ``separable`` on the
leave-studies-out fold-1 hybrid twin of ``challenger_folds.py`` (``sarscov2_cd8`` + a neural clearance closure;
inputs p, c_T, t_offset within 2.5 between-patient SDs; log10 viral load at 15 days over 0-28, floored at 0).

Both are trained on the same exact simulations of the twin with the same settings and certified on the same
2,000 fresh random pairs. Throughput, side by side in one process on random patients of the domain
(``main(n_patients=20000)``; 0 skips it): the twin's exact solve (``TwinEngine``; the engine protocol's long table, and the raw
arrays of ``simulate_pairs``), then each trained surrogate (``run``'s long table; the arrays of
``predict_product``, mean only and mean + ensemble SD); each surrogate time the best of 10, the exact solve's the best
of 3 (``bench_surrogate.twin_throughput``).

``--gp``: the scikit-learn Gaussian process of ``bench_surrogate.py`` fitted and certified on the same
simulations and held-out pairs in the same process (the equal-data comparison for a twin).

``--held-seed S``: draw the 2,000 held-out pairs with seed S instead of 99, the seed of ``bench_surrogate.py``'s
certificate. Choosing a recipe on pairs of another seed keeps the choice off the pairs that the benchmark then
reports (each row records its ``held_seed``).

Usage: ``python experiments/bench_surrogate_twin_arch.py [--gp] [--n-patients N] [N_TRAIN] [ARCH:HIDDEN:BATCH:EPOCHS ...]``
(default: 10000 simulations; ``separable:256,256,256:256:150`` and ``grid:256,256,256:256:150``); results appended to
``experiments/results/bench_surrogate_twin_arch.jsonl``. Needs the fold twin (run ``challenger_folds.py`` first).
"""

import argparse
import time

import numpy as np

from _common import RESULTS, gp_recipe, surrogate_recipes
from bench_surrogate import TWIN, twin_throughput
from hybridtwin.engine import TwinEngine
from hybridtwin.scenarios import ScenarioSpace
from hybridtwin.surrogate import simulate_domain, twin_domain

DEFAULT = ("separable:256,256,256:256:150", "grid:256,256,256:256:150")


def main(n_train: int = 10000, configs=DEFAULT, twin=TWIN, out=RESULTS, stem: str = "bench_surrogate_twin_arch",
         n_patients: int = 20000, with_gp: bool = False, held_seed: int = 99) -> list:
    engine = TwinEngine.from_checkpoint(twin)
    domain = twin_domain(engine.twin, ScenarioSpace([]), np.linspace(0, 28, 15), width=2.5, floor={"log10_V": 0.0})
    t = time.perf_counter()
    train = simulate_domain(domain, n_train, seed=0, engine=engine)
    print(f"{n_train} training simulations of the twin: {time.perf_counter() - t:.1f} s", flush=True)
    held = simulate_domain(domain, 2000, seed=held_seed, method="random", engine=engine)
    measure = twin_throughput(engine, domain, n_patients) if n_patients else None
    rows = surrogate_recipes(domain, train, held, configs, stem, out, engine=engine, timing=measure,
                             extra={"held_seed": held_seed})
    if with_gp:  # the Gaussian process on the same pairs, in the same process
        rows.append(gp_recipe(train, held, stem, out))
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n_train", nargs="?", type=int, default=10000)
    ap.add_argument("recipes", nargs="*", default=list(DEFAULT))
    ap.add_argument("--gp", action="store_true", help="also the Gaussian process on the same simulations")
    ap.add_argument("--n-patients", type=int, default=20000, help="patients for the throughput (0: skip)")
    ap.add_argument("--held-seed", type=int, default=99,
                    help="seed of the 2,000 held-out pairs (choose recipes on another seed than the benchmark's 99)")
    a = ap.parse_args()
    main(a.n_train, tuple(a.recipes), n_patients=a.n_patients, with_gp=a.gp, held_seed=a.held_seed)
