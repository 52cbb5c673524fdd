"""Where the time of a fused solve goes: baccam2006, 10,000 patients, rtol 1e-6 (the bench_solve workload).

Times the unfused and the fused ``ht.simulate`` (best of 3, after a warm-up that compiles), then profiles one
fused solve with cProfile and splits it into the compiled kernels (Inductor's C++), the rest of the compiled
call (guards, wrappers), the eager part of the solver loop (output bookkeeping, dose jumps, compaction) and what
``simulate`` does around the solve (parameter table, result table).

Run: ``python experiments/profile_fused_solve.py [--threads 2]``; writes
``experiments/results/profile_fused_solve.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time

import numpy as np
import torch

import bench_solve as bs
import hybridtwin as ht
from _common import RESULTS


def main(n: int = 10_000, threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    m, params, _, times, *_ = bs.scenario("baccam2006", n, np.random.default_rng(0))
    peak = ht.simulate(m, times, params=params.head(1))[m.state_names].abs().max().to_numpy()
    atol = tuple((1e-5 * bs.RTOL * np.maximum(1.0, peak)).tolist()) + (1e-12,)

    def run(fused):
        return ht.simulate(m, times, params=params, rtol=bs.RTOL, atol=atol, progress=False, fused=fused)

    best = {}
    for fused in (False, True):
        run(fused)
        best[fused] = min(_timed(run, fused) for _ in range(3))
    prof = cProfile.Profile()
    prof.enable()
    run(True)
    prof.disable()
    stats = pstats.Stats(prof).stats
    kernels = sum(tt for (_, _, fn), (_, _, tt, _, _) in stats.items() if "inductor_entry" in fn or ".kernel" in fn)
    cum = {fn: ct for (_, _, fn), (_, _, _, ct, _) in stats.items()}
    steps = sum(nc for (_, _, fn), (_, nc, _, _, _) in stats.items() if fn == "compile_wrapper")
    total = pstats.Stats(prof).total_tt
    out = {"n": n, "threads": threads, "unfused_s": best[False], "fused_s": best[True], "steps": steps,
           "profiled_total_s": total, "compiled_kernels_s": kernels,
           "compiled_call_overhead_s": cum["compile_wrapper"] - kernels,
           "eager_solver_loop_s": cum["_integrate"] - cum["compile_wrapper"],
           "outside_solver_s": total - cum["_integrate"]}
    (RESULTS / "profile_fused_solve.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return out


def _timed(fn, *a) -> float:
    t0 = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=10_000)
    a = ap.parse_args()
    main(a.n, a.threads)
