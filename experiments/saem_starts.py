"""Experiment 7, follow-up: is the baccam2006 design's likelihood flat where the estimates miss the truth?

In ``estimation.md`` the baccam2006 fits miss the same few quantities on every seed: the age effect is split
between ``beta`` and ``p`` (truth: on ``beta`` only), cohort 3's assay offset comes out near -0.2 (truth 0)
and the cohorts' inocula ``V0`` wander. Cohort 3 is also the oldest cohort (the generator's age ranges rise
across cohorts), so age, cohort 3's calibration and its inoculum are partly confounded by design.

This script measures, on the seed-0 cohort of ``estimation.py`` (600 training subjects):

1. a fresh fit with the default settings (:func:`hybridtwin.estimation.estimate`), timed (a clean timing only when nothing else runs);
2. SAEM continued (60 exploring + 20 smoothing iterations, no pooled start) from that estimate and from the
   true population model: if the design informed these quantities, both runs would meet;
3. the marginal log-likelihood (importance sampling, the same draws' seed for each) at the truth, the fresh
   estimate and both continued end points, with its Monte Carlo SE.

Result: ``experiments/results/saem_starts_baccam2006_seed0.{md,json}``. Run ``python experiments/saem_starts.py``
(about 30 min on 2 cores).
"""

from __future__ import annotations

import json
import math
import time
import warnings

import torch

import estimation as E
from _common import RESULTS
from hybridtwin.estimation import AmortiseConfig, SAEMConfig, estimate
from hybridtwin.estimation.fisher import estimate_vector, population_columns
from hybridtwin.estimation.marginal import marginal_loglik
from hybridtwin.estimation.saem import fit_saem
from hybridtwin.twin import HybridTwin, TwinConfig

WATCH = ("beta[beta, age]", "beta[p, age]", "offset[log10_V, cohort_2]", "offset[log10_V, cohort_3]",
         "mu_population[V0]", "cohort_shift[V0, cohort_2]", "cohort_shift[V0, cohort_3]", "mu[beta]", "mu[p]",
         "log_sigma_add[log10_V]")


def _copy(twin: HybridTwin) -> HybridTwin:
    other = HybridTwin.from_card(twin.card())
    other.load_state_dict(twin.state_dict())
    return other


def _values(twin: HybridTwin) -> dict:
    cols = population_columns(twin)
    vec = estimate_vector(twin, cols).tolist()
    return {c["name"]: v for c, v in zip(cols, vec)}


def _standard_errors(twin: HybridTwin) -> dict:
    u = twin.uncertainty or {}
    names = u.get("names", [])
    return {n: math.sqrt(max(u["cov"][i][i], 0.0)) for i, n in enumerate(names) if n in WATCH}


def main(seed: int = 0, n_draws: int = 400, n_train: int = 600, saem: dict | None = None, cont: dict | None = None,
         continued: bool = True, stem: str = "saem_starts", amortise: dict | None = None,
         also: dict | None = None, refit: bool = True) -> dict:
    """``also``: extra end points to score, ``{label: saved twin dir}`` (e.g. a fit from ``estimation.py``);
    ``refit=False`` skips the fresh fit (only the truth and ``also`` are scored)."""
    torch.manual_seed(seed)
    data, train, _ = E.make_data("baccam2006", n_train, 200, seed)
    twin = HybridTwin.from_data(TwinConfig(**E.DESIGNS["baccam2006"]["twin"]), train)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if refit:
            estimate(twin, train, SAEMConfig(seed=seed, progress=False, **(saem or {})),
                     AmortiseConfig(seed=seed, progress=False, **(amortise or {})))
    fit_seconds = time.perf_counter() - t0
    truth = E.truth_vector(twin, data)
    points = {"true model": E.truth_twin(twin, data)}
    if refit:
        points["fresh fit"] = _copy(twin)
    for label, path in (also or {}).items():
        from hybridtwin.checkpoint import load

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            points[label] = load(path)
    cont = SAEMConfig(**{**dict(seed=seed + 1, init_steps=0, omega_start=0.01, n_burn=10, n_explore=60,
                                n_smooth=20, n_fisher=0, progress=False), **(cont or {})})
    for name, start in (("continued from the fit", _copy(twin)),
                        ("continued from the truth", _copy(points["true model"])))[:2 if continued and refit else 0]:
        start.train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_saem(start, train, cont)
        points[name] = start.eval()
    rows = {}
    for name, tw in points.items():
        ml = marginal_loglik(tw, train, n_draws=n_draws, seed=seed)
        rows[name] = {"loglik": ml["loglik"], "se": ml["se"], "min_ess": ml["min_ess"],
                      "values": {k: v for k, v in _values(tw).items() if k in WATCH}}
    out = {"seed": seed, "fit_seconds": fit_seconds, "truth": {k: truth[k] for k in WATCH if k in truth},
           "fresh_fit_se": _standard_errors(twin),
           "points": rows, "torch_threads": torch.get_num_threads()}
    (RESULTS / f"{stem}_baccam2006_seed{seed}.json").write_text(json.dumps(out, indent=1))
    names = list(rows)
    lines = [f"# SAEM from different starts, baccam2006 seed {seed} ({len(train.covariates)} subjects)", "",
             (f"Fresh default fit (SAEM + standard errors + checks + encoder amortisation), wall time on "
              f"{torch.get_num_threads()} torch threads: **{fit_seconds / 60:.1f} min**." if refit else
              "No fresh fit: the truth and saved fits scored."), "",
             "| quantity | truth | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    se = out["fresh_fit_se"]
    for q in WATCH:
        t = truth.get(q, math.nan)
        lines.append(f"| {q} (SE of the fit {se.get(q, math.nan):.3f}) | {t:.3f} | " + " | ".join(f"{rows[n]['values'].get(q, math.nan):.3f}" for n in names) + " |")
    lines.append("| **marginal log-likelihood** (IS, " + f"{n_draws} draws; ± MC SE) | | " + " | ".join(
        f"{rows[n]['loglik']:.1f} ± {rows[n]['se']:.1f}" for n in names) + " |")
    (RESULTS / f"{stem}_baccam2006_seed{seed}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit-only", action="store_true", help="no continued runs: the fresh fit vs the truth only")
    ap.add_argument("--stem", default="saem_starts")
    ap.add_argument("--also", nargs=2, action="append", metavar=("LABEL", "TWIN_DIR"), default=[],
                    help="also score a saved twin (e.g. a fit of estimation.py)")
    ap.add_argument("--no-refit", action="store_true", help="score the truth and --also twins only")
    ap.add_argument("--init-cohort-terms", action="store_true",
                    help="the former pooled start, which also moves cohort shifts and assay offsets")
    a = ap.parse_args()
    main(seed=a.seed, continued=not a.fit_only, stem=a.stem, also=dict(a.also), refit=not a.no_refit,
         saem={"init_cohort_terms": True} if a.init_cohort_terms else None)
