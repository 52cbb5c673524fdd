"""Benchmark: one stiff subject in a batch of ordinary ones (native solver: dopri5, auto and rodas4).

Scenario (baccam2006, the setting of the earlier report): N subjects with beta, k, delta, p, c log-normally
varied (sd 0.2 on the log scale, seed 0), 41 outputs over 10 days, solved in one batch by
``hybridtwin.solve.solve`` with the configuration ``hybridtwin.simulate`` uses by default (rtol 1e-8, atol
``max(1e-12, 1e-4 * rtol * max(1, |y0_s|))`` per state, max_steps 100 000), under ``torch.no_grad()``.
The "stiff" subject has beta multiplied by 1e4 (outside beta's declared bounds, which is why ``simulate``
would need ``check_bounds=False``); its max_steps is left at the default.

Cases, timed side by side in this one process:

- ``clean``: N ordinary subjects (best of ``repeats`` runs), dopri5 (the default method);
- ``clean_auto``: the same with ``method="auto"`` (best of ``repeats``): the cost of the stiffness test when
  nothing is stiff;
- ``mixed``: the same subjects with the last one made stiff (N - 1 ordinary + 1 stiff), dopri5;
- ``mixed_auto``: the mixed batch with ``method="auto"`` (dopri5, the stiff subject switched to rodas4);
- ``stiff_alone``: the stiff subject on its own with dopri5 (what it costs by itself; skip with ``--no-alone``);
- ``stiff_alone_rodas4``: the stiff subject on its own with ``method="rodas4"``;
- ``mixed_budget``: the mixed batch (dopri5) with ``SolverConfig(max_seconds=budget)``.

Reported: wall times, the mixed / clean ratios, the stiff subject's status and step count, the largest
difference between the ordinary subjects' results in the mixed and the clean runs (0 means bit-identical:
the stiff subject changes nothing for them), and how far the stiff subject's auto (rodas4) result is from its
dopri5 result. The "before" figure (125 s mixed vs 1.0 s clean) was measured by an earlier session on this
machine with the solver before compaction; it is quoted, not re-measured (re-running it costs two minutes).

Run: ``python experiments/bench_stiff.py`` (writes experiments/results/stiff_subject.json and .md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import hybridtwin as ht
from dataclasses import replace

from hybridtwin.solve import SolverConfig, Status, solve

RESULTS = Path(__file__).resolve().parent / "results"
RTOL = 1e-8  # hybridtwin.simulate's default
BEFORE = {"mixed_s": 125.0, "clean_s": 1.0, "ratio": 125.0,
          "note": "measured by a previous session on this machine BEFORE active-set compaction (same scenario: "
                  "baccam2006, 999 ordinary + 1 subject with beta x 1e4 vs 1000 ordinary); quoted, not re-measured"}


def cohort(n: int, seed: int = 0):
    m = ht.models.get("baccam2006")
    g = torch.Generator().manual_seed(seed)
    theta = m.parameter_space.default_tensor(n)
    for name in ("beta", "k", "delta", "p", "c"):
        i = m.parameter_space.index(name)
        theta[:, i] *= torch.exp(0.2 * torch.randn(n, generator=g, dtype=theta.dtype))
    return m, theta


def simulate_config(m, theta, max_seconds=None, max_steps=100_000) -> SolverConfig:
    """The configuration ``hybridtwin.simulate`` builds by default (per-state atol from the initial state)."""
    y0 = m.initial_state(theta)
    mag = torch.clamp(y0.abs().amax(dim=0), min=1.0)
    atol = tuple(max(1e-12, RTOL * 1e-4 * float(v)) for v in mag)
    return SolverConfig(rtol=RTOL, atol=atol, max_steps=max_steps, max_seconds=max_seconds)


def timed(m, theta, times, cfg):
    with torch.no_grad():
        start = time.perf_counter()
        sol = solve(m, m.initial_state(theta), times, theta, config=cfg)
        return time.perf_counter() - start, sol


def summary(seconds, sol, stiff_index=None) -> dict:
    names = sol.status_names()
    out = {"seconds": seconds, "n_subjects": len(names),
           "status_counts": {k: names.count(k) for k in sorted(set(names))},
           "max_steps_of_ordinary": int(sol.n_steps[[i for i in range(len(names)) if i != stiff_index]].max())
           if len(names) > (stiff_index is not None) else 0}
    if stiff_index is not None:
        out["stiff_status"] = names[stiff_index]
        out["stiff_n_steps"] = int(sol.n_steps[stiff_index])
    return out


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.equal(torch.nan_to_num(a, 0.5), torch.nan_to_num(b, 0.5)))


def stiff_difference(sol, ref) -> dict:
    """How far one solution of a subject (T, S) is from another: the largest relative difference over the outputs
    where the reference is above 1e-6 of its state's peak (the decayed tails, ~1e-14, are left out), and the
    largest absolute difference in log10 V at outputs where V > 1 (the observable of the model)."""
    scale = ref.abs().amax(dim=0, keepdim=True)
    big = ref.abs() > 1e-6 * scale
    rel = float(((sol - ref).abs() / ref.abs())[big].max())
    V = -2  # baccam2006 states: T, I1, I2, V, C_nai
    seen = ref[:, V] > 1.0
    log_v = float((torch.log10(sol[seen, V]) - torch.log10(ref[seen, V])).abs().max())
    return {"max_rel_diff_where_above_1e-6_of_peak": rel, "max_abs_diff_log10_V_where_V_above_1": log_v}


def main(n_subjects: int = 1000, stiff_factor: float = 1e4, budget: float = 5.0, alone: bool = True, repeats: int = 3,
         threads: int | None = 1, out_dir=RESULTS, tag: str = "stiff_subject", max_steps: int = 100_000) -> dict:
    if threads:
        torch.set_num_threads(threads)
    load_start = os.getloadavg()[0]
    m, theta = cohort(n_subjects)
    times = torch.linspace(0, 10, 41, dtype=theta.dtype)
    stiff = theta.clone()
    s = n_subjects - 1
    stiff[s, m.parameter_space.index("beta")] *= stiff_factor
    cfg = simulate_config(m, theta, max_steps=max_steps)
    timed(m, theta[:50], times, cfg)  # warm-up

    auto_cfg, rodas_cfg = replace(cfg, method="auto"), replace(cfg, method="rodas4")
    timed(m, stiff[s - 1:], times, auto_cfg)  # warm-up of the rodas4 path (one ordinary + the stiff subject)
    clean_s, clean = min((timed(m, theta, times, cfg) for _ in range(repeats)), key=lambda r: r[0])
    print(f"clean  ({n_subjects} ordinary):            {clean_s:8.2f} s", flush=True)
    clean_auto_s, clean_auto = min((timed(m, theta, times, auto_cfg) for _ in range(repeats)), key=lambda r: r[0])
    print(f"clean, auto:                        {clean_auto_s:8.2f} s", flush=True)
    mixed_auto_s, mixed_auto = timed(m, stiff, times, auto_cfg)
    print(f"mixed, auto:                        {mixed_auto_s:8.2f} s  stiff: {mixed_auto.status_names()[s]}, "
          f"{int(mixed_auto.n_steps[s])} steps", flush=True)
    rodas_s, rodas = timed(m, stiff[s:], times, rodas_cfg)
    print(f"stiff subject alone, rodas4:        {rodas_s:8.2f} s  {rodas.status_names()[0]}, "
          f"{int(rodas.n_steps[0])} steps", flush=True)
    mixed_s, mixed = timed(m, stiff, times, cfg)
    print(f"mixed  ({n_subjects - 1} ordinary + 1 stiff):    {mixed_s:8.2f} s  stiff: {mixed.status_names()[s]}, "
          f"{int(mixed.n_steps[s])} steps", flush=True)
    ordinary = torch.arange(n_subjects) != s
    same = bitwise_equal(mixed.ys[ordinary], clean.ys[ordinary])
    diff = float((mixed.ys[ordinary] - clean.ys[ordinary]).abs().nan_to_num(0.0).max())
    cases = {"clean": summary(clean_s, clean), "clean_auto": summary(clean_auto_s, clean_auto),
             "mixed": summary(mixed_s, mixed, s), "mixed_auto": summary(mixed_auto_s, mixed_auto, s),
             "stiff_alone_rodas4": summary(rodas_s, rodas, 0)}
    cases["clean_auto"]["bitwise_equal_to_clean"] = bitwise_equal(clean_auto.ys, clean.ys)
    cases["mixed_auto"]["ordinary_bitwise_equal_to_clean"] = bitwise_equal(mixed_auto.ys[ordinary], clean.ys[ordinary])
    cases["mixed_auto"]["stiff_bitwise_equal_to_rodas4_alone"] = bitwise_equal(mixed_auto.ys[s], rodas.ys[0])
    cases["mixed_auto"]["stiff_rodas4_steps"] = int(rodas.n_steps[0])
    cases["mixed_auto"]["stiff_dopri5_steps_before_switch"] = int(mixed_auto.n_steps[s]) - int(rodas.n_steps[0])
    if mixed.ok[s] and mixed_auto.ok[s]:
        cases["mixed_auto"]["stiff_vs_dopri5"] = stiff_difference(mixed_auto.ys[s], mixed.ys[s])
    if alone:
        alone_s, alone_sol = timed(m, stiff[s:], times, cfg)
        print(f"stiff subject alone:                {alone_s:8.2f} s", flush=True)
        cases["stiff_alone"] = summary(alone_s, alone_sol, 0)
        cases["stiff_alone"]["bitwise_equal_to_mixed"] = bitwise_equal(alone_sol.ys[0], mixed.ys[s])
    budget_cfg = simulate_config(m, theta, max_seconds=budget, max_steps=max_steps)
    bud_s, bud = timed(m, stiff, times, budget_cfg)
    print(f"mixed with max_seconds={budget:g}:         {bud_s:8.2f} s  stiff: {bud.status_names()[s]}", flush=True)
    finished = ordinary & bud.ok
    cases["mixed_budget"] = {**summary(bud_s, bud, s), "max_seconds": budget,
                             "ordinary_finished": int(finished.sum()),
                             "finished_bitwise_equal_to_clean": bool(torch.equal(bud.ys[finished], clean.ys[finished]))}

    stiff_steps = cases["mixed"]["stiff_n_steps"]
    tail_steps = max(stiff_steps - cases["clean"]["max_steps_of_ordinary"], 1)
    result = {
        "scenario": {"model": "baccam2006", "n_subjects": n_subjects, "stiff_subject": f"index {s}, beta x {stiff_factor:g}",
                     "times": "41 outputs over [0, 10] days", "rtol": RTOL, "atol": list(cfg.atol),
                     "max_steps": cfg.max_steps, "methods": ["dopri5", "auto", "rodas4"], "backend": cfg.backend},
        "environment": {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                        "load_average_1min_at_start": load_start, "load_average_1min_at_end": os.getloadavg()[0]},
        "cases": cases,
        "ratio_mixed_over_clean": mixed_s / clean_s,
        "ratio_mixed_auto_over_clean": mixed_auto_s / clean_s,
        "ratio_clean_auto_over_clean": clean_auto_s / clean_s,
        "speedup_mixed_auto_over_mixed": mixed_s / mixed_auto_s,
        "extra_seconds_for_stiff_subject": mixed_s - clean_s,
        "ms_per_step_of_stiff_tail": 1e3 * (mixed_s - clean_s) / tail_steps,
        "ordinary_subjects_bitwise_equal_mixed_vs_clean": bool(same),
        "ordinary_subjects_max_abs_diff_mixed_vs_clean": diff,
        "before_compaction": BEFORE,
    }
    if alone:
        result["ratio_mixed_over_clean_plus_alone"] = mixed_s / (clean_s + cases["stiff_alone"]["seconds"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{tag}.md").write_text(report(result))
    print(f"ratio mixed / clean: {result['ratio_mixed_over_clean']:.1f} with dopri5, "
          f"{result['ratio_mixed_auto_over_clean']:.2f} with auto (before compaction: {BEFORE['ratio']:.0f})")
    return result


def report(r: dict) -> str:
    c = r["cases"]
    n = r["scenario"]["n_subjects"]
    stiff, ma = c["mixed"], c["mixed_auto"]
    failed = stiff["stiff_status"] != "ok"
    lines = [
        "# One stiff subject in a batch (native solver: dopri5, `method=\"auto\"`, rodas4)", "",
        f"baccam2006, {n} subjects, 41 outputs over 10 days, `hybridtwin.solve.solve` with simulate's default "
        f"configuration (rtol {r['scenario']['rtol']:g}, per-state atol, max_steps {r['scenario']['max_steps']}), "
        f"no gradients; {r['environment']['machine']}, torch {r['environment']['torch']}, "
        f"{r['environment']['torch_threads']} torch thread(s) on a {r['environment']['cpu_count']}-core machine shared "
        f"with other jobs (1-min load average {r['environment']['load_average_1min_at_start']:.1f} at the start, "
        f"{r['environment']['load_average_1min_at_end']:.1f} at the end), run side by side in one process. "
        f"The stiff subject is {r['scenario']['stiff_subject']}; its max_steps is "
        + ("the default." if r["scenario"]["max_steps"] == 100_000 else f"{r['scenario']['max_steps']} (not the default).")
        , "",
        "| case | method | subjects | wall time (s) | stiff subject | statuses |",
        "|:-----|:-------|:---------|--------------:|:--------------|:---------|",
        f"| clean | dopri5 | {n} ordinary | {c['clean']['seconds']:.2f} | - | {c['clean']['status_counts']} |",
        f"| clean | auto | {n} ordinary | {c['clean_auto']['seconds']:.2f} | - | {c['clean_auto']['status_counts']} |",
        f"| mixed | dopri5 | {n - 1} ordinary + 1 stiff | {stiff['seconds']:.2f} | {stiff['stiff_status']}, "
        f"{stiff['stiff_n_steps']} steps | {stiff['status_counts']} |",
        f"| **mixed** | **auto** | {n - 1} ordinary + 1 stiff | **{ma['seconds']:.2f}** | {ma['stiff_status']}, "
        f"{ma['stiff_n_steps']} steps ({ma['stiff_dopri5_steps_before_switch']} dopri5 + {ma['stiff_rodas4_steps']} "
        f"rodas4) | {ma['status_counts']} |",
    ]
    if "stiff_alone" in c:
        a = c["stiff_alone"]
        lines.append(f"| stiff alone | dopri5 | 1 stiff | {a['seconds']:.2f} | {a['stiff_status']}, "
                     f"{a['stiff_n_steps']} steps | {a['status_counts']} |")
    ra = c["stiff_alone_rodas4"]
    b = c["mixed_budget"]
    lines += [
        f"| stiff alone | rodas4 | 1 stiff | {ra['seconds']:.2f} | {ra['stiff_status']}, {ra['stiff_n_steps']} steps "
        f"| {ra['status_counts']} |",
        f"| mixed, max_seconds={b['max_seconds']:g} | dopri5 | {n - 1} ordinary + 1 stiff | {b['seconds']:.2f} | "
        f"{b['stiff_status']}, {b['stiff_n_steps']} steps | {b['status_counts']} |",
        f"| **before compaction** (earlier session, quoted) | dopri5 | mixed vs clean | "
        f"{r['before_compaction']['mixed_s']:.0f} vs {r['before_compaction']['clean_s']:.1f} | - | - |",
        "",
        f"- Ratio mixed / clean: **{r['ratio_mixed_auto_over_clean']:.2f}x with `method=\"auto\"`** "
        f"({r['speedup_mixed_auto_over_mixed']:.1f} times faster than dopri5 on the mixed batch), "
        f"{r['ratio_mixed_over_clean']:.1f}x with dopri5, vs **{r['before_compaction']['ratio']:.0f}x** "
        "before compaction (125 s vs 1.0 s, measured by a previous session on this machine before compaction and "
        "quoted here, not re-measured).",
        "- `auto`: every subject starts with dopri5; Hairer's stiffness test flagged the stiff subject after "
        f"{ma['stiff_dopri5_steps_before_switch']} dopri5 steps and it was solved again from t = 0 with rodas4 "
        f"({ma['stiff_rodas4_steps']} steps; its result is "
        + ("bit-identical to rodas4 on that subject alone" if ma["stiff_bitwise_equal_to_rodas4_alone"] else
           "NOT identical to rodas4 on that subject alone")
        + "). The ordinary subjects were never flagged: their results are "
        + ("bit-identical to the clean dopri5 run" if ma["ordinary_bitwise_equal_to_clean"] else
           "NOT identical to the clean dopri5 run") + ".",
        "- Cost of the stiffness test when nothing is stiff: clean batch "
        f"{c['clean_auto']['seconds']:.2f} s with auto vs {c['clean']['seconds']:.2f} s with dopri5 (ratio {r['ratio_clean_auto_over_clean']:.2f}; results "
        + ("bit-identical" if c["clean_auto"]["bitwise_equal_to_clean"] else "NOT identical")
        + "). dopri5 stays the default method (see `SolverConfig`); `auto` is opt-in.",
    ]
    if "stiff_vs_dopri5" in ma:
        d = ma["stiff_vs_dopri5"]
        lines.append(
            "- The stiff subject's auto (rodas4) result against its dopri5 result (both at rtol "
            f"{r['scenario']['rtol']:g}): largest relative difference {d['max_rel_diff_where_above_1e-6_of_peak']:.1e} "
            "over the outputs above 1e-6 of their state's peak, largest difference in log10 V "
            f"{d['max_abs_diff_log10_V_where_V_above_1']:.1e} where V > 1.")
    if "ratio_mixed_over_clean_plus_alone" in r:
        lines.append(
            f"- Mixed batch / (clean batch + stiff subject alone) = {r['ratio_mixed_over_clean_plus_alone']:.2f}: the "
            "mixed batch costs what its parts cost separately; the ordinary subjects no longer pay for the stiff "
            "one's steps, and the stiff subject's remaining time is its own "
            f"({r['ms_per_step_of_stiff_tail']:.2f} ms per step once it is alone in the working set, Python/op "
            "overhead of an explicit solver at batch size 1).")
    lines += [
        f"- The {n - 1} ordinary subjects' results in the mixed dopri5 run are "
        + ("bit-identical to the clean run" if r["ordinary_subjects_bitwise_equal_mixed_vs_clean"] else
           f"within {r['ordinary_subjects_max_abs_diff_mixed_vs_clean']:.2e} (abs) of the clean run")
        + " (batch invariance).",
    ]
    if failed:
        lines.append(f"- With dopri5 the stiff subject **failed** with status `{stiff['stiff_status']}` after {stiff['stiff_n_steps']} "
                     "steps (its outputs from there on are NaN); the other subjects are unaffected.")
    else:
        lines.append(f"- With dopri5 the stiff subject finished (status `ok`) within the default max_steps, after "
                     f"{stiff['stiff_n_steps']} steps (the ordinary subjects need at most "
                     f"{c['clean']['max_steps_of_ordinary']}).")
    lines += [
        f"- With `SolverConfig(max_seconds={b['max_seconds']:g})` the stiff subject stops with status "
        f"`{b['stiff_status']}`; {b['ordinary_finished']} of the {n - 1} ordinary subjects finished within the budget, "
        + ("bit-identical to the clean run." if b["finished_bitwise_equal_to_clean"] else "NOT identical to the clean run.")
        + " What a budget lets finish is not reproducible by nature (it depends on the machine's speed and load).",
        "",
        "Run: `python experiments/bench_stiff.py` (the dopri5 mixed case and the dopri5 stiff-alone case each take "
        f"about as long as the stiff subject alone with dopri5, {stiff['seconds']:.0f} s in this run; `--no-alone` "
        "skips the second).", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--budget", type=float, default=5.0, help="max_seconds of the budgeted mixed run")
    ap.add_argument("--no-alone", action="store_true", help="skip timing the stiff subject alone")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()
    main(a.n, budget=a.budget, alone=not a.no_alone, threads=a.threads, out_dir=a.out)
