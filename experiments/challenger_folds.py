"""Real-data issue, section 2: leave-studies-out on ``challenger2022`` (SARS-CoV-2, 605 patients, 17 studies).

The 17 studies are grouped into ``n_folds`` folds of similar size (largest study first, each to the currently
smallest fold). For each fold the methods below are trained on the other folds' patients and predict the
held-out patients' later samples from their covariates (age) and their first ``k`` samples (k = 1, 2). All
methods are scored on the same rows: every held-out row after a patient's first ``k``.

Methods (all trained on the same patients):

- **twin MAP**: the mechanistic twin of ``estimation_real.py`` (``sarscov2_cd8``, per-patient time offset
  with the incubation-period prior, M3 likelihood at each row's LOD) estimated by SAEM, then each held-out
  patient's MAP + Laplace posterior from the first k samples; posterior-predictive intervals.
- **population only** (baseline i): the same twin, no personalisation (the population distribution given age).
- **gradient boosting** (baseline iii): scikit-learn ``HistGradientBoostingRegressor`` (quantile loss at 5, 25,
  50, 75, 95 %) on (age, age missing, day since onset) -> log10 copies/ml; censored rows enter at their LOD.
- **LOCF** (baseline v): the last of the first k values carried forward; intervals from the training
  patients' empirical quantiles of (later value - last early value) by gap (<= 3, 3-7, > 7 days).

Scores per fold and pooled: RMSE of the median on quantified rows, 50 % and 90 % interval coverage on
quantified rows, and a censoring-aware log-likelihood per row (each method's predictive distribution taken as
normal with the median as mean and the 90 % interval's width / 3.29 as SD; a censored row scores
``log P(y < LOD)``).

Not here yet (open in the issue): the neural closure, the encoder-without-closure baseline (ii) and the
per-patient least-squares baseline (iv).

Run ``python experiments/challenger_folds.py`` (about 30 min on 2 cores with the default SAEM settings here);
results: ``experiments/results/challenger_folds.{md,json}``; each fold is cached and reused on a rerun.
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
from scipy.stats import norm

from _common import RESULTS
from estimation_real import DATA, TWIN_OFFSET, challenger_data
from hybridtwin.data import CohortData
from hybridtwin.estimation import SAEMConfig, estimate
from hybridtwin.personalise import Posterior, _tables, fit_map, posterior
from hybridtwin.twin import HybridTwin, TwinConfig

Z90, Z50 = norm.ppf(0.95), norm.ppf(0.75)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: fewer iterations than the default (5 fits instead of 1); no standard errors, no encoder amortisation
FOLD_SAEM = dict(n_explore=80, n_smooth=40, n_fisher=0, init_steps=30)


def study_folds(data: CohortData, n_folds: int = 5) -> list[list[str]]:
    """Studies (column ``study``) grouped into ``n_folds`` folds of similar patient counts (greedy, largest first)."""
    sizes = data.observations.groupby("study")["subject_id"].nunique().sort_values(ascending=False, kind="stable")
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    load = np.zeros(n_folds)
    for study, n in sizes.items():
        i = int(np.argmin(load))
        folds[i].append(study)
        load[i] += n
    return [sorted(f) for f in folds]


def split_early(obs: pd.DataFrame, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each patient's first ``k`` rows (by time) and the rest."""
    obs = obs.sort_values(["subject_id", "time"], kind="stable")
    rank = obs.groupby("subject_id").cumcount()
    return obs[rank < k].reset_index(drop=True), obs[rank >= k].reset_index(drop=True)


def _pooled_cohort(data: CohortData) -> CohortData:
    """One cohort label for everyone: held-out studies are new to the twin (the study is kept in ``study``)."""
    obs = data.observations.assign(study=data.observations["cohort"], cohort="all")
    return CohortData(obs, data.doses, data.covariates, dict(data.meta))


def _features(cov: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    age = rows["subject_id"].map(cov.set_index("subject_id")["age"])
    return np.column_stack([age.fillna(age.mean() if age.notna().any() else 50.0), age.isna(), rows["time"]])


def gradient_boosting(train: pd.DataFrame, cov: pd.DataFrame, target: pd.DataFrame, seed: int) -> pd.DataFrame:
    from sklearn.ensemble import HistGradientBoostingRegressor

    X, y = _features(cov, train), train["value"].to_numpy()
    out = target[["subject_id", "time", "observable"]].copy()
    Xt = _features(cov, target)
    for q in QUANTILES:
        m = HistGradientBoostingRegressor(loss="quantile", quantile=q, max_iter=200, random_state=seed).fit(X, y)
        out[f"q{q}"] = m.predict(Xt)
    return _from_quantiles(out)


def _from_quantiles(out: pd.DataFrame) -> pd.DataFrame:
    q = np.sort(out[[f"q{v}" for v in QUANTILES]].to_numpy(), axis=1)  # quantile crossing: sort
    return out.assign(median=q[:, 2], lower50=q[:, 1], upper50=q[:, 3], lower=q[:, 0], upper=q[:, 4])[
        ["subject_id", "time", "observable", "median", "lower50", "upper50", "lower", "upper"]]


GAP_EDGES = (3.0, 7.0)


def locf(train_obs: pd.DataFrame, early: pd.DataFrame, late: pd.DataFrame, k: int) -> pd.DataFrame:
    """Last early value carried forward, intervals from training patients' changes by gap."""
    tr_early, tr_late = split_early(train_obs, k)
    last_tr = tr_early.groupby("subject_id")[["time", "value"]].last().add_suffix("_last")
    d = tr_late.join(last_tr, on="subject_id").dropna(subset=["value_last"])
    d = d.assign(change=d["value"] - d["value_last"], gap=np.digitize(d["time"] - d["time_last"], GAP_EDGES))
    qs = d.groupby("gap")["change"].quantile(list(QUANTILES)).unstack()
    pooled = d["change"].quantile(list(QUANTILES))
    qs = qs.reindex(range(len(GAP_EDGES) + 1)).fillna(pooled)  # a gap class without training pairs: all gaps
    last = early.groupby("subject_id")[["time", "value"]].last().add_suffix("_last")
    out = late[["subject_id", "time", "observable"]].join(last, on="subject_id")
    gap = np.digitize(out["time"] - out["time_last"], GAP_EDGES)
    for q in QUANTILES:
        out[f"q{q}"] = out["value_last"].to_numpy() + qs.reindex(gap)[q].to_numpy()
    return _from_quantiles(out)


def route_posterior(twin: HybridTwin, cov: pd.DataFrame, shown: pd.DataFrame | None, method: str) -> Posterior:
    """The patients' posterior by one personalisation route, computed once (then reused for every level)."""
    ds, _ = _tables(twin, cov, shown, None)
    return posterior(twin, ds.batch(), method)


def interval_rows(twin: HybridTwin, cov: pd.DataFrame, shown: pd.DataFrame | None, rows: pd.DataFrame, post: Posterior,
                  seed: int, n_samples: int = 400) -> pd.DataFrame:
    """Median, 90 % and 50 % predictive intervals at ``rows`` (subject_id, time, observable) from ``post``."""
    keys = ["subject_id", "time", "observable"]
    p90, _ = twin.predict(cov, shown, None, times=rows[keys], given=post, n_samples=n_samples, level=0.90, seed=seed)
    p50, _ = twin.predict(cov, shown, None, times=rows[keys], given=post, n_samples=n_samples, level=0.50, seed=seed)
    return p90[keys + ["median", "lower", "upper"]].merge(
        p50[keys + ["lower", "upper"]].rename(columns={"lower": "lower50", "upper": "upper50"}), on=keys)


def _twin_rows(twin: HybridTwin, cov: pd.DataFrame, early: pd.DataFrame | None, late: pd.DataFrame,
               personalise: bool, seed: int) -> pd.DataFrame:
    ds, ids = _tables(twin, cov, early if personalise else None, None)
    batch = ds.batch()
    if personalise:
        post = fit_map(twin, batch)
    else:
        with torch.no_grad():
            mean, sd = twin.prior(batch.covariates)
        post = Posterior(list(ids), mean, sd)
    rows = late[["subject_id", "time", "observable"]]
    m = interval_rows(twin, cov, early, rows, post, seed)
    return rows.merge(m, on=["subject_id", "time", "observable"], how="left")


def score(pred: pd.DataFrame, late: pd.DataFrame) -> dict:
    m = late.merge(pred, on=["subject_id", "time", "observable"], how="left", validate="one_to_one")
    if m["median"].isna().any():
        raise RuntimeError(f"{int(m['median'].isna().sum())} rows without a prediction")
    sd = np.maximum((m["upper"] - m["lower"]) / (2 * Z90), 1e-3)
    cens = m["censored"].to_numpy()
    ll = np.where(cens, norm.logcdf((m["lloq"] - m["median"]) / sd), norm.logpdf(m["value"], m["median"], sd))
    q = m[~cens]
    return {"n_rows": int(len(m)), "n_quantified": int(len(q)),
            "rmse": float(np.sqrt(np.mean((q["median"] - q["value"]) ** 2))),
            "coverage50": float(((q["value"] >= q["lower50"]) & (q["value"] <= q["upper50"])).mean()),
            "coverage90": float(((q["value"] >= q["lower"]) & (q["value"] <= q["upper"])).mean()),
            "loglik_per_row": float(np.mean(ll))}


def run_fold(data: CohortData, studies: list[str], fold: int, ks, seed: int, saem: dict, cache: Path) -> list[dict]:
    path = cache / f"fold{fold}.json"
    if path.is_file():
        return json.loads(path.read_text())
    obs = data.observations
    test_ids = sorted(obs.loc[obs["study"].isin(studies), "subject_id"].unique())
    train = data.subset([s for s in data.subject_ids if s not in set(test_ids)])
    test = data.subset(test_ids)
    torch.manual_seed(seed)
    twin = HybridTwin.from_data(TwinConfig(**TWIN_OFFSET), train)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # findings are recorded below
        fit = estimate(twin, train, SAEMConfig(seed=seed, progress=False, **saem), amortisation=False)
    fit_seconds = time.perf_counter() - t0
    print(f"fold {fold}: {len(train.subject_ids)} training patients fitted in {fit_seconds / 60:.1f} min", flush=True)
    twin.eval()
    cov = test.covariates
    rows = []
    for k in ks:
        early, late = split_early(test.observations, k)
        late = late[late["subject_id"].isin(set(early["subject_id"]))]
        if late.empty:
            continue
        methods = {"twin MAP": lambda: _twin_rows(twin, cov, early, late, True, seed),
                   "population only": lambda: _twin_rows(twin, cov, None, late, False, seed),
                   "gradient boosting": lambda: gradient_boosting(train.observations,
                                                                  pd.concat([train.covariates, cov]), late, seed),
                   "LOCF": lambda: locf(train.observations, early, late, k)}
        for name, method in methods.items():
            t1 = time.perf_counter()
            pred = method()
            rows.append({"fold": fold, "studies": studies, "k": k, "method": name, "n_train": len(train.subject_ids),
                         "n_test": len(test_ids), "fit_seconds": fit_seconds,
                         "predict_seconds": time.perf_counter() - t1, **score(pred, late)})
            print(f"fold {fold} k={k} {name}: {rows[-1]['predict_seconds']:.1f} s, RMSE {rows[-1]['rmse']:.2f}",
                  flush=True)
    rows.append({"fold": fold, "studies": studies, "method": "_fit", "noise_sd": float(
        twin.observation.log_sigma_add.detach().exp()[0]), "diagnostics": [d["message"] for d in fit.diagnostics]})
    path.write_text(json.dumps(rows, indent=1))
    return rows


def summarise(rows: list[dict]) -> str:
    df = pd.DataFrame([r for r in rows if r["method"] != "_fit"])
    fits = [r for r in rows if r["method"] == "_fit"]
    lines = ["# Leave-studies-out on challenger2022 (SARS-CoV-2 viral load, 17 studies)", "",
             "Held-out patients' later samples predicted from age and their first k samples; every method is "
             "scored on the same rows (quantified rows for RMSE and coverage; all rows, censored ones by "
             "P(y < LOD), for the log-likelihood). See the script's docstring for the methods.", ""]
    for k, g in df.groupby("k"):
        lines += [f"## k = {k}", "", "| method | RMSE (pooled) | 50 % coverage | 90 % coverage | log-lik / row | "
                  "RMSE per fold |", "|---|---|---|---|---|---|"]
        for method, h in g.groupby("method", sort=False):
            w = h["n_quantified"]
            pooled = lambda c: float(np.average(h[c], weights=w))  # noqa: E731
            rmse = math.sqrt(float(np.average(h["rmse"] ** 2, weights=w)))
            llr = float(np.average(h["loglik_per_row"], weights=h["n_rows"]))
            lines.append(f"| {method} | {rmse:.2f} | {pooled('coverage50'):.2f} | {pooled('coverage90'):.2f} | "
                         f"{llr:.2f} | " + " / ".join(f"{v:.2f}" for v in h["rmse"]) + " |")
        lines.append("")
    lines += ["## Folds", "", "| fold | held-out studies | patients held out | rows scored (k=1) | twin fit min | noise SD |",
              "|---|---|---|---|---|---|"]
    for f in fits:
        h = df[(df["fold"] == f["fold"]) & (df["k"] == df["k"].min())]
        lines.append(f"| {f['fold']} | {', '.join(f['studies'])} | {int(h['n_test'].iloc[0])} | "
                     f"{int(h['n_rows'].iloc[0])} | {h['fit_seconds'].iloc[0] / 60:.1f} | {f['noise_sd']:.2f} |")
    return "\n".join(lines) + "\n"


def main(n_folds: int = 5, ks=(1, 2), seed: int = 0, saem: dict | None = None, out: Path | str = RESULTS,
         path=DATA, n_subjects: int | None = None, stem: str = "challenger_folds") -> dict:
    out = Path(out)
    cache = out / stem
    cache.mkdir(parents=True, exist_ok=True)
    data = _pooled_cohort(challenger_data(path, time_offset=True))
    if n_subjects:
        data = data.subset(list(data.subject_ids)[:n_subjects])
    folds = study_folds(data, n_folds)
    rows = []
    for i, studies in enumerate(folds):
        rows += run_fold(data, studies, i, ks, seed, {**FOLD_SAEM, **(saem or {})}, cache)
    text = summarise(rows)
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=1))
    print(text)
    return {"rows": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    main(n_folds=ap.parse_args().folds, seed=ap.parse_args().seed)
