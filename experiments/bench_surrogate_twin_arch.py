"""Which surrogate architecture for a twin without scenario factors? ``grid`` vs ``separable`` on the
leave-studies-out fold-1 hybrid twin of ``challenger_folds.py`` (``sarscov2_cd8`` + a neural clearance closure;
inputs p, c_T, t_offset within 2.5 between-patient SDs; log10 viral load at 15 days over 0-28, floored at 0).

Both are trained on the same exact simulations of the twin with the same settings and certified on the same
2,000 fresh random pairs. Usage: ``python experiments/bench_surrogate_twin_arch.py [N_TRAIN] [ARCH:HIDDEN:BATCH:EPOCHS ...]``
(default: 10000 simulations; ``separable:256,256,256:256:150`` and ``grid:256,256,256:256:150``); results appended to
``experiments/results/bench_surrogate_twin_arch.jsonl``. Needs the fold twin (run ``challenger_folds.py`` first).
"""

import sys

import numpy as np

from _common import RESULTS, surrogate_recipes
from bench_surrogate import TWIN
from hybridtwin.engine import TwinEngine
from hybridtwin.scenarios import ScenarioSpace
from hybridtwin.surrogate import simulate_domain, twin_domain

DEFAULT = ("separable:256,256,256:256:150", "grid:256,256,256:256:150")


def main(n_train: int = 10000, configs=DEFAULT, twin=TWIN, out=RESULTS, stem: str = "bench_surrogate_twin_arch") -> list:
    engine = TwinEngine.from_checkpoint(twin)
    domain = twin_domain(engine.twin, ScenarioSpace([]), np.linspace(0, 28, 15), width=2.5, floor={"log10_V": 0.0})
    train = simulate_domain(domain, n_train, seed=0, engine=engine)
    held = simulate_domain(domain, 2000, seed=99, method="random", engine=engine)
    return surrogate_recipes(domain, train, held, configs, stem, out, engine=engine)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10000, tuple(sys.argv[2:]) or DEFAULT)
