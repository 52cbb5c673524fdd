"""Real-data issue, section 2: leave-studies-out on ``challenger2022`` (SARS-CoV-2, 605 patients, 17 studies).

The 17 studies are grouped into ``n_folds`` folds of similar size (largest study first, each to the currently
smallest fold). For each fold the methods below are trained on the other folds' patients and predict the
held-out patients' later samples from their covariates (age) and their first ``k`` samples (k = 1, 2). All
methods are scored on the same rows: every held-out row after a patient's first ``k``.

Methods (all trained on the same patients):

- **hybrid twin** (the issue's twin): the mechanistic twin below plus a neural closure for the immune
  response that the model lacks: the clearance rate c is replaced by ``c * exp(net(t, log10 T))`` (time since
  infection and the CD8+ pool; exactly the mechanistic model at the start), estimated by SAEM with the other
  population quantities (networks by Adam), then its encoder amortised on simulations from the fit. Scored by
  the default route (``auto``: the encoder corrected by importance sampling on the first k samples) and by MAP.
- **mechanistic twin** (``estimation_real.py``'s: ``sarscov2_cd8``, per-patient time offset with the
  incubation-period prior, M3 likelihood at each row's LOD), estimated and amortised the same way: scored by
  the encoder route (baseline ii, "encoder without closure") and by MAP.
- **population only** (baseline i): the mechanistic twin, no personalisation (the population given age).
- **gradient boosting** (baseline iii): scikit-learn ``HistGradientBoostingRegressor`` (quantile loss at 5, 25,
  50, 75, 95 %) on (age, age missing, day since onset) -> log10 copies/ml; censored rows enter at their LOD.
- **per-patient least squares** (baseline iv): the mechanistic model fitted to each patient's first k samples
  alone (p, c_T, t_offset; c and K_V at the population values, the residual SD fixed at the fold's estimate,
  censoring-aware, best of 4 starts, the prior made flat: SD 5 on the unconstrained scale). Only where a patient has
  >= 4 quantified values to fit, i.e. at k = 4 on the patients whose first 4 samples are all quantified;
  every method is scored on those same patients' later rows in that table.
- **LOCF** (baseline v): the last of the first k values carried forward; intervals from the training
  patients' empirical quantiles of (later value - last early value) by gap (<= 3, 3-7, > 7 days).

Scores per fold and pooled: RMSE of the median on quantified rows, 50 % and 90 % interval coverage on
quantified rows, and a censoring-aware log-likelihood per row (each method's predictive distribution taken as
normal with the median as mean and the 90 % interval's width / 3.29 as SD; a censored row scores
``log P(y < LOD)``).

Run ``python experiments/challenger_folds.py`` (40-60 min per fold on one core when 2-3 run side by side; ``--only 0,2,4`` and
``--only 1,3`` side by side, then a plain run to tabulate); results:
``experiments/results/challenger_folds.{md,json}``; each fold's twins and scores are cached under
``experiments/results/challenger_folds/`` and reused on a rerun.
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

from _common import RESULTS, write_results
from estimation_real import DATA, TWIN_OFFSET, challenger_data
from hybridtwin.data import CohortData
from hybridtwin.estimation import AmortiseConfig, SAEMConfig, estimate
from hybridtwin.personalise import Posterior, _neg_log_posterior, _tables, fit_map, posterior
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
    if d.empty:
        raise ValueError(f"LOCF needs training patients with more than {k} samples; there are none")
    pooled = d["change"].quantile(list(QUANTILES))
    qs = pd.DataFrame({q: d.groupby("gap")["change"].quantile(q) for q in QUANTILES})
    qs = qs.reindex(range(len(GAP_EDGES) + 1)).fillna(pooled)  # a gap class without training pairs: all gaps
    last = early.groupby("subject_id")[["time", "value"]].last().add_suffix("_last")
    out = late[["subject_id", "time", "observable"]].join(last, on="subject_id")
    gap = np.digitize(out["time"] - out["time_last"], GAP_EDGES)
    for q in QUANTILES:
        out[f"q{q}"] = out["value_last"].to_numpy() + qs.reindex(gap)[q].to_numpy()
    return _from_quantiles(out)


def route_posterior(twin: HybridTwin, cov: pd.DataFrame, shown: pd.DataFrame | None, method: str,
                    **options) -> Posterior:
    """The patients' posterior by one personalisation route, computed once (then reused for every level);
    ``options`` go to the route (e.g. ``min_ess`` for ``"library"``)."""
    ds, _ = _tables(twin, cov, shown, None)
    return posterior(twin, ds.batch(), method, **options)


def interval_rows(twin: HybridTwin, cov: pd.DataFrame, shown: pd.DataFrame | None, rows: pd.DataFrame, post: Posterior,
                  seed: int, n_samples: int = 400) -> pd.DataFrame:
    """Median, 90 % and 50 % predictive intervals at ``rows`` (subject_id, time, observable) from ``post``."""
    keys = ["subject_id", "time", "observable"]
    p90, _ = twin.predict(cov, shown, None, times=rows[keys], given=post, n_samples=n_samples, level=0.90, seed=seed)
    p50, _ = twin.predict(cov, shown, None, times=rows[keys], given=post, n_samples=n_samples, level=0.50, seed=seed)
    return p90[keys + ["median", "lower", "upper"]].merge(
        p50[keys + ["lower", "upper"]].rename(columns={"lower": "lower50", "upper": "upper50"}), on=keys)


def _twin_rows(twin: HybridTwin, cov: pd.DataFrame, early: pd.DataFrame | None, late: pd.DataFrame,
               method: str, seed: int) -> pd.DataFrame:
    """Predictions at ``late``'s rows after personalising by ``method`` on ``early`` (None: the population)."""
    rows = late[["subject_id", "time", "observable"]]
    shown = early if method != "population" else None
    post = route_posterior(twin, cov, shown, "encoder" if shown is None else method)
    return rows.merge(interval_rows(twin, cov, shown, rows, post, seed), on=["subject_id", "time", "observable"],
                      how="left")


#: prior SD on the unconstrained scale for the per-patient least-squares baseline (flat at the data's scale)
LS_PRIOR_SD = 5.0


def least_squares(twin: HybridTwin, cov: pd.DataFrame, early: pd.DataFrame, late: pd.DataFrame, seed: int,
                  n_starts: int = 4) -> pd.DataFrame:
    """Baseline iv: each patient's own fit of the mechanistic model to ``early`` (flat prior, residual SD
    fixed at the twin's, censoring-aware), best of ``n_starts`` L-BFGS starts; Laplace intervals."""
    import copy

    ls = copy.deepcopy(twin).eval()
    with torch.no_grad():
        ls.log_omega.fill_(math.log(LS_PRIOR_SD))
    ds, ids = _tables(ls, cov, early, None)
    batch = ds.batch()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        centre = twin.prior(batch.covariates)[0]
    best, best_obj = None, None
    for i in range(n_starts):
        init = centre if i == 0 else centre + torch.randn(centre.shape, generator=gen, dtype=centre.dtype)
        post = fit_map(ls, batch, init=init, max_iter=100)
        with torch.no_grad():
            obj = _neg_log_posterior(ls, post.mean, batch)
        if best is None:
            best, best_obj = post, obj
        else:
            better = obj < best_obj
            best = Posterior(list(ids), torch.where(better[:, None], post.mean, best.mean),
                             torch.where(better[:, None], post.sd, best.sd))
            best_obj = torch.minimum(obj, best_obj)
    rows = late[["subject_id", "time", "observable"]]
    return rows.merge(interval_rows(ls, cov, early, rows, best, seed), on=["subject_id", "time", "observable"],
                      how="left")


def _forecast_rows(pred: pd.DataFrame, late: pd.DataFrame) -> pd.DataFrame:
    """``late``'s rows with their forecast from ``pred``; every row must have one."""
    m = late.merge(pred, on=["subject_id", "time", "observable"], how="left", validate="one_to_one")
    if m["median"].isna().any():
        raise RuntimeError(f"{int(m['median'].isna().sum())} rows without a prediction")
    return m


def score(pred: pd.DataFrame, late: pd.DataFrame) -> dict:
    m = _forecast_rows(pred, late)
    sd = np.maximum((m["upper"] - m["lower"]) / (2 * Z90), 1e-3)
    cens = m["censored"].to_numpy()
    ll = np.where(cens, norm.logcdf((m["lloq"] - m["median"]) / sd), norm.logpdf(m["value"], m["median"], sd))
    q = m[~cens]
    return {"n_rows": int(len(m)), "n_quantified": int(len(q)),
            "rmse": float(np.sqrt(np.mean((q["median"] - q["value"]) ** 2))),
            "coverage50": float(((q["value"] >= q["lower50"]) & (q["value"] <= q["upper50"])).mean()),
            "coverage90": float(((q["value"] >= q["lower"]) & (q["value"] <= q["upper"])).mean()),
            "loglik_per_row": float(np.mean(ll)), **reported_scores(m)}


def reported_scores(m: pd.DataFrame) -> dict:
    """Scores of the forecast of the *reported* sample over every row, negatives included.

    A sample is reported as its value when quantified and as "below the limit" otherwise, so its forecast
    distribution is that of ``max(Y, lloq)``; clipping is monotone, so its quantiles are the predicted quantiles
    clipped at the row's limit. A negative row counts at its limit: a forecast of "negative" (median at or below
    the limit) has no error there, and a method carrying a positive value forward into a negative test is charged
    for it. Scoring only the quantified rows instead selects rows on the outcome (it keeps late low positives and
    drops the negatives around them), which favours methods that never predict clearance.
    """
    obs, med, lo, hi, lo50, hi50 = _reported(m)
    return {"rmse_reported": float(np.sqrt(np.mean((med - obs) ** 2))),
            "coverage50_reported": float(np.mean((obs >= lo50) & (obs <= hi50))),
            "coverage90_reported": float(np.mean((obs >= lo) & (obs <= hi)))}


def _reported(m: pd.DataFrame) -> tuple:
    """The reported samples (negatives at their limit) and the forecast's median and 90 / 50 % bounds clipped at
    the limit (see :func:`reported_scores`)."""
    lim = m["lloq"].to_numpy(float)
    obs = np.where(m["censored"].to_numpy(bool), lim, m["value"].to_numpy(float))
    return (obs, *(np.maximum(m[c].to_numpy(float), lim) for c in ("median", "lower", "upper", "lower50", "upper50")))


def person_scores(pred: pd.DataFrame, late: pd.DataFrame) -> pd.DataFrame:
    """Per-person sums behind :func:`score`'s RMSEs, for resampling people (``experiments/kissler_uncertainty.py``).

    One row per subject: ``n_rows`` and ``sse_reported`` (every later sample as reported, see
    :func:`reported_scores`), ``in90_reported`` (rows inside the clipped 90 % band), ``n_quantified`` and
    ``sse_quantified`` (quantified rows only). ``sqrt(sum sse / sum n)`` over any set of people is their pooled
    RMSE."""
    m = _forecast_rows(pred, late)
    obs, med, lo, hi, _, _ = _reported(m)
    q = ~m["censored"].to_numpy(bool)
    per = pd.DataFrame({"subject_id": m["subject_id"].to_numpy(), "n_rows": 1, "sse_reported": (med - obs) ** 2,
                        "in90_reported": ((obs >= lo) & (obs <= hi)).astype(int), "n_quantified": q.astype(int),
                        "sse_quantified": np.where(q, (m["median"].to_numpy(float) - m["value"].to_numpy(float)) ** 2,
                                                   0.0)})
    return per.groupby("subject_id", sort=True).sum().reset_index()


#: the hybrid twin's closure: the clearance rate as a learned function of time since infection and the CD8+ pool
CLOSURE = {"target": "c", "mode": "replace", "inputs": ["t", "T"], "log_inputs": ["T"], "input_scale": {"t": 10.0},
           "hidden": [16, 16]}
TWINS = {"mechanistic": TWIN_OFFSET, "hybrid": {**TWIN_OFFSET, "closures": [CLOSURE]}}
#: a shorter amortisation than the library default (10 twins to train instead of 1)
FOLD_AMORTISE = dict(n_simulations=10000, epochs=20)
#: k at which the per-patient least-squares baseline runs (patients whose first k samples are all quantified)
LS_K = 4


def fold_twin(kind: str, train: CohortData, seed: int, saem: dict, amortise: dict, folder: Path) -> tuple:
    """The fold's ``kind`` twin (``TWINS``) estimated by SAEM and amortised, or reloaded from ``folder``."""
    from hybridtwin.checkpoint import load, read_card, save

    if (folder / "card.json").is_file():
        return load(folder), read_card(folder)["metrics"]
    torch.manual_seed(seed)
    twin = HybridTwin.from_data(TwinConfig(**TWINS[kind]), train)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # findings are recorded below
        fit = estimate(twin, train, SAEMConfig(seed=seed, progress=False, **saem),
                       AmortiseConfig(seed=seed, progress=False, **amortise))
    metrics = {"fit_seconds": time.perf_counter() - t0,
               "noise_sd": float(twin.observation.log_sigma_add.detach().exp()[0]),
               "diagnostics": [d["message"] for d in fit.diagnostics]}
    save(twin.eval(), folder, metrics=metrics, data_summary={"n_train": len(train.subject_ids)})
    print(f"{folder.name}: {len(train.subject_ids)} training patients, {metrics['fit_seconds'] / 60:.1f} min, "
          f"noise SD {metrics['noise_sd']:.2f}", flush=True)
    return twin.eval(), metrics


def ls_eligible(obs: pd.DataFrame, k: int) -> set:
    """Patients whose first ``k`` samples are all quantified."""
    early, _ = split_early(obs, k)
    n = early.groupby("subject_id")["censored"].agg(lambda c: int((~c).sum()))
    return set(n.index[n >= k])


def run_fold(data: CohortData, studies: list[str], fold: int, ks, seed: int, saem: dict, cache: Path,
             amortise: dict | None = None) -> list[dict]:
    path = cache / f"fold{fold}.json"
    if path.is_file():
        return json.loads(path.read_text())
    obs = data.observations
    test_ids = sorted(obs.loc[obs["study"].isin(studies), "subject_id"].unique())
    train = data.subset([s for s in data.subject_ids if s not in set(test_ids)])
    test = data.subset(test_ids)
    twins = {kind: fold_twin(kind, train, seed, saem, {**FOLD_AMORTISE, **(amortise or {})},
                             cache / f"fold{fold}_{kind}") for kind in TWINS}
    hybrid, mech = twins["hybrid"][0], twins["mechanistic"][0]
    cov = test.covariates
    rows = []
    for k in ks:
        early, late = split_early(test.observations, k)
        keep = set(early["subject_id"]) & (ls_eligible(test.observations, k) if k == LS_K else set(test_ids))
        early, late = early[early["subject_id"].isin(keep)], late[late["subject_id"].isin(keep)]
        if late.empty:
            continue
        methods = {"hybrid twin": lambda: _twin_rows(hybrid, cov, early, late, "auto", seed),
                   "hybrid twin, MAP": lambda: _twin_rows(hybrid, cov, early, late, "map", seed),
                   "encoder without closure": lambda: _twin_rows(mech, cov, early, late, "auto", seed),
                   "mechanistic MAP": lambda: _twin_rows(mech, cov, early, late, "map", seed),
                   "population only": lambda: _twin_rows(mech, cov, None, late, "population", seed),
                   "gradient boosting": lambda: gradient_boosting(train.observations,
                                                                  pd.concat([train.covariates, cov]), late, seed),
                   "LOCF": lambda: locf(train.observations, early, late, k)}
        if k == LS_K:
            methods["per-patient least squares"] = lambda: least_squares(mech, cov, early, late, seed)
        for name, method in methods.items():
            t1 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # low importance-sampling ESS warnings: scored as they come
                pred = method()
            rows.append({"fold": fold, "studies": studies, "k": k, "method": name, "n_train": len(train.subject_ids),
                         "n_test": len(keep), "predict_seconds": time.perf_counter() - t1, **score(pred, late)})
            print(f"fold {fold} k={k} {name}: {rows[-1]['predict_seconds']:.1f} s, RMSE {rows[-1]['rmse']:.2f}",
                  flush=True)
    for kind, (_, metrics) in twins.items():
        rows.append({"fold": fold, "studies": studies, "method": "_fit", "twin": kind, **metrics})
    path.write_text(json.dumps(rows, indent=1))
    return rows


def summarise(rows: list[dict]) -> str:
    df = pd.DataFrame([r for r in rows if r["method"] != "_fit"])
    fits = pd.DataFrame([r for r in rows if r["method"] == "_fit"])
    lines = ["# Leave-studies-out on challenger2022 (SARS-CoV-2 viral load, 17 studies)", "",
             "Held-out patients' later samples predicted from age and their first k samples; every method is "
             "scored on the same rows (quantified rows for RMSE and coverage; all rows, censored ones by "
             "P(y < LOD), for the log-likelihood). See the script's docstring for the methods.", ""]
    for k, g in df.groupby("k"):
        title = f"## k = {k}"
        if k == LS_K:
            title += (f" (patients whose first {k} samples are all quantified: {int(g.groupby('fold')['n_test'].first().sum())}"
                      " patients; the per-patient least-squares baseline needs them)")
        lines += [title, "", "| method | RMSE (pooled) | 50 % coverage | 90 % coverage | log-lik / row | "
                  "RMSE per fold |", "|---|---|---|---|---|---|"]
        for method, h in g.groupby("method", sort=False):
            q = h[h["n_quantified"] > 0]  # a fold whose scored rows are all censored has no RMSE or coverage
            w = q["n_quantified"]
            pooled = lambda c: float(np.average(q[c], weights=w))  # noqa: E731
            rmse = math.sqrt(float(np.average(q["rmse"] ** 2, weights=w)))
            llr = float(np.average(h["loglik_per_row"], weights=h["n_rows"]))
            lines.append(f"| {method} | {rmse:.2f} | {pooled('coverage50'):.2f} | {pooled('coverage90'):.2f} | "
                         f"{llr:.2f} | " + " / ".join("-" if n == 0 else f"{v:.2f}" for v, n in
                                                       zip(h["rmse"], h["n_quantified"])) + " |")
        lines.append("")
    lines += ["## Folds", "", "| fold | held-out studies | patients held out | rows scored (k=1) | fit min (mechanistic / "
              "hybrid) | noise SD (mechanistic / hybrid) |", "|---|---|---|---|---|---|"]
    k0 = df["k"].min()
    for fold, f in fits.groupby("fold"):
        h = df[(df["fold"] == fold) & (df["k"] == k0)]
        by = f.set_index("twin")
        lines.append(f"| {fold} | {', '.join(f['studies'].iloc[0])} | {int(h['n_test'].iloc[0])} | "
                     f"{int(h['n_rows'].iloc[0])} | " + " / ".join(f"{by.loc[t, 'fit_seconds'] / 60:.1f}" for t in TWINS)
                     + " | " + " / ".join(f"{by.loc[t, 'noise_sd']:.2f}" for t in TWINS) + " |")
    return "\n".join(lines) + "\n"


def main(n_folds: int = 5, ks=(1, 2, LS_K), seed: int = 0, saem: dict | None = None, out: Path | str = RESULTS,
         path=DATA, n_subjects: int | None = None, stem: str = "challenger_folds", only=None,
         amortise: dict | None = None) -> dict:
    """Run (or reload) the folds in ``only`` (default all); with every fold done, tabulate them."""
    out = Path(out)
    cache = out / stem
    cache.mkdir(parents=True, exist_ok=True)
    data = _pooled_cohort(challenger_data(path, time_offset=True))
    if n_subjects:
        data = data.subset(list(data.subject_ids)[:n_subjects])
    folds = study_folds(data, n_folds)
    rows = []
    for i, studies in enumerate(folds):
        if only is None or i in only:
            rows += run_fold(data, studies, i, ks, seed, {**FOLD_SAEM, **(saem or {})}, cache, amortise)
    if only is not None:
        return {"rows": rows}
    write_results(out, stem, summarise(rows), rows)
    return {"rows": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help="comma-separated fold numbers to run (no table)")
    a = ap.parse_args()
    main(n_folds=a.folds, seed=a.seed, only=None if a.only is None else [int(x) for x in a.only.split(",")])
