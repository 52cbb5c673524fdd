"""Experiment 7, real data: the SAEM estimation on ``challenger2022`` (605 SARS-CoV-2 patients, 17 studies).

The question here is only whether the fit is degenerate (the former estimator ended with a noise SD of 3.9
log10 and a flat population curve): the learned noise SD, the between-patient SDs and the population curve
are reported against the data's own spread, with the degeneracy checks and the design identifiability.

Choices (documented, not tuned to a result): ``sarscov2_cd8`` (Hernandez-Vargas & Velasco-Hernandez 2020);
the loader's observable ``log10_vl`` (log10 copies/ml) is mapped onto the model's ``log10_V`` (same units,
:func:`hybridtwin.data.map_observables`); covariate age (per 10 years above 50, with a missing-value
indicator); censored rows (below each study's LOD) enter by M3; the clearance ``c`` is population-level and
the other parameters stay at their defaults. Two designs of the time origin (the data's day 0 is symptom
onset, the model's day 0 is infection):

- ``time_offset=True`` (default): a per-patient time offset ``t_offset`` from infection to onset whose
  population distribution is the SARS-CoV-2 incubation period (log-normal, median 5.1 days, log-SD 0.418;
  Lauer et al. 2020; a known prior, not estimated), random effects on ``p``, ``c_T`` and ``t_offset``; the
  inoculum ``V0`` stays at the published 0.31 copies/ml (with free per-patient timing, V0 and t_offset would
  trade off); the carrying capacity ``K_V`` is estimated (population-level): the published 1e11 copies/ml
  belongs to the paper's own patients and samples, these swabs peak near 1e7-1e9;
- ``time_offset=False``: every patient infected 3 days before onset (the model's own convention), random
  effects on ``p``, ``c_T`` and ``V0`` (the former design).

``main(**kwargs)`` runs it; results go to ``experiments/results/estimation_challenger.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import RESULTS, ROOT
from hybridtwin.data import CohortData, map_observables
from hybridtwin.datasets import load
from hybridtwin.estimation import AmortiseConfig, SAEMConfig, conditional_summary, estimate, identifiability
from hybridtwin.twin import HybridTwin, TwinConfig

DATA = ROOT.parent / "shared" / "data" / "challenger2022_covid_vl_combined"
INCUBATION = 3.0  # days from infection to symptom onset, the model's convention (V(-3 d) = V0)
TWIN = dict(model="sarscov2_cd8", population=("c",), fixed=("K_V", "k_T", "delta_T", "r"),
            covariate_scaling={"age": (50.0, 10.0)},
            solver={"rtol": 1e-5, "atol": 1e-6, "max_steps": 4000})
#: the per-patient time-offset design (see the module docstring); the carrying capacity K_V is estimated
#: (population-level, inside its declared range): the published 1e11 copies/ml belongs to the paper's own
#: patients and samples, while these upper-respiratory swabs peak around 1e7-1e9
TWIN_OFFSET = {**TWIN, "fixed": ("k_T", "delta_T", "r", "V0"), "population": ("c", "K_V"), "time_offset": {}}


def challenger_data(path=DATA, time_offset: bool = True) -> CohortData:
    data = map_observables(load("challenger2022", path), {"log10_vl": {"name": "log10_V", "unit": "log10 copies/ml"}})
    shift = 0.0 if time_offset else INCUBATION
    obs = data.observations.assign(time=data.observations["time"] + shift)
    # age only: the 41 patients without age are also those without sex, so an age-missing indicator and a
    # sex-missing contrast would be the same column (the fit refuses collinear covariates)
    cov = data.covariates[["subject_id", "age"]]
    return CohortData(obs, data.doses, cov, dict(data.meta))


def _figure(twin, data: CohortData, path: Path, seed: int = 0, xlabel: str = "days since infection (onset + 3)") -> dict:
    """Data vs the fitted population: observations, binned medians, typical curve, 90 % prior-predictive band."""
    import matplotlib.pyplot as plt

    obs = data.observations
    grid = np.linspace(float(obs["time"].min()), 40.0, 80)
    cov = data.covariates.sample(n=400, replace=True, random_state=seed).assign(
        subject_id=[f"v{i}" for i in range(400)], cohort=data.observations["cohort"].iloc[0])
    traj, _ = twin.predict(cov, None, None, times=grid, method="encoder", n_samples=1, seed=seed)
    band = traj.groupby("time")["median"].quantile([0.05, 0.5, 0.95]).unstack()
    with torch.no_grad():
        typical = twin.predict(cov.iloc[:1], None, None, times=grid, method="encoder", n_samples=1)[0]
    edges = np.quantile(obs["time"], np.linspace(0, 1, 9))
    obs = obs.assign(bin=np.clip(np.digitize(obs["time"], edges[1:-1]), 0, 7))
    binned = obs.groupby("bin").agg(time=("time", "median"), value=("value", "median"))
    fig, ax = plt.subplots(figsize=(7, 4))
    unc, cen = obs[~obs["censored"]], obs[obs["censored"]]
    ax.scatter(unc["time"], unc["value"], s=5, color="0.6", alpha=0.5, label="measured")
    ax.scatter(cen["time"], cen["value"], s=8, marker="v", color="0.8", label="below LOD (at the limit)")
    ax.fill_between(band.index, band[0.05], band[0.95], color="C0", alpha=0.2, label="90 % of virtual patients")
    ax.plot(typical["time"], typical["model_median"], color="C0", lw=2, label="typical patient")
    ax.plot(binned["time"], binned["value"], "o-", color="C3", label="data: binned medians")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("log10 copies/ml")
    ax.set_title("challenger2022: fitted population vs data")
    ax.set_ylim(bottom=float(obs["lloq"].min()) - 1.0)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    floor = float(obs["lloq"].min())  # below every detection limit the data say nothing about the curve
    curve = typical["model_median"].clip(lower=floor)
    return {"binned_median_range": float(binned["value"].max() - binned["value"].min()),
            "typical_curve_range": float(curve.max() - curve.min()), "floor": floor}


def main(n_subjects: int | None = None, saem: dict | None = None, amortise: dict | None = None,
         out: Path | str = RESULTS, path=DATA, seed: int = 0, time_offset: bool = True) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    data = challenger_data(path, time_offset)
    if n_subjects:
        data = data.subset(list(data.subject_ids)[:n_subjects])
    twin = HybridTwin.from_data(TwinConfig(**(TWIN_OFFSET if time_offset else TWIN)), data)
    stem = "estimation_challenger" if time_offset else "estimation_challenger_fixed_incubation"
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = estimate(twin, data, SAEMConfig(seed=seed, **{"progress": False, **(saem or {})}),
                       AmortiseConfig(seed=seed, **{"progress": False, **(amortise or {})}))
    seconds = time.perf_counter() - t0
    batch = twin.dataset(data).batch()
    unc = data.observations.loc[~data.observations["censored"], "value"]
    table = twin.population_table()
    sigma = float(table.loc[table.kind == "noise", "estimate"].iloc[0])
    curve = _figure(twin, data, out / f"{stem}.png", seed,
                    "days since symptom onset" if time_offset else "days since infection (onset + 3)")
    ident = identifiability(twin, batch)
    result = {"n_subjects": len(data.subject_ids), "n_rows": len(data.observations),
              "n_censored": int(data.observations["censored"].sum()), "fit_seconds": seconds,
              "noise_sd": sigma, "data_sd_uncensored": float(unc.std()),
              "omega": dict(zip(table.loc[table.kind == "omega", "parameter"], table.loc[table.kind == "omega", "estimate"])),
              "shrinkage": conditional_summary(twin, fit, batch).to_dict(orient="records"), **curve,
              "diagnostics": [d["message"] for d in fit.diagnostics],
              "warnings": sorted({str(w.message)[:200] for w in caught}),
              "identifiability": ident.to_dict(orient="records"),
              "population_table": table.to_dict(orient="records")}
    shown = table[table.kind.isin(["typical", "population", "omega", "noise", "effect"])]
    design = ("per-patient time offset from infection to onset (t_offset), V0 fixed at 0.31" if time_offset else
              "every patient infected 3 days before onset, random effect on V0")
    lines = [f"# Experiment 7 on real data: challenger2022 (SARS-CoV-2, 17 studies), {design}", "",
             f"{result['n_subjects']} patients, {result['n_rows']} samples ({result['n_censored']} below LOD); "
             f"SAEM + amortised encoder in {seconds / 60:.1f} min on 2 CPU cores.", "",
             f"- Residual noise SD {sigma:.3f} log10 vs the data's SD {result['data_sd_uncensored']:.3f} (uncensored "
             f"values): the model explains {1 - sigma**2 / result['data_sd_uncensored']**2:.0%} of the variance.",
             f"- Population curve: the typical patient spans {curve['typical_curve_range']:.2f} log10 over the data's days "
             f"(above the lowest detection limit, {curve['floor']:.2f}); "
             f"the data's binned medians span {curve['binned_median_range']:.2f} log10 "
             "(figure: estimation_challenger.png).",
             "- Between-patient SDs: " + ", ".join(f"{k} {v:.3f}" for k, v in result["omega"].items()),
             "- Eta-shrinkage: " + ", ".join(f"{r['parameter']} {r['shrinkage']:.2f}" for r in result["shrinkage"]),
             "- Degeneracy findings: " + ("; ".join(result["diagnostics"]) if result["diagnostics"] else "none"),
             "- Design identifiability (SE of log typical value): " + ", ".join(
                 f"{r['parameter']} {r['se_log']:.2g}" for r in result["identifiability"]), "",
             "| quantity | estimate | SE | RSE % | 90 % CI |", "|---|---|---|---|---|"]
    for _, r in shown.iterrows():
        lines.append(f"| {r.quantity} | {r.estimate:.4g} | {r.se:.3g} | {r.rse_percent:.1f} | "
                     f"{r.lower:.4g} - {r.upper:.4g} |")
    report = "\n".join(lines) + "\n"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=float))
    (out / f"{stem}.md").write_text(report)
    return {"result": result, "report": report}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-subjects", type=int, default=None)
    ap.add_argument("--fixed-incubation", action="store_true", help="the former design (3 days for everyone)")
    a = ap.parse_args()
    print(main(n_subjects=a.n_subjects, time_offset=not a.fixed_incubation)["report"])
