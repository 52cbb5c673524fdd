"""Network recipes at the Gaussian process's budget: 2,000 training simulations of the surrogate benchmark's
domain (``bench_surrogate.DOMAIN``: vaccine_asc, 7 patient parameters x booster day x dose, log10 antibody at
20 times), certified on the same 2,000 fresh random pairs as ``bench_surrogate.py`` (whose GP at n = 2,000 has
median 0.0074 / p95 0.046).

Usage: ``python experiments/bench_surrogate_equal_data.py ARCH:HIDDEN:BATCH:EPOCHS:WEIGHT_DECAY:MEMBERS ...``
(e.g. ``grid:128,128,128:64:1000:1e-6:5``); results appended to
``experiments/results/bench_surrogate_equal_data.jsonl``.
"""

import sys

from _common import RESULTS, surrogate_recipes
from bench_surrogate import DOMAIN
from hybridtwin.surrogate import Domain, simulate_domain


def main(configs=("grid:128,128,128:64:1000:1e-6:5",), n_train: int = 2000, n_held: int = 2000, out=RESULTS,
         stem: str = "bench_surrogate_equal_data") -> list:
    dom = Domain.from_dict(DOMAIN)
    train = simulate_domain(dom, n_train, seed=0, method="sobol")
    held = simulate_domain(dom, n_held, seed=99, method="random")
    return surrogate_recipes(dom, train, held, configs, stem, out)


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or ("grid:128,128,128:64:1000:1e-6:5",))
