"""Why did the kissler closure fine-tune slow down? The solver's work per SAEM iteration, closure unbounded vs
bounded, side by side on one fold.

``kissler_forecast.py --closure`` fine-tunes the shipped challenger twin with a clearance closure
(``challenger_folds.CLOSURE``: c replaced by ``c * exp(net(t, log10 T))``). On fold 1 its SAEM iterations went from
about 8 s to 2 min while the dopri5 steps per solve grew from ~110 to ~600 (README, issue 9). A replacing closure's
multiplier is ``exp(net)`` with the net clamped only at +-20, so a net that grows during training can make the
clearance -- and the ODE -- arbitrarily stiff. This script runs the first ``--iterations`` SAEM iterations of that
fine-tune twice on the same fold, data and seed: with the closure as shipped (``constraint="signed"``) and with
its log-multiplier bounded (``constraint="bounded"``, ``bounds=(-B, B)``, i.e. clearance within exp(-B)..exp(B)
times the mechanistic one), and records per iteration the solver's mean and largest steps per subject solve, the
wall seconds, the typical p and the complete-data log-likelihood (``PopulationFit.history``).

Run ``python experiments/closure_stiffness.py`` (about 10 min on one core); results:
``experiments/results/closure_stiffness.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings

import pandas as pd
import torch

from _common import RESULTS
from challenger_folds import CLOSURE
from hybridtwin.estimation import SAEMConfig, fit_saem
import kissler_forecast as kf

COLUMNS = ["iteration", "solver_steps_per_solve", "solver_steps_max", "seconds", "typical[p]", "complete_loglik"]


def run(variant: dict, data, held: list[str], iterations: int, seed: int) -> pd.DataFrame:
    """The first ``iterations`` SAEM iterations of the fold's closure fine-tune (kissler_forecast's settings)."""
    twin = kf.offset_estimated(kf.CHECKPOINT, closure=variant)
    twin.config = dataclasses.replace(twin.config, covariate_penalty=1.0)
    train = data.subset([s for s in data.subject_ids if s not in set(held)])
    cfg = SAEMConfig(**{**kf.FINE_TUNE_SAEM, "n_explore": iterations, "n_smooth": 0}, seed=seed, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_saem(twin, train, cfg)
    return fit.history[[c for c in COLUMNS if c in fit.history]]


def main(fold: int = 1, iterations: int = 8, bound: float = 2.3, seed: int = 0, out=RESULTS, n_people=None) -> dict:
    torch.set_num_threads(1)
    data = kf.kissler_data()
    if n_people:
        data = data.subset(list(data.subject_ids)[:n_people])
    held = kf.folds(list(data.subject_ids), 5, seed)[fold]
    variants = {"signed (as shipped)": CLOSURE,
                f"bounded (log-multiplier within +-{bound:g})": {**CLOSURE, "constraint": "bounded",
                                                                   "bounds": [-bound, bound]}}
    tables = {}
    for name, v in variants.items():
        tables[name] = run(v, data, held, iterations, seed)
        print(name, "\n", tables[name].round(2).to_string(index=False), flush=True)
    result = {"fold": fold, "iterations": iterations, "bound": bound,
              "runs": {k: t.to_dict(orient="list") for k, t in tables.items()}}
    lines = ["# Solver work per SAEM iteration: kissler closure fine-tune, fold %d" % fold, "",
             "See the script's docstring. Steps: dopri5 attempted steps per subject solve (mean; max), over every solve "
             "of the iteration (chains, proposals, the closure's gradient step).", ""]
    for name, t in tables.items():
        lines += [f"## {name}", "", "| iteration | steps / solve | max steps | seconds | typical p | complete log-lik |",
                  "|---|---|---|---|---|---|"]
        for r in t.itertuples(index=False):
            lines.append(f"| {r[0]} | {r[1]:.0f} | {r[2]:.0f} | {r[3]:.1f} | {r[4]:.2f} | {r[5]:.1f} |")
        lines.append("")
    from pathlib import Path

    out = Path(out)
    (out / "closure_stiffness.json").write_text(json.dumps(result, indent=1))
    (out / "closure_stiffness.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fold", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--bound", type=float, default=2.3)
    a = ap.parse_args()
    main(a.fold, a.iterations, a.bound)
