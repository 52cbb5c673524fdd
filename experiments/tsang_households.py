"""Real-data issue, section 4: a multi-subtype influenza twin on ``tsang2016`` (478 infected household members,
Hong Kong, 1-3 nasal-swab viral loads each), antiviral treatment as a covariate effect, held-out households.

Design (documented choices, not tuned to a result):

- Time axis: days since each person's own symptom onset (``time - onset_time``; contacts may be sampled
  before their onset, down to day -3). The eclipse model ``baccam2006`` starts at infection, so each person
  has a time offset from infection to onset, ``t_offset``, whose population distribution is the influenza A
  incubation period: log-normal, median 1.4 days, dispersion 1.51 (log-SD 0.412) (Lessler J, Reich NG,
  Brookmeyer R, et al. Incubation periods of acute respiratory viral infections: a systematic review.
  Lancet Infect Dis 9:291-300 (2009), doi:10.1016/S1473-3099(09)70069-6); known, not estimated.
- Observable: log10 copies/ml mapped onto the model's ``log10_V`` (the model's V is in TCID50/ml in Baccam et
  al.; the overall scale is absorbed by p, as V0 and the assay offset are not free; values below 900
  copies/ml are censored at that limit, M3).
- Random effects on beta, p and delta; the clearance c and the eclipse rate k at the published values; the
  inoculum V0 estimated at population level. Subtype (the loader's ``cohort``: seasonal H1N1, seasonal H3N2,
  pandemic H1N1, unsubtyped A) shifts p as a fixed effect per subtype. Covariates: antiviral treatment (0/1;
  the file does not say when or which drug, so it is a covariate, not a dose) and age (per 20 years above 40),
  on every patient parameter; the effect of interest is antiviral on p (a neuraminidase inhibitor lowers
  virion release), reported with its SE and 90 % CI.
- 20 % of the households held out (seeded); a short SAEM (``SAEM_SETTINGS``: 30 + 15 iterations, standard
  errors from 20 draws, no encoder amortisation) on the rest: with the library's 250 iterations one fit took
  over an hour here (iteration 74 after 31 min; wide between-patient SDs make many subjects' solves stiff). Each held-out person with >= 2 samples is forecast from the first (MAP) and from
  covariates alone (population), against carrying the first value forward (LOCF, intervals from the training
  people's changes); scores as in ``challenger_folds.score``.

- Yardsticks for the residual SD (:func:`references`): what a curve of day means and a linear mixed model with a
  random intercept per person leave unexplained in the same values.
- ``--sampling``: the same twin on :func:`sampling_model`, with a per-person sampling efficiency of the swabs
  (a random effect on the observation only). The mixed model says a person's level varies with an SD of about
  0.7 log10 around the population curve; the plain twin's random effects on beta, p and delta reach only part
  of that (omega(p) about 0.25, on the natural-log scale), because in the eclipse model they also change the
  course of the infection.

Run ``python experiments/tsang_households.py [--sampling]`` (about 30 min on one core); results:
``experiments/results/tsang_households[_sampling].{md,json}``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import RESULTS, ROOT
from challenger_folds import _twin_rows, locf, score, split_early
from hybridtwin.data import CohortData, map_observables
from hybridtwin.datasets import load
from hybridtwin.estimation import SAEMConfig, estimate
from hybridtwin.estimation.marginal import marginal_loglik
from hybridtwin.twin import HybridTwin, TwinConfig

DATA = ROOT.parent / "shared" / "data" / "tsang2016_flu_households"
#: Lessler et al. (2009): influenza A incubation period, log-normal, median 1.4 days, dispersion 1.51
INFLUENZA_INCUBATION = {"typical": 1.4, "omega": 0.412, "lower": 0.05, "upper": 10.0}
SAEM_SETTINGS = dict(n_explore=30, n_smooth=15, n_fisher=20)
TWIN = dict(model="baccam2006", fixed=("k", "c", "T0", "k_el", "Emax", "EC50"), population=("V0",),
            cohort_effects=("p",), time_offset=INFLUENZA_INCUBATION,
            covariate_scaling={"age": (40.0, 20.0)}, solver={"rtol": 1e-5, "atol": 1e-6, "max_steps": 4000})


#: the ``--sampling`` variant: each person's swabs also carry a per-person sampling efficiency (random effect)
SAMPLING = "baccam2006_sampling"


def sampling_model():
    """``baccam2006`` with one more patient parameter, ``swab``: the share of the nasal viral load that a person's
    swabs collect (sampling efficiency; typical value 1, between 1e-3 and 1e3), acting on the observation only
    (``log10_V = log10(V * swab)``), so that a person's level can sit above or below the population's without
    changing the course of the infection. Registered under :data:`SAMPLING`."""
    from hybridtwin import models
    from hybridtwin.models.base import LOG10_FLOOR, Model
    from hybridtwin.parameters import Parameter

    if SAMPLING in models.available():
        return models.get(SAMPLING)
    base = models.get("baccam2006")
    swab = Parameter("swab", 1.0, 1e-3, 1e3, unit="1", description="per-person sampling efficiency of the swabs "
                     "(share of the nasal viral load collected; observation only)")

    def log10_sampled(s, p):
        return torch.log10(torch.clamp(s.V, min=LOG10_FLOOR)) + torch.log10(p.swab)

    model = Model(name=SAMPLING, states=base.state_names, parameters=list(base.parameter_space) + [swab],
                  rhs=base._rhs, initial={k: base.initial[k] for k in base.state_names},
                  observables={"log10_V": log10_sampled}, compartments=base.compartment_names,
                  interventions=[iv for iv in base.interventions.values() if iv.kind == "drug"],
                  time_unit=base.time_unit, citation=base.citation,
                  description=base.description + "; swabs with a per-person sampling efficiency",
                  default_t_end=base.default_t_end, log_scale_states=base.log_scale_states)
    return models.register(model)


def tsang_data(path=DATA) -> CohortData:
    """Observations on each person's own onset clock; covariates age and antiviral."""
    data = map_observables(load("tsang2016", path), {"log10_vl": {"name": "log10_V", "unit": "log10 copies/ml"}})
    onset = data.covariates.set_index("subject_id")["onset_time"]
    obs = data.observations.assign(time=data.observations["time"] - data.observations["subject_id"].map(onset))
    cov = data.covariates[["subject_id", "age", "antiviral", "household"]]
    return CohortData(obs, data.doses, cov, dict(data.meta))


def household_split(data: CohortData, share: float = 0.2, seed: int = 0) -> tuple[CohortData, CohortData]:
    homes = sorted(data.covariates["household"].unique())
    held = set(np.random.default_rng(seed).choice(homes, size=int(round(share * len(homes))), replace=False))
    test = data.covariates.loc[data.covariates["household"].isin(held), "subject_id"].tolist()
    train = [s for s in data.subject_ids if s not in set(test)]
    drop = lambda d: CohortData(d.observations, d.doses, d.covariates.drop(columns=["household"]), d.meta)  # noqa: E731
    return drop(data.subset(train)), drop(data.subset(test))


def references(obs: pd.DataFrame) -> dict:
    """What simple statistical models leave unexplained in the quantified values of ``obs`` (log10 copies/ml on
    the onset clock), the yardstick for the twin's residual SD: the data's own SD; a curve of day means
    (days since onset, rounded: what time alone explains); a linear mixed model with a fixed slope in time and a
    random intercept per person (statsmodels, REML; the within-person residual SD: what a per-person level
    explains on top). Both ignore censoring, so they are only a yardstick for the twin's censoring-aware fit."""
    import statsmodels.formula.api as smf

    q = obs.loc[~obs["censored"], ["subject_id", "time", "value"]].copy()
    day = q["time"].round()
    curve = q["value"] - q.groupby(day)["value"].transform("mean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lmm = smf.mixedlm("value ~ time", q, groups=q["subject_id"]).fit(reml=True)
    return {"data_sd": float(q["value"].std()), "day_mean_curve_sd": float(curve.std()),
            "lmm_residual_sd": float(np.sqrt(lmm.scale)), "lmm_intercept_sd": float(np.sqrt(lmm.cov_re.iloc[0, 0])),
            "lmm_slope_per_day": float(lmm.fe_params["time"])}


def main(path=DATA, out: Path | str = RESULTS, saem: dict | None = None, seed: int = 0,
         stem: str = "tsang_households", sampling: bool = False) -> dict:
    torch.set_num_threads(1)
    out = Path(out)
    train, test = household_split(tsang_data(path), seed=seed)
    torch.manual_seed(seed)
    config = dict(TWIN, model=sampling_model().name) if sampling else TWIN
    twin = HybridTwin.from_data(TwinConfig(**config), train)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = estimate(twin, train, SAEMConfig(seed=seed, progress=False, **{**SAEM_SETTINGS, **(saem or {})}), amortisation=False)
    fit_seconds = time.perf_counter() - t0
    twin.eval()
    # for comparing fits (other starts, the --sampling variant): Monolix's -2LL by importance sampling, with AIC
    marginal = marginal_loglik(twin, train, n_draws=100, seed=seed)
    table = twin.population_table()
    # held-out households: people with >= 2 samples, later samples from the first
    early, late = split_early(test.observations, 1)
    late = late[late["subject_id"].isin(set(early["subject_id"]))]
    subtype = test.observations.groupby("subject_id")["cohort"].first()  # known when predicting
    cov = test.covariates.assign(cohort=test.covariates["subject_id"].map(subtype))
    scores = {"twin MAP": score(_twin_rows(twin, cov, early, late, "map", seed), late),
              "population only": score(_twin_rows(twin, cov, None, late, "population", seed), late),
              "LOCF": score(locf(train.observations, early, late, 1), late)}
    refs = references(train.observations)
    result = {"references": refs, "marginal": {k: marginal[k] for k in ("loglik", "se", "aic", "bic") if k in marginal},
              "saem": {**SAEM_SETTINGS, **(saem or {})}, "model": twin.model.name,
              "n_train": len(train.subject_ids), "n_test": len(test.subject_ids),
              "n_test_forecast": int(late["subject_id"].nunique()), "fit_seconds": fit_seconds,
              "noise_sd": float(table.loc[table.kind == "noise", "estimate"].iloc[0]),
              "data_sd_uncensored": refs["data_sd"], "scores": scores,
              "diagnostics": [d["message"] for d in fit.diagnostics],
              "warnings": sorted({str(w.message)[:200] for w in caught}),
              "population_table": table.to_dict(orient="records")}
    av = table[(table.kind == "effect") & (table.covariate == "antiviral")]
    lines = ["# Influenza A in households (tsang2016): a multi-subtype twin, antiviral as a covariate", "",
             f"{result['n_train']} people fitted (80 % of households), {result['n_test']} held out "
             f"({result['n_test_forecast']} with a later sample to forecast). SAEM in {fit_seconds / 60:.1f} min on 2 "
             "CPU cores. See the script's docstring for the design.", "",
             f"- Model `{result['model']}`; SAEM settings {result['saem']}; marginal log-likelihood (importance "
             f"sampling) {result['marginal']['loglik']:.1f} (MC SE {result['marginal']['se']:.1f}), "
             f"AIC {result['marginal']['aic']:.1f}.",
             f"- Residual SD {result['noise_sd']:.2f} log10 vs the data's {result['data_sd_uncensored']:.2f} (quantified "
             "training values).",
             f"- Yardsticks on the same values (censoring ignored): a curve of day means since onset leaves "
             f"{refs['day_mean_curve_sd']:.2f}; a linear mixed model (slope {refs['lmm_slope_per_day']:+.2f} log10/day, "
             f"random intercept SD {refs['lmm_intercept_sd']:.2f}) leaves {refs['lmm_residual_sd']:.2f} within persons. "
             "With 1-3 samples a person even these stay above half the data's SD, the degeneracy check's threshold.",
             "- Degeneracy findings: " + ("; ".join(result["diagnostics"]) if result["diagnostics"] else "none"), "",
             "## Antiviral treatment (0/1) on the log parameters", "",
             "| parameter | effect | SE | 90 % CI | factor on the parameter |", "|---|---|---|---|---|"]
    for _, r in av.iterrows():
        lines.append(f"| {r.parameter} | {r.estimate:+.3f} | {r.se:.3f} | {r.lower:+.3f} to {r.upper:+.3f} | "
                     f"{np.exp(r.estimate):.2f} ({np.exp(r.lower):.2f}-{np.exp(r.upper):.2f}) |")
    lines += ["", "## Held-out households: later samples from the first", "",
              "| method | RMSE (quantified) | 50 % coverage | 90 % coverage | log-lik / row | rows |",
              "|---|---|---|---|---|---|"]
    for m, s in scores.items():
        lines.append(f"| {m} | {s['rmse']:.2f} | {s['coverage50']:.2f} | {s['coverage90']:.2f} | "
                     f"{s['loglik_per_row']:.2f} | {s['n_rows']} ({s['n_quantified']} quantified) |")
    shown = table[table.kind.isin(["typical", "population", "omega", "noise", "cohort"])]
    lines += ["", "## Population estimates", "", "| quantity | estimate | SE | RSE % | 90 % CI |", "|---|---|---|---|---|"]
    for _, r in shown.iterrows():
        lines.append(f"| {r.quantity} | {r.estimate:.4g} | {r.se:.3g} | {r.rse_percent:.1f} | {r.lower:.4g} - {r.upper:.4g} |")
    report = "\n".join(lines) + "\n"
    (out / f"{stem}.md").write_text(report)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=float))
    print(report)
    return result


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sampling", action="store_true",
                    help="add a per-person sampling efficiency of the swabs (sampling_model); results tsang_households_sampling.*")
    ap.add_argument("--omega-start", type=float, default=None,
                    help="SAEM's initial between-patient SD (another start; results get the suffix _omegaX)")
    a = ap.parse_args()
    stem = "tsang_households_sampling" if a.sampling else "tsang_households"
    if a.omega_start is not None:
        stem += f"_omega{a.omega_start:g}"
    main(sampling=a.sampling, stem=stem, saem=None if a.omega_start is None else {"omega_start": a.omega_start})
