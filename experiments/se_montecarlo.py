"""Diagnostic for experiment 7: standard errors of a saved fit vs the Monte Carlo effort of the scores.

At the estimate of ``experiments/results/estimation/<model>_seed<seed>_twin``: 40 burn-in MCMC iterations, then
the per-subject scores over the first 80 draws (as the fit does, 4 batch means) and over all M draws (8 batch
means); SEs with the batch-means correction at floors 0.1 and 0.01 and without it (raw); 90 % CI coverage of
the true values and every SE with the error of the estimate (JSON).

Usage: ``python experiments/se_montecarlo.py baccam2006 0 240`` (16 min on one core); the output of that run is
``experiments/results/se_montecarlo_baccam2006_seed0.txt``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import estimation as E  # noqa: E402
from hybridtwin.checkpoint import load  # noqa: E402
from hybridtwin.estimation.saem import _Chains  # noqa: E402
from hybridtwin.estimation.fisher import ScoreAccumulator, covariance, estimate_vector, information  # noqa: E402
from hybridtwin.estimation.likelihood import design_matrix  # noqa: E402


def main(model: str, seed: int, M: int) -> dict:
    """Print the SEs of the saved ``model``/``seed`` fit from 80 and from ``M`` posterior draws; return them."""
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    folder = Path(__file__).resolve().parent / "results" / "estimation" / f"{model}_seed{seed}_twin"
    if not folder.is_dir():
        raise SystemExit(f"no saved fit at {folder}: run experiments/estimation.py for {model}, seed {seed} first")
    data, train, test = E.make_data(model, 600, 200, seed)
    twin = load(folder)
    truth = E.truth_vector(twin, data)
    batch = twin.dataset(train).batch()
    X = design_matrix(batch).to(twin.dtype)
    N = X.shape[0]
    with torch.no_grad():
        coef = torch.cat([twin.mu[None], twin.beta.T], 0)[:X.shape[1]]
        mean, sd = X @ coef, twin.log_omega.exp().expand(N, -1)
    gen = torch.Generator().manual_seed(123)
    chains = _Chains(twin, batch, mean.clone(), gen)
    t0 = time.time()
    for i in range(40):
        chains.step(mean, sd, (1, 1, 1), adapt=i < 30)
    nb = 8
    acc = ScoreAccumulator(twin, batch, X, n_batches=nb)
    acc80 = ScoreAccumulator(twin, batch, X, n_batches=4)
    for m in range(M):
        chains.step(mean, sd, (1, 1, 1), adapt=False)
        acc.add(chains.z, chains.g, chains.ok, part=m * nb // M)
        if m < 80:
            acc80.add(chains.z, chains.g, chains.ok, part=m * 4 // 80)
    print("sampling s", time.time() - t0, flush=True)
    names = [c["name"] for c in acc.cols]
    est = estimate_vector(twin, acc.cols).numpy()
    out = {}
    for label, a, keep in (("80it keep0.1", acc80, 0.1), ("80it keep0.01", acc80, 0.01), (f"{M}it keep0.1", acc, 0.1),
                           (f"{M}it keep0.01", acc, 0.01), (f"{M}it raw", acc, None)):
        s, b, _ = a.result()
        info, corr = information(s, None if keep is None else b, keep=keep or 0.1)
        cov, rank = covariance(info)
        se = np.sqrt(np.diag(cov.numpy()))
        cover = [abs(e - truth[n]) <= 1.6449 * q for n, e, q in zip(names, est, se) if n in truth]
        out[label] = dict(zip(names, se.tolist()))
        print(label, "coverage", np.mean(cover), "n", len(cover), flush=True)
    print(json.dumps({n: {k: round(v[n], 4) for k, v in out.items()} | {"err": round(float(e - truth.get(n, np.nan)), 4)} for n, e in zip(names, est)}, indent=0))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="model of the saved fit, e.g. baccam2006")
    ap.add_argument("seed", type=int, help="seed of the saved fit")
    ap.add_argument("draws", type=int, help="posterior draws for the scores (at least 80)")
    a = ap.parse_args()
    if a.draws < 80:
        ap.error(f"draws must be at least 80 (the fit's own SEs use the first 80), got {a.draws}")
    main(a.model, a.seed, a.draws)
