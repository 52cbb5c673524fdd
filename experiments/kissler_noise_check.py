"""Is the broad noise what spoils the kissler2021 forecasts from five samples? Personalise with a smaller one.

At k = 5 the fine-tuned twins of ``kissler_forecast.py`` forecast three people to stay positive for weeks after
they turned negative (``kissler_uncertainty.md``). One reading: with a residual SD of 1.4-1.7 log10 five values
barely constrain a person, so the posterior keeps a "still at the peak" branch. This check personalises the same
held-out people with the same cached fine-tuned twins, with the noise SD replaced by smaller values **for the
personalisation and the forecast only** (nothing is refitted), and scores every later sample as reported, as
``kissler_forecast.py`` does. If the broad noise were the cause, a smaller one should forecast better.

This is a diagnostic, not a method: the noise values are not chosen on the training people.

Run ``python experiments/kissler_noise_check.py`` (about 4 min on one core; needs the fold twins cached by
``kissler_forecast.py``); results: ``experiments/results/kissler_noise_check.{md,json}``.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import kissler_forecast as kf
from _common import RESULTS, write_results
from challenger_folds import person_scores
from hybridtwin.checkpoint import load

ROUTES = ("map", "library")


def run(noise=(None, 1.0, 0.7), ks=(5,), routes=ROUTES, min_ess: float = 200.0, cache: Path | str | None = None,
        out: Path | str = RESULTS, seed: int = 0, n_folds: int = 5) -> list[dict]:
    """Every-sample RMSE and 90 % coverage per (route, noise SD, k); ``None`` keeps each fold's fitted SD."""
    cache = Path(cache) if cache else Path(out) / "kissler_forecast"
    if not all((cache / f"fold{f}_twin" / "weights.pt").is_file() for f in range(n_folds)):
        raise SystemExit(f"fold twins missing under {cache}: run experiments/kissler_forecast.py first")
    torch.set_num_threads(1)
    before = dict(kf.LIBRARY_OPTIONS)
    kf.LIBRARY_OPTIONS["min_ess"] = min_ess
    try:
        rows = _scores(cache, noise, ks, routes, seed, n_folds)
    finally:
        kf.LIBRARY_OPTIONS.clear()
        kf.LIBRARY_OPTIONS.update(before)
    write_results(Path(out), "kissler_noise_check", summarise(rows, min_ess), rows)
    return rows


def _scores(cache: Path, noise, ks, routes, seed: int, n_folds: int) -> list[dict]:
    data = kf.kissler_data()
    obs, cov = data.observations, data.covariates
    held_out = kf.folds(list(data.subject_ids), n_folds, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twins = [load(cache / f"fold{f}_twin").eval() for f in range(n_folds)]
    own = [t.observation.log_sigma_add.detach().clone() for t in twins]
    fitted = [float(o.exp()[0]) for o in own]
    rows = []
    for route in routes:
        for sd in noise:
            for k in ks:
                parts = []
                for f, held in enumerate(held_out):
                    twin = twins[f]
                    with torch.no_grad():  # the fold's own SD, or the one asked for (each run sets it afresh)
                        if sd is None:
                            twin.observation.log_sigma_add.copy_(own[f])
                        else:
                            twin.observation.log_sigma_add.fill_(math.log(sd))
                    early, late = kf.split_quantified(obs[obs["subject_id"].isin(set(held))], k)
                    if late.empty:
                        continue
                    c = cov[cov["subject_id"].isin(set(early["subject_id"]))]
                    parts.append(person_scores(kf.twin_rows(twin, c, early, late, route, seed), late))
                t = pd.concat(parts)
                rows.append({"route": route, "noise_sd": sd, "fitted_noise_sd": fitted, "k": k,
                             "n_people": int(len(t)),
                             "rmse_reported": float(np.sqrt(t["sse_reported"].sum() / t["n_rows"].sum())),
                             "coverage90_reported": float(t["in90_reported"].sum() / t["n_rows"].sum())})
                print(rows[-1], flush=True)
    return rows


def summarise(rows: list[dict], min_ess: float) -> str:
    fitted = rows[0]["fitted_noise_sd"]
    lines = ["# kissler2021: forecasts with a smaller noise SD at personalisation only", "",
             f"Cached fine-tuned twins of `kissler_forecast.py` (fitted noise SD {min(fitted):.2f}-{max(fitted):.2f} "
             f"log10 by fold); library route grown to ESS {min_ess:g}. Every later sample as reported. See the "
             "script's docstring.", "",
             "| route | noise SD | k | people | RMSE every sample | 90 % cov. |", "|---|---|---|---|---|---|"]
    for r in rows:
        sd = "fitted" if r["noise_sd"] is None else f"{r['noise_sd']:g}"
        lines.append(f"| {r['route']} | {sd} | {r['k']} | {r['n_people']} | {r['rmse_reported']:.3f} | "
                     f"{r['coverage90_reported']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--noise", default="fitted,1.0,0.7",
                    help="comma-separated noise SDs ('fitted' keeps each fold's own)")
    ap.add_argument("--ks", default="5", help="comma-separated numbers of samples shown")
    ap.add_argument("--routes", default=",".join(ROUTES))
    ap.add_argument("--min-ess", type=float, default=200.0)
    a = ap.parse_args()
    try:
        noise = tuple(None if v == "fitted" else float(v) for v in a.noise.split(","))
    except ValueError:
        ap.error(f"--noise takes positive numbers or 'fitted', got {a.noise!r}")
    if any(v is not None and not v > 0 for v in noise):
        ap.error(f"--noise values must be positive, got {a.noise!r}")
    routes = tuple(a.routes.split(","))
    if set(routes) - set(ROUTES):
        ap.error(f"--routes must be among {ROUTES}, got {a.routes!r}")
    run(noise, tuple(int(k) for k in a.ks.split(",")), routes, a.min_ess)
