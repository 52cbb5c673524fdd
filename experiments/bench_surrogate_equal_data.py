"""Network recipes at the Gaussian process's budget: 2,000 training simulations of the surrogate benchmark's
domain (``bench_surrogate.DOMAIN``: vaccine_asc, 7 patient parameters x booster day x dose, log10 antibody at
20 times), certified on the same 2,000 fresh random pairs as ``bench_surrogate.py`` (whose GP at n = 2,000 has
median 0.0074 / p95 0.046).

Usage: ``python experiments/bench_surrogate_equal_data.py ARCH:HIDDEN:BATCH:EPOCHS:WEIGHT_DECAY:MEMBERS ...``
(e.g. ``grid:128,128,128:64:1000:1e-6:5``); results appended to
``experiments/results/bench_surrogate_equal_data.jsonl``.
"""

import json
import sys
import time

from _common import RESULTS
from bench_surrogate import DOMAIN
from hybridtwin.surrogate import Domain, certify, fit_surrogate, simulate_domain


def main(configs, n_train: int = 2000) -> list:
    dom = Domain.from_dict(DOMAIN)
    train = simulate_domain(dom, n_train, seed=0, method="sobol")
    held = simulate_domain(dom, 2000, seed=99, method="random")
    rows = []
    for spec in configs:
        arch, hidden, batch, epochs, wd, members = spec.split(":")
        t = time.perf_counter()
        s = fit_surrogate(dom, members=int(members), hidden=tuple(int(h) for h in hidden.split(",")), epochs=int(epochs),
                          batch_size=int(batch), weight_decay=float(wd), progress=False, seed=0, data=train, arch=arch)
        row = {"recipe": spec, "n_train": n_train, "train_seconds": time.perf_counter() - t,
               **certify(s, data=held)["overall"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(RESULTS / "bench_surrogate_equal_data.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:] or ["grid:128,128,128:64:1000:1e-6:5"])
