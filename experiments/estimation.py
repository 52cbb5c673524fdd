"""Experiment 7: does the population estimation recover the truth?

Virtual cohorts with a known population model (``make_virtual_cohort``), ``n_train`` subjects to fit and
``n_test`` new subjects to forecast, for several seeds:

- ``baccam2006``: an influenza challenge in 3 cohorts with different inocula (V0 = 0.75 / 0.25 / 2.0, a
  per-cohort fixed effect), an assay offset of +0.3 log10 in cohort 2, detection limit 0.5 log10, additive
  noise SD 0.35, log-normal random effects (SD 0.25 / 0.25 / 0.15 on beta / p / delta) and covariate effects
  of age, sex and a baseline marker on those three, plus two irrelevant covariates; typical values away
  from the model defaults the fit starts from.
- ``vaccine_asc``: prime + boost (boost day by cohort), assay offsets, LLOQ 1.5, noise SD 0.15, random
  effects on beta_S / beta_L / delta_S / delta_Ab, six covariate effects, three irrelevant covariates.

For each fit the table compares every estimated quantity with the truth on the twin's own scale (typical
values and cohort values as log ratios, omegas, covariate effects per stated unit, noise SD, assay offsets)
and checks whether the 90 % confidence interval covers it. Forecasts: each test subject's later
observations from its first k = 1, 2, 3 samples -- RMSE of the predictive median and coverage of 90 %
predictive intervals -- for the twin's MAP, the twin's encoder (amortised), the MAP under the TRUE
population model (the best any method can do from the same samples) and the truth's own covariates-only
prediction. Optionally the former estimator (amortised variational inference, Lightning) is fitted on the
same training subjects for comparison.

``main(**kwargs)`` runs it (small settings in tests); every (model, seed) result is cached in
``experiments/results/estimation/`` so an interrupted run resumes; the summary goes to
``experiments/results/estimation.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import RESULTS, peak_rss_mb  # noqa: F401  (puts the project root on sys.path)
from hybridtwin.checkpoint import load, read_card, save
from hybridtwin.data import CohortData
from hybridtwin.virtual import make_virtual_cohort
from hybridtwin.estimation import AmortiseConfig, SAEMConfig, estimate, identifiability
from hybridtwin.twin import HybridTwin, TwinConfig

Z90 = 1.6448536269514722

DESIGNS = {
    "baccam2006": dict(
        cohort=dict(population={"beta": 5.0e-5, "p": 0.03, "delta": 4.0}, omega={"beta": 0.25, "p": 0.25, "delta": 0.15},
                    cohort_parameters={"V0": (0.75, 0.25, 2.0)},
                    effects=(("beta", "age_decade", 0.2), ("p", "female", -0.2), ("delta", "log_marker", 0.25)),
                    nonlinear=False, n_noise_features=2, noise_sd={"log10_V": 0.35}, lloq={"log10_V": 0.5},
                    assay_scale=(1.0, 1.0, 1.0), assay_offset=(0.0, 0.3, 0.0)),
        twin=dict(model="baccam2006", fixed=("k", "c"), population=("V0",), cohort_effects=("V0",),
                  cohort_calibration=("log10_V",), calibration="offset", log10_covariates=("baseline_marker",),
                  covariate_scaling={"age": (50.0, 10.0), "baseline_marker": (2.0, 1.0)},
                  covariate_reference={"sex": "M"}),
    ),
    "vaccine_asc": dict(
        cohort=dict(population={"beta_S": 3000.0, "beta_L": 7.0, "delta_S": 0.3, "delta_Ab": 0.02},
                    nonlinear=False, assay_scale=(1.0, 1.0, 1.0), assay_offset=(0.0, 0.3, -0.2)),
        twin=dict(model="vaccine_asc", fixed=("delta_Ag", "K_Ag", "rho_M", "M_max", "alpha_S", "alpha_L", "delta_L"),
                  cohort_calibration=("log10_Ab",), calibration="offset", log10_covariates=("baseline_marker",),
                  covariate_scaling={"age": (50.0, 10.0), "baseline_marker": (2.0, 1.0)},
                  covariate_reference={"sex": "M"}, solver={"rtol": 1e-5, "atol": 1e-6, "max_steps": 4000}),
    ),
}
#: fits whose process stopped after saving the twin but before recording the fit time: wall time from the
#: file times (process start -> history written), recorded by hand
FIT_SECONDS_FROM_FILE_TIMES = {("baccam2006", 0): 956.0}
#: generator terms -> the twin's encoded features under the DESIGNS' covariate coding (linear effects only)
TERM_FEATURE = {"age_decade": "age", "female": "sex[F vs M]", "log_marker": "baseline_marker"}
#: design variants (``--variant``): overrides of ``make_virtual_cohort`` arguments for every model. ``equal_ages``
#: draws every cohort's ages from one range, so age is no longer confounded with the cohort (whose V0 and assay
#: offset are free): a check of whether the covariate misses of the default design come from that confounding
VARIANTS = {"default": {}, "equal_ages": {"age_ranges": ((18.0, 85.0),) * 3}}
COHORT_OVERRIDES: dict = {}


def _subset(data: CohortData, ids) -> CohortData:
    ids = set(ids)
    pick = lambda df: df[df["subject_id"].isin(ids)].reset_index(drop=True)  # noqa: E731
    return CohortData(pick(data.observations), pick(data.doses), pick(data.covariates), dict(data.meta))


def make_data(model: str, n_train: int, n_test: int, seed: int) -> tuple[CohortData, CohortData, CohortData]:
    data = make_virtual_cohort(model, n_subjects=n_train + n_test, n_cohorts=3, seed=seed,
                               **{**DESIGNS[model]["cohort"], **COHORT_OVERRIDES})
    ids = data.covariates["subject_id"].to_numpy()
    rng = np.random.default_rng(seed + 1000)
    test = set(rng.choice(ids, size=n_test, replace=False).tolist())
    return data, _subset(data, [i for i in ids if i not in test]), _subset(data, [i for i in ids if i in test])


def truth_vector(twin: HybridTwin, data: CohortData) -> dict:
    """The true population model in the twin's coordinates (same names as ``twin.uncertainty``)."""
    gt = data.meta["ground_truth"]
    space = twin.model.parameter_space
    truth = {}
    pop = {**space.defaults(), **gt["population"]}
    for name in twin.patient_names:
        truth[f"mu[{name}]"] = math.log(pop[name])
        truth[f"log_omega[{name}]"] = math.log(gt["omega"][name]) if gt["omega"].get(name, 0) > 0 else -math.inf
        for cov in twin.covariate_names:
            truth[f"beta[{name}, {cov}]"] = 0.0
    for _, (param, term, coef) in gt["effects"].iterrows():
        truth[f"beta[{param}, {TERM_FEATURE[term]}]"] = float(coef)
    cohorts = twin.cohort_names
    for param, by_cohort in gt.get("cohort_parameters", {}).items():
        ref = by_cohort[cohorts[0]]
        if param in twin.population_names:
            truth[f"mu_population[{param}]"] = math.log(ref)
        for c in cohorts[1:]:
            truth[f"cohort_shift[{param}, {c}]"] = math.log(by_cohort[c] / ref)
    for o in twin.observation.observables:
        truth[f"log_sigma_add[{o}]"] = math.log(gt["noise"]["sd"][o])
        assay = gt["assay"]
        for c in cohorts[1:]:
            row = assay[(assay.cohort == c) & (assay.observable == o)].iloc[0]
            truth[f"offset[{o}, {c}]"] = float(row["offset"])
            truth[f"log_scale[{o}, {c}]"] = math.log(row["scale"])
    return truth


def truth_twin(twin: HybridTwin, data: CohortData) -> HybridTwin:
    """A copy of ``twin`` holding the true population model (MAP under it is the forecasting benchmark)."""
    oracle = HybridTwin.from_card(twin.card())
    oracle.load_state_dict(twin.state_dict())
    truth = truth_vector(twin, data)
    from hybridtwin.estimation.fisher import _tensor, population_columns

    with torch.no_grad():
        oracle.beta.zero_()
        for col in population_columns(oracle):
            if col["name"] in truth:
                _tensor(oracle, col["tensor"])[col["index"]] = truth[col["name"]]
    oracle.uncertainty = None
    return oracle.eval()


def compare_estimates(twin: HybridTwin, truth: dict) -> pd.DataFrame:
    """Every estimated quantity vs the truth (unconstrained scale), with its 90 % CI and coverage."""
    u = twin.uncertainty
    se = np.sqrt(np.diag(np.asarray(u["cov"], dtype=float)))
    rows = []
    for name, est, s in zip(u["names"], u["estimate"], se):
        if name not in truth:
            continue
        t = truth[name]
        kind = name.split("[", 1)[0]
        irrelevant = kind == "beta" and t == 0.0
        rows.append(dict(quantity=name, kind=kind, truth=t, estimate=est, se=s, error=est - t,
                         covered=bool(abs(est - t) <= Z90 * s) if np.isfinite(s) else False, irrelevant=irrelevant))
    return pd.DataFrame(rows)


def combinations(twin: HybridTwin, truth: dict, threshold: float = 0.8) -> list[dict]:
    """The pairs of correlated estimates (|r| > threshold) as the combination the data inform best
    (``correlation_table``), against the same combination of the true values, with 90 % coverage."""
    from hybridtwin.estimation import correlation_table

    rows = []
    for _, c in correlation_table(twin, threshold=threshold).iterrows():
        if c["first"] in truth and c["second"] in truth and math.isfinite(truth[c["first"]] + truth[c["second"]]):
            t = truth[c["first"]] + c["weight"] * truth[c["second"]]
            rows.append(dict(combination=c["combination"], correlation=c["correlation"], truth=t, estimate=c["estimate"],
                             se=c["se"], se_first=c["se_first"], se_second=c["se_second"], error=c["estimate"] - t,
                             covered=bool(c["lower"] <= t <= c["upper"])))
    return rows


def first_k(obs: pd.DataFrame, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    obs = obs.sort_values(["subject_id", "time"], kind="stable")
    rank = obs.groupby("subject_id").cumcount()
    return obs[rank < k].reset_index(drop=True), obs[rank >= k].reset_index(drop=True)


def forecast(twin: HybridTwin, data: CohortData, k: int, method: str, seed: int = 0) -> dict:
    early, late = first_k(data.observations, k)
    cohort = data.observations.groupby("subject_id")["cohort"].first()
    cov = data.covariates.assign(cohort=data.covariates["subject_id"].map(cohort).to_numpy())
    t0 = time.perf_counter()
    pred, _ = twin.predict(cov, early, data.doses, times=late[["subject_id", "time", "observable"]], method=method,
                           n_samples=200, seed=seed)
    seconds = time.perf_counter() - t0
    m = late.merge(pred, on=["subject_id", "time", "observable"], how="left")
    unc = m[~m["censored"]]
    err = unc["median"] - unc["value"]
    inside = (unc["value"] >= unc["lower"]) & (unc["value"] <= unc["upper"])
    return {"rmse": float(np.sqrt(np.mean(err**2))), "coverage": float(inside.mean()), "n_later": int(len(unc)),
            "seconds": seconds}


FORECAST_ROUTES = (("twin MAP", "map"), ("twin encoder", "encoder"), ("twin encoder+IS", "encoder_is"))


def forecasts(twin: HybridTwin, oracle: HybridTwin, test: CohortData, ks, seed: int, routes=FORECAST_ROUTES) -> list:
    """Forecast rows of the fitted twin by each route and of the MAP under the true population model."""
    fc = []
    for k in ks:
        for label, method in routes:
            fc.append(dict(k=k, method=label, **forecast(twin, test, k, method, seed)))
        fc.append(dict(k=k, method="truth MAP", **forecast(oracle, test, k, "map", seed)))
    return fc


def add_missing_routes(cache: Path, ks=(1, 2, 3)) -> None:
    """Add forecast routes that a cached fit lacks, from its saved twin (no refit)."""
    for path in sorted(cache.glob("*_seed*.json")):
        if path.stem.endswith("_vi"):
            continue
        r = json.loads(path.read_text())
        have = {f["method"] for f in r["forecast"]}
        missing = tuple(rt for rt in FORECAST_ROUTES if rt[0] not in have)
        twin_dir = cache / f"{r['model']}_seed{r['seed']}_twin"
        if not missing or not twin_dir.is_dir():
            continue
        twin = load(twin_dir)
        _, _, test = make_data(r["model"], r["n_train"], r["n_test"], r["seed"])
        for k in ks:
            for label, method in missing:
                r["forecast"].append(dict(k=k, method=label, **forecast(twin, test, k, method, r["seed"])))
        path.write_text(json.dumps(r, indent=1, default=float))


def run_vi(model: str, train: CohortData, seed: int, out: Path, max_epochs: int) -> tuple[HybridTwin, float]:
    """The former estimator (amortised VI through Lightning) on the same training subjects."""
    from _common import train_twin

    folder = out / f"vi_data_{model}_{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    train.observations.to_csv(folder / "observations.csv", index=False)
    train.doses.to_csv(folder / "doses.csv", index=False)
    train.covariates.to_csv(folder / "covariates.csv", index=False)
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in DESIGNS[model]["twin"].items()}
    twin, _, seconds, _, _ = train_twin(f"vi_{model}_{seed}", {"source": "csv", "path": str(folder),
                                                               "fractions": [0.9, 0.1], "split_seed": seed},
                                        {**cfg, "n_samples": 2}, {"max_epochs": max_epochs, "batch_size": 64,
                                                                  "lr": 0.01, "patience": 10, "seed": seed}, out)
    return twin, seconds


def vi_estimates(twin: HybridTwin, truth: dict) -> pd.DataFrame:
    from hybridtwin.estimation.fisher import estimate_vector, population_columns

    cols = population_columns(twin)
    est = estimate_vector(twin, cols).tolist()
    return pd.DataFrame([dict(quantity=c["name"], truth=truth[c["name"]], estimate=e, error=e - truth[c["name"]])
                         for c, e in zip(cols, est) if c["name"] in truth])


def _convergence_figure(history: pd.DataFrame, truth: dict, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    from hybridtwin.diagnostics import plot_convergence

    lines = {}
    for name, value in truth.items():
        inner = name[name.index("[") + 1:-1]
        if name.startswith("mu[") or name.startswith("mu_population["):
            lines[f"typical[{inner}]"] = math.exp(value)
        elif name.startswith("log_omega["):
            lines[f"omega[{inner}]"] = math.exp(value)
        elif name.startswith("log_sigma_add["):
            lines[f"sigma_additive[{inner}]"] = math.exp(value)
        lines[f"est:{name}"] = value
    fig = plot_convergence(history, lines, title=f"SAEM convergence: {title} (dashed: truth)")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_one(model: str, seed: int, n_train: int, n_test: int, saem: dict, amort: dict, ks, vi_epochs: int,
            cache: Path) -> dict:
    path = cache / f"{model}_seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    torch.manual_seed(seed)
    data, train, test = make_data(model, n_train, n_test, seed)
    twin_dir = cache / f"{model}_seed{seed}_twin"
    if twin_dir.is_dir():  # fitted before and interrupted afterwards: finish from the saved twin, no refit
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a twin saved before card protection
            twin = load(twin_dir)
        done = read_card(twin_dir)["metrics"]
        fit_seconds = done.get("fit_seconds") or FIT_SECONDS_FROM_FILE_TIMES.get((model, seed), math.nan)
        caught_messages = done.get("warnings", [])
        amortisation_nll = done.get("amortisation_final_val_nll", math.nan)
        diagnostics = [d["message"] for d in twin.diagnostics]
    else:
        twin = HybridTwin.from_data(TwinConfig(**DESIGNS[model]["twin"]), train)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = estimate(twin, train, SAEMConfig(seed=seed, **saem), AmortiseConfig(seed=seed, **amort))
        fit_seconds = time.perf_counter() - t0
        caught_messages = sorted({str(w.message)[:200] for w in caught})
        amortisation_nll = float(fit.amortisation["val_nll"].min())
        diagnostics = [d["message"] for d in fit.diagnostics]
        # saved at once, so forecasts added later (or a crash after this point) need no refit
        save(twin, twin_dir, metrics={"fit_seconds": fit_seconds, "warnings": caught_messages,
                                      "amortisation_final_val_nll": amortisation_nll})
        fit.history.to_csv(cache / f"{model}_seed{seed}_history.csv", index=False)
    history = pd.read_csv(cache / f"{model}_seed{seed}_history.csv")
    truth = truth_vector(twin, data)
    _convergence_figure(history, truth, cache / f"{model}_seed{seed}_convergence.png", f"{model}, seed {seed}")
    table = compare_estimates(twin, truth)
    ident = identifiability(twin, train)
    oracle = truth_twin(twin, data)
    fc = forecasts(twin, oracle, test, ks, seed)
    result = {"model": model, "seed": seed, "n_train": len(train.covariates), "n_test": len(test.covariates),
              "fit_seconds": fit_seconds,
              "estimates": table.to_dict(orient="records"), "forecast": fc,
              "combinations": combinations(twin, truth),
              "identifiability": ident.to_dict(orient="records"),
              "diagnostics": diagnostics, "warnings": caught_messages,
              "amortisation_final_val_nll": amortisation_nll,
              "population_table": twin.population_table().to_dict(orient="records")}
    if vi_epochs:
        vi_path = cache / f"{model}_seed{seed}_vi.json"  # cached apart: the VI fit does not depend on SAEM settings
        if vi_path.is_file():
            result["vi"] = json.loads(vi_path.read_text())
        else:
            vi, vi_seconds = run_vi(model, train, seed, cache, vi_epochs)
            vt = vi_estimates(vi, truth)
            result["vi"] = {"seconds": vi_seconds, "estimates": vt.to_dict(orient="records"),
                            "forecast": [dict(k=k, method="VI encoder", **forecast(vi, test, k, "encoder", seed))
                                         for k in ks] + [dict(k=k, method="VI MAP", **forecast(vi, test, k, "map", seed))
                                                         for k in ks]}
            vi_path.write_text(json.dumps(result["vi"], indent=1, default=float))
    path.write_text(json.dumps(result, indent=1, default=float))
    return result


def summarise(results: list[dict]) -> tuple[dict, str]:
    """Pooled acceptance figures and the markdown report."""
    lines = ["# Experiment 7: population estimation vs the truth", ""]
    summary = {"per_fit": []}
    all_est = []
    for r in results:
        est = pd.DataFrame(r["estimates"])
        est["model"], est["seed"] = r["model"], r["seed"]
        all_est.append(est)
        sig = est[est.quantity.str.startswith("log_sigma_add")]
        om = est[est.kind == "log_omega"]
        eff = est[(est.kind == "beta") & ~est.irrelevant]
        ident = pd.DataFrame(r["identifiability"])
        informed = set(ident.loc[ident.informed, "parameter"])
        shrunk = sorted(m.split(":")[0] for m in r["diagnostics"] if "eta-shrinkage" in m)
        om_id = om[~om.quantity.str[len("log_omega["):-1].isin(shrunk)]
        row = {"model": r["model"], "seed": r["seed"], "fit_minutes": r["fit_seconds"] / 60,
               "high_shrinkage": shrunk,
               "omega_rel_errors_identifiable": {q: float(np.exp(e - t) - 1)
                                                 for q, e, t in zip(om_id.quantity, om_id.estimate, om_id.truth)},
               "sigma_rel_error": float(np.exp(sig.estimate - sig.truth).iloc[0] - 1) if len(sig) else math.nan,
               "omega_rel_errors": {q: float(np.exp(e - t) - 1) for q, e, t in zip(om.quantity, om.estimate, om.truth)},
               "effect_errors": {q: float(e) for q, e in zip(eff.quantity, eff.error)},
               "effect_signs_right": bool((np.sign(eff.estimate) == np.sign(eff.truth)).all()),
               "coverage_true_values": float(est[~est.irrelevant].covered.mean()),
               "coverage_irrelevant_zero": float(est[est.irrelevant].covered.mean()) if est.irrelevant.any() else math.nan,
               "not_informed_by_design": sorted(set(ident.parameter) - informed)}
        fc = pd.DataFrame(r["forecast"])
        for k, g in fc.groupby("k"):
            rm = dict(zip(g.method, g.rmse))
            cov = dict(zip(g.method, g.coverage))
            row[f"k{k}"] = {"rmse": rm, "coverage": cov, "twin_map_vs_truth": rm["twin MAP"] / rm["truth MAP"],
                            "encoder_vs_truth": rm["twin encoder"] / rm["truth MAP"],
                            "encoder_vs_twin_map": rm["twin encoder"] / rm["twin MAP"]}
            if "twin encoder+IS" in rm:
                row[f"k{k}"]["encoder_is_vs_twin_map"] = rm["twin encoder+IS"] / rm["twin MAP"]
        summary["per_fit"].append(row)
    combos = [c for r in results for c in r.get("combinations", [])]
    summary["combinations_covered"] = float(np.mean([c["covered"] for c in combos])) if combos else math.nan
    summary["combinations_worst_error"] = max((abs(c["error"]) for c in combos), default=math.nan)
    est = pd.concat(all_est, ignore_index=True)
    summary["coverage_pooled"] = float(est[~est.irrelevant].covered.mean())
    summary["coverage_irrelevant_pooled"] = float(est[est.irrelevant].covered.mean())
    lines += ["## Acceptance summary (90 % CIs; errors on the twin's unconstrained scale)", "",
              "| model | seed | fit min | sigma rel. err | worst omega rel. err (shrinkage <= 50 %) | eta-shrinkage > 50 % | worst effect err | signs | CI coverage (truth) | CI covers 0 (irrelevant) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for row in summary["per_fit"]:
        wo = max(row["omega_rel_errors_identifiable"].items(), key=lambda kv: abs(kv[1]))
        we = max(row["effect_errors"].items(), key=lambda kv: abs(kv[1])) if row["effect_errors"] else ("-", math.nan)
        lines.append(f"| {row['model']} | {row['seed']} | {row['fit_minutes']:.1f} | {row['sigma_rel_error']:+.1%} | "
                     f"{wo[1]:+.1%} ({wo[0]}) | {', '.join(row['high_shrinkage']) or '-'} | {we[1]:+.3f} ({we[0]}) | "
                     f"{row['effect_signs_right']} | "
                     f"{row['coverage_true_values']:.2f} | {row['coverage_irrelevant_zero']:.2f} |")
    lines += ["", f"Pooled over fits: 90 % CIs cover the true value in {summary['coverage_pooled']:.1%} of cases; "
              f"irrelevant covariates' CIs cover 0 in {summary['coverage_irrelevant_pooled']:.1%}."
              + (f" Pairs of estimates correlated beyond 0.8, read as the combination the data inform best: "
                 f"{len(combos)} combinations, 90 % CIs cover the truth in {summary['combinations_covered']:.1%}, "
                 f"worst error {summary['combinations_worst_error']:.3f}." if combos else ""), "",
              "## Forecasts of later samples from the first k (RMSE of the predictive median; 90 % interval coverage)",
              "", "| model | seed | k | truth MAP | twin MAP (ratio) | twin encoder (ratio to truth; to twin MAP) | "
              "encoder+IS (ratio to twin MAP) | coverage MAP / encoder / encoder+IS |",
              "|---|---|---|---|---|---|---|---|"]
    for row in summary["per_fit"]:
        for key in sorted(k for k in row if k.startswith("k")):
            f = row[key]
            lines.append(f"| {row['model']} | {row['seed']} | {key[1:]} | {f['rmse']['truth MAP']:.3f} | "
                         f"{f['rmse']['twin MAP']:.3f} ({f['twin_map_vs_truth']:.3f}) | {f['rmse']['twin encoder']:.3f} "
                         f"({f['encoder_vs_truth']:.3f}; {f['encoder_vs_twin_map']:.3f}) | "
                         + (f"{f['rmse']['twin encoder+IS']:.3f} ({f['encoder_is_vs_twin_map']:.3f}) | "
                            if "encoder_is_vs_twin_map" in f else "- | ")
                         + f"{f['coverage']['twin MAP']:.3f} / {f['coverage']['twin encoder']:.3f} / "
                         + (f"{f['coverage']['twin encoder+IS']:.3f} |" if "twin encoder+IS" in f["coverage"] else "- |"))
    lines += ["", "## Estimates vs truth (every fit)", ""]
    for r in results:
        est = pd.DataFrame(r["estimates"])
        lines += [f"### {r['model']}, seed {r['seed']} ({r['n_train']} subjects fitted, {r['n_test']} forecast)", "",
                  "| quantity | truth | estimate | SE | covered |", "|---|---|---|---|---|"]
        for _, e in est.iterrows():
            lines.append(f"| {e.quantity} | {e.truth:.4g} | {e.estimate:.4g} | {e.se:.3g} | {'yes' if e.covered else 'NO'} |")
        if r.get("combinations"):
            lines += ["", "Correlated estimates (|r| > 0.8) as the combination the data inform best, a + w b "
                          "(`correlation_table`), against the same combination of the true values:", "",
                      "| combination | r | truth | estimate | SE (alone: a, b) | covered |", "|---|---|---|---|---|---|"]
            for c in r["combinations"]:
                lines.append(f"| {c['combination']} | {c['correlation']:.2f} | {c['truth']:.4g} | {c['estimate']:.4g} | "
                             f"{c['se']:.3g} ({c['se_first']:.3g}, {c['se_second']:.3g}) | {'yes' if c['covered'] else 'NO'} |")
        ident = pd.DataFrame(r["identifiability"])
        lines += ["", "Design identifiability (SE of log typical value if estimated): " + ", ".join(
            f"{p} {s:.2g}{'' if inf else ' (not informed)'}" for p, s, inf in zip(ident.parameter, ident.se_log, ident.informed)),
            "", "Degeneracy findings: " + ("; ".join(r["diagnostics"]) if r["diagnostics"] else "none"), ""]
        if "vi" in r:
            vt = pd.DataFrame(r["vi"]["estimates"])
            lines += ["Former estimator (amortised VI, Lightning, same training subjects, "
                      f"{r['vi']['seconds'] / 60:.1f} min): |error| of omegas "
                      + ", ".join(f"{q} {e:+.3f}" for q, e in zip(vt.quantity, vt.error) if q.startswith("log_omega"))
                      + "; noise " + ", ".join(f"{q} {e:+.3f}" for q, e in zip(vt.quantity, vt.error)
                                              if q.startswith("log_sigma")), ""]
            vf = pd.DataFrame(r["vi"]["forecast"])
            lines += ["VI forecasts (RMSE): " + ", ".join(f"{m} k={k}: {v:.3f}" for m, k, v in
                                                        zip(vf.method, vf.k, vf.rmse)), ""]
    return summary, "\n".join(lines) + "\n"


def main(models=("baccam2006", "vaccine_asc"), seeds=(0, 1, 2), n_train: int = 600, n_test: int = 200,
         saem: dict | None = None, amortise: dict | None = None, ks=(1, 2, 3), vi_epochs: int = 0,
         out: Path | str = RESULTS, write: bool = True, variant: str = "default") -> dict:
    out = Path(out)
    stem = _use_variant(variant)
    cache = out / stem
    cache.mkdir(parents=True, exist_ok=True)
    saem = {"progress": False, **(saem or {})}
    amortise = {"progress": False, **(amortise or {})}
    torch.set_num_threads(1)  # small batched ops: one thread is faster and does not stall on shared CPUs
    results = [run_one(m, s, n_train, n_test, saem, amortise, ks, vi_epochs if s == seeds[0] else 0, cache)
               for m in models for s in seeds]
    summary, report = summarise(results)
    if write:
        _write(out, stem, summary, results, report)
    return {"summary": summary, "results": results, "report": report}


def _use_variant(variant: str) -> str:
    """Set the design variant's overrides; the stem of its cache folder and report."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown design variant {variant!r}; known: {sorted(VARIANTS)}")
    COHORT_OVERRIDES.clear()
    COHORT_OVERRIDES.update(VARIANTS[variant])
    return "estimation" if variant == "default" else f"estimation_{variant}"


def _write(out: Path, stem: str, summary: dict, results: list, report: str) -> None:
    if stem != "estimation":
        report = report.replace("# Experiment 7: population estimation vs the truth",
                                f"# Experiment 7, design variant {stem[len('estimation_'):]!r}: "
                                f"{VARIANTS[stem[len('estimation_'):]]}", 1)
    (out / f"{stem}.json").write_text(json.dumps({"summary": summary, "results": results}, indent=1, default=float))
    (out / f"{stem}.md").write_text(report)


def summarise_cached(out: Path | str = RESULTS, variant: str = "default") -> dict:
    """Rebuild ``estimation.{json,md}`` (or a variant's) from every fit cached in its folder (no fitting)."""
    out = Path(out)
    stem = _use_variant(variant)
    results = [json.loads(p.read_text()) for p in sorted((out / stem).glob("*_seed*.json"))
               if not p.stem.endswith("_vi")]
    if not results:
        raise ValueError(f"no cached fits in {out / stem}: run main() first")
    for r in results:  # fits cached before the combinations were recorded: from the saved twin, no refit
        twin_dir = out / stem / f"{r['model']}_seed{r['seed']}_twin"
        if "combinations" not in r and twin_dir.is_dir():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                twin = load(twin_dir)
            r["combinations"] = combinations(twin, {e["quantity"]: e["truth"] for e in r["estimates"]})
            (out / stem / f"{r['model']}_seed{r['seed']}.json").write_text(json.dumps(r, indent=1, default=float))
    summary, report = summarise(results)
    _write(out, stem, summary, results, report)
    return {"summary": summary, "results": results, "report": report}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["baccam2006", "vaccine_asc"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--vi-epochs", type=int, default=0, help="also fit the former VI estimator on the first seed")
    ap.add_argument("--summarise", action="store_true", help="only rebuild the report from the cached fits")
    ap.add_argument("--add-routes", action="store_true",
                    help="add forecast routes missing from cached fits (from their saved twins), then summarise")
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="default",
                    help="design variant (own cache folder and report estimation_<variant>.md)")
    a = ap.parse_args()
    if a.add_routes:
        add_missing_routes(RESULTS / _use_variant(a.variant))
    res = (summarise_cached(variant=a.variant) if a.summarise or a.add_routes else
           main(models=tuple(a.models), seeds=tuple(a.seeds), n_train=a.n_train, n_test=a.n_test,
                vi_epochs=a.vi_epochs, variant=a.variant))
    print(res["report"])
