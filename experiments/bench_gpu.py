"""Benchmark: the solve and training tables of issue 12 on whatever CUDA machine this runs on, GPU beside its CPU.

One command, about 5-9 minutes on a GPU machine (``--budget-s`` caps it; items that would not fit are skipped
and listed), results written row by row so that a run cut short keeps what it measured:

- **solve**: baccam2006 (log-normal beta, k, delta, p, c as in ``bench_solve``), 41 outputs over 10 days, rtol
  1e-6, through :func:`hybridtwin.solve.solve` with and without ``fused=True``, at 10^4, 10^5 and 10^6
  patients on the GPU (float64; 10^6 also float32) and 10^4 / 10^5 on the CPU; microseconds per patient (best
  of 2 after a warm-up run that also compiles), and the max relative difference of the first 200 patients from
  a CPU float64 reference; a fused row whose step could not be compiled (the solver then falls back to unfused
  with a warning) is marked in ``error``, not reported as fused;
- **training**: the vaccine_asc twin of ``training/configs/vaccine_asc.yaml`` on 2,800 virtual subjects, at batch
  64 and 2048, unfused and fused, on the GPU and on the CPU (``bench_train.run_variant``; seconds per epoch
  from the second epoch, scaled up from ``--train-batches`` steps at batch 64; at batch 2048 an epoch of the
  1,960 training subjects is one step, so three epochs are run and the last two timed);
- **surrogate**: the default (``timed``) surrogate's array prediction for 10^4 patients x 100 schedules of the
  surrogate benchmark's domain, on the GPU and the CPU (pairs per second).

The items run in order of importance (the target rows first); the ``.md`` ends with the targets read off the
table.

Targets (issue 12): 10^6 patients <= 0.2 us/patient (float32) on the GPU; training at batch 2048 >= 5x faster
per epoch on the GPU than the CPU, and at batch 64 no slower.

Run on the GPU machine: ``python experiments/bench_gpu.py`` (writes ``experiments/results/bench_gpu.{csv,md}``;
``--profile`` instead writes profiles of a fused solve and of fused training steps);
on a CPU-only machine ``python experiments/bench_gpu.py --device cpu --small`` checks the script itself.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import RESULTS

RTOL = 1e-6


def _baccam(n: int, seed: int = 0):
    import hybridtwin as ht

    m = ht.models.get("baccam2006")
    d = m.default_parameters()
    rng = np.random.default_rng(seed)
    names = ["beta", "k", "delta", "p", "c"]
    z = rng.standard_normal((n, len(names)))  # row by row: the first patients are the same whatever n
    rows = {k: d[k] * np.exp(0.2 * z[:, i]) for i, k in enumerate(names)}
    theta = m.parameter_space.tensor_from(pd.DataFrame(rows), dtype=torch.float64)  # columns: vectorised
    peak = np.array([d["T0"], d["T0"], d["T0"], 1e7])  # the states' scale (atol as in bench_solve)
    atol = tuple((1e-5 * RTOL * peak).tolist()) + (1e-12,)
    return m, theta, atol


def solve_row(n: int, device: str, dtype: torch.dtype, fused: bool, reference: np.ndarray | None) -> dict:
    from hybridtwin.solve import SolverConfig, solve

    m, theta, atol = _baccam(n)
    theta = theta.to(device=device, dtype=dtype)
    y0 = m.initial_state(theta)
    times = torch.linspace(0.0, 10.0, 41, device=device, dtype=dtype)
    cfg = SolverConfig(rtol=RTOL, atol=atol, fused=fused)

    def once():
        with torch.no_grad():
            sol = solve(m, y0, times, theta, config=cfg)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return sol

    t0 = time.perf_counter()
    once()  # warm-up (and compilation when fused)
    warm = time.perf_counter() - t0
    best = np.inf
    for _ in range(2):
        t0 = time.perf_counter()
        sol = once()
        best = min(best, time.perf_counter() - t0)
    ys = sol.ys[:200, :, :4].double().cpu().numpy()
    diff = None
    if reference is not None:
        floor = 1e-3 * np.abs(reference).max(axis=(0, 1))
        diff = float(np.nanmax(np.abs(ys - reference) / np.maximum(np.abs(reference), floor)))
    return {"table": "solve", "device": device, "dtype": str(dtype).replace("torch.", ""), "n": n, "fused": fused,
            "us_per_patient": 1e6 * best / n, "seconds": best, "warmup_s": warm, "failed": int((~sol.ok).sum()),
            "max_rel_diff": diff}


def train_row(device: str, batch_size: int, fused: bool, subjects: int, limit_batches: int | None) -> dict:
    import bench_train

    # an epoch at batch 2048 is one step: three epochs give two timed ones (the first compiles when fused)
    r = bench_train.run_variant(fused, subjects, 2 if batch_size < 256 else 3, None, batch_size=batch_size,
                                accelerator="gpu" if device.startswith("cuda") else "cpu",
                                limit_batches=limit_batches if batch_size < 256 else None, evaluate_after=False)
    return {"table": "train", "device": device, "dtype": "float64", "n": subjects, "fused": fused,
            "batch_size": batch_size, "s_per_epoch": r["s_per_epoch"], "first_epoch_s": r["first_epoch_s"],
            "epoch_seconds": " ".join(f"{t:.3f}" for t in r["epoch_seconds"]), "threads": torch.get_num_threads()}


def surrogate_row(device: str, n_patients: int) -> dict:
    """Throughput of the default (``timed``) surrogate's array prediction, mean only, for ``n_patients`` x 100
    prime-boost schedules of the surrogate benchmark's domain (an untrained network of the benchmark's sizes: its
    speed does not depend on its weights), results copied back to the host."""
    from bench_surrogate import DOMAIN, TIMED_HIDDEN, workload

    from hybridtwin.surrogate import Domain, Surrogate
    from hybridtwin.surrogate.emulator import _network

    domain = Domain.from_dict(DOMAIN)
    pop, scenarios = workload(domain, n_patients, 10, 10)
    K = len(domain.times)
    torch.manual_seed(0)
    s = Surrogate(domain, _network("timed", domain, K, TIMED_HIDDEN, 5, "silu", 32), torch.zeros(K),
                  torch.ones(K)).to(device)
    up, us, _, _ = s.encode(pop.drop(columns="subject_id"), scenarios)

    def once():
        out = s.predict_product(up, us, sd=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    once()
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - t0)
    pairs = n_patients * len(scenarios)
    return {"table": "surrogate", "device": device, "dtype": "float32", "n": pairs, "fused": False,
            "seconds": best, "pairs_per_second": pairs / best}


def profiles(device: str, small: bool, out: Path) -> None:
    """``--profile``: ``torch.profiler`` tables of a fused solve (10^6 patients, float32; 5,000 with ``--small``)
    and of fused training steps at batch 2048 (the last of three epochs), on ``device``; written to
    ``out/profile_gpu_solve.txt`` and ``out/profile_gpu_train.txt``: where the time goes that the targets miss."""
    import bench_train
    from torch.profiler import ProfilerActivity, profile

    from hybridtwin.solve import SolverConfig, solve

    n = 5_000 if small else 1_000_000
    m, theta, atol = _baccam(n)
    theta = theta.to(device=device, dtype=torch.float32)
    y0 = m.initial_state(theta)
    times = torch.linspace(0.0, 10.0, 41, device=device, dtype=torch.float32)
    cfg = SolverConfig(rtol=RTOL, atol=atol, fused=True)
    gpu = device.startswith("cuda")

    def once():
        with torch.no_grad():
            sol = solve(m, y0, times, theta, config=cfg)
        if gpu:
            torch.cuda.synchronize()
        return sol

    once()  # compile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        sol = once()
        seconds = time.perf_counter() - t0
    ka = prof.key_averages()
    tables = [f"fused solve of {n} baccam2006 patients (float32) on {device}: {seconds:.3f} s under the profiler; "
              f"steps per subject: mean {sol.n_steps.double().mean().item():.1f}, max {int(sol.n_steps.max())}",
              ka.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=70)]
    if gpu:
        tables.append(ka.table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))
    (out / "profile_gpu_solve.txt").write_text("\n\n".join(tables))
    print(tables[0], flush=True)
    bench_train.run_variant(True, 2800 if not small else 200, 3, None, batch_size=2048,
                            accelerator="gpu" if gpu else "cpu", evaluate_after=False,
                            profile_to=out / "profile_gpu_train.txt")
    print((out / "profile_gpu_train.txt").read_text().splitlines()[0], flush=True)


def plan(device: str, small: bool) -> list[tuple[str, dict]]:
    """The items in order of importance (the budget cuts what does not fit): the target rows first (10^6
    float32 on the device; training at batch 2048 and 64 on the device and its CPU), then the rest of the
    solve table."""
    gpu = device.startswith("cuda")
    big, mid, low = (1_000_000, 100_000, 10_000) if not small else (5_000, 2_000, 1_000)
    subjects = 2800 if not small else 200
    cpu = ["cpu"] if gpu else []
    items = [("solve", dict(n=big, device=device, dtype=torch.float32, fused=f)) for f in (True, False)]
    items += [("solve", dict(n=mid, device=d, dtype=torch.float64, fused=f)) for d in [device, *cpu]
              for f in (True, False)]
    for bs in (2048, 64):
        for fused in (True, False):
            for dev in [device, *cpu]:
                items.append(("train", dict(device=dev, batch_size=bs, fused=fused, subjects=subjects)))
    # the default surrogate's throughput (issue 10: record it on a GPU when one is lent)
    items += [("surrogate", dict(device=d, n_patients=10_000 if not small else 100, fused=False))
              for d in [device, *cpu]]
    items += [("solve", dict(n=big, device=device, dtype=torch.float64, fused=f)) for f in (True, False)]
    items += [("solve", dict(n=low, device=d, dtype=torch.float64, fused=f)) for d in [device, *cpu]
              for f in (True, False)]
    return items


#: rough seconds an item needs (a fused item's first run compiles a block of two steps, see
#: SolverConfig.fused_block); an item is skipped when less is left
NEED = {("solve", True): 75.0, ("solve", False): 20.0, ("train", True): 150.0, ("train", False): 40.0,
        ("surrogate", False): 15.0}


def summary(table: pd.DataFrame) -> list[str]:
    """The issue's targets read off the table (best of fused/unfused per device)."""
    lines = []
    ok = table[table.get("error", pd.Series(index=table.index, dtype=object)).isna()] if "error" in table else table
    sol = ok[ok["table"] == "solve"]
    f32 = sol[(sol["dtype"] == "float32") & (sol["device"] != "cpu")]
    if len(f32):
        best = f32.loc[f32["us_per_patient"].astype(float).idxmin()]
        lines.append(f"- solve, {int(best['n']):,} patients, float32 on the device: best {float(best['us_per_patient']):.3f} "
                     f"us/patient ({'fused' if best['fused'] else 'unfused'}); target <= 0.2")
    tr = ok[ok["table"] == "train"]
    for bs in sorted(set(tr.get("batch_size", []))):
        t = tr[tr["batch_size"] == bs]
        dev, cpu = t[t["device"] != "cpu"], t[t["device"] == "cpu"]
        if len(dev) and len(cpu):
            d = float(dev["s_per_epoch"].astype(float).min())
            c = float(cpu["s_per_epoch"].astype(float).min())
            want = ">= 5x" if bs >= 1024 else ">= 1x (no slower)"
            lines.append(f"- training, batch {int(bs)}: device {d:.3f} s/epoch, CPU {c:.3f} s/epoch (best of fused and "
                         f"unfused each): **{c / d:.2f}x**; target {want}")
    return lines


def main(device: str | None = None, small: bool = False, budget_s: float = 540.0, train_batches: int = 8,
         out: Path = RESULTS) -> pd.DataFrame:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    reference = None
    rows, skipped = [], []
    csv = out / "bench_gpu.csv"
    for kind, kw in plan(device, small):
        left = budget_s - (time.perf_counter() - start)
        # rough cost guards: a 10^6 CPU solve or a GPU training run needs minutes
        if left < NEED[kind, bool(kw["fused"])]:
            skipped.append(f"{kind} {kw}")
            continue
        if kind == "solve" and reference is None:  # the first 200 patients at a much tighter tolerance, on the CPU
            from hybridtwin.solve import SolverConfig, solve

            m, theta, atol = _baccam(200)
            with torch.no_grad():
                reference = solve(m, m.initial_state(theta), torch.linspace(0.0, 10.0, 41, dtype=torch.float64),
                                  theta, config=SolverConfig(rtol=1e-10, atol=tuple(a * 1e-4 for a in atol))
                                  ).ys[:, :, :4].numpy()
        t_item = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if kind == "solve":
                    row = solve_row(**kw, reference=reference)
                elif kind == "train":
                    row = train_row(**kw, limit_batches=train_batches)
                else:
                    row = surrogate_row(kw["device"], kw["n_patients"])
            # a fused step that could not be compiled falls back to unfused with a warning: such a row is no
            # fused measurement and says so
            fallback = [str(w.message) for w in caught if "could not be compiled" in str(w.message)]
            if fallback:
                row["error"] = f"fell back to unfused: {fallback[0][:300]}"
        except Exception as exc:  # noqa: BLE001 -- record and go on: the other rows still count
            row = {"table": kind, **{k: str(v) for k, v in kw.items()}, "error": f"{type(exc).__name__}: {exc}"[:300]}
        row["item_s"] = time.perf_counter() - t_item
        rows.append(row)
        pd.DataFrame(rows).to_csv(csv, index=False)
        print({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    table = pd.DataFrame(rows)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or platform.machine()
    lines = ["# bench_gpu", "", f"{name}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads; "
             f"{time.perf_counter() - start:.0f} s", "", table.to_string(index=False), ""]
    lines += ["Targets (issue 12):", *summary(table), ""]
    sur = table[table["table"] == "surrogate"] if "pairs_per_second" in table else table.iloc[:0]
    if len(sur):
        lines += ["Surrogate (issue 10), default `timed` architecture, arrays of the mean:",
                  *[f"- {r['device']}: {float(r['pairs_per_second']):,.0f} pairs/s ({int(r['n']):,} pairs)"
                    for _, r in sur.iterrows()], ""]
    if skipped:
        lines += ["Skipped (budget):", *[f"- {s}" for s in skipped], ""]
    (out / "bench_gpu.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return table


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--small", action="store_true", help="small sizes: checks the script on any machine")
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--train-batches", type=int, default=8, help="training steps timed per epoch at batch 64")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--profile", action="store_true", help="only profile a fused solve and fused training steps "
                                                           "(about 3 min on a GPU machine)")
    a = ap.parse_args()
    if a.profile:
        dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
        Path(a.out).mkdir(parents=True, exist_ok=True)
        profiles(dev, a.small, Path(a.out))
    else:
        main(a.device, a.small, a.budget_s, a.train_batches, Path(a.out))
