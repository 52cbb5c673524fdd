"""Real-data issue, section 3: forecasting people from their first samples on ``kissler2021`` (68 people with
daily SARS-CoV-2 RT-qPCR tests, NBA occupational screening).

Each person's time axis is re-based to their **first positive test** (day 0): Kissler's own axis is centred on
each person's minimum Ct, which is only known in hindsight and would leak the future into every method. Rows
before the first positive (the negative screening tests before infection) are not used. For k = 1, 2, 3, 5 each
person shows their first k quantified samples (and age: unknown here, so given as missing); every later row
(quantified and negative) is forecast. Units: the loader's log10 genome equivalents per ml are mapped onto the
twin's ``log10_V`` (log10 copies/ml) one to one.

Methods, on the same rows:

- **twin, external** (no retraining): the shipped ``checkpoints/sarscov2_challenger`` twin (trained on
  challenger2022), personalised by its default route (``auto``: encoder + importance sampling) and by MAP;
- **twin, fine-tuned**: the same twin's population model re-estimated by SAEM on the other people of a 5-fold
  split of the 68 (starting from the shipped values; covariate effects under a ridge, since every person has
  the same covariates here), then MAP for the held-out people. The time-offset distribution is re-estimated
  too (:func:`offset_estimated`): the shipped twin's is the incubation period, for data timed from symptom
  onset, and day 0 here is a screening test;
- **twin, fine-tuned, library posterior**: the same fine-tuned twin personalised by the importance-weighted
  library of prior draws (``method="library"``) instead of MAP + Laplace. From one or two samples a person's
  posterior is multimodal (a first value near the limit fits both "still rising" and "already clearing"); the
  Laplace approximation keeps the mode MAP found and its forecast follows that one branch, the library keeps
  both;
- **twin, fine-tuned, MAP/library blend**: the two routes' forecasts averaged quantile by quantile
  (Vincentization), ``w * MAP + (1 - w) * library``, with the weight ``w`` (0, 0.1, ..., 1) that forecasts every
  later sample best on the fold's *fine-tuning* people, each shown their own first k samples (:func:`blend_weight`;
  the held-out people never choose it). One branch or the other suits different k: this lets the training data say
  which, instead of the test folds;
- **twin, fine-tuned, MAP/library blend + conformal bands**: the blend's median with its bands rescaled by split
  conformal prediction on the same fine-tuning people (the blend at the chosen weight forecasts their later
  quantified samples; :func:`blend_conformal_rows`): the blend's bands from the broad fitted noise are too wide;
- **LOCF**: the last of the k values carried forward; intervals from the training folds' changes by gap;
- **population template**: the training folds' mean curve on the same axis (days since first positive,
  censored values at the limit, medians per day), shifted in level (k = 1) or in level and time (k >= 2,
  shifts of -4..4 days) to the k samples by least squares; intervals from the training folds' residuals
  around their own fitted templates.

- **per-patient mechanistic fit**: the shipped twin's model (``sarscov2_cd8`` with the time offset; p, c_T and
  t_offset per person) fitted to each person's own k samples alone by censoring-aware least squares (flat prior,
  residual SD fixed at the twin's, best of 4 L-BFGS starts; ``challenger_folds.least_squares``), Laplace intervals.
  With k = 1 or 2 the three parameters are not identified by the samples, which the scores show.
- **reference: later samples by day** (not a baseline the issue lists; the floor any forecaster of the reported
  sample must clear): the training folds' reported later samples, quantiles by whole days since the k-th sample,
  the same for everyone (:func:`later_sample_reference`).
- **reference: gradient boosting on the k samples** (not listed either): quantile gradient boosting of the reported
  later sample on the days since the first positive and since the k-th sample and on the k values
  (:func:`early_sample_boosting`): what a flexible learner with no mechanism gets out of the person's samples;
  ``(mean)``: its point forecast a squared-error regression, the conditional mean, which is what minimises RMSE.
- **twin fine-tuned (library) + boosting (mean): equal average** (not the twin alone): the library route's forecast
  and the boosting reference's ``(mean)`` forecast averaged quantile by quantile (:func:`vincentized`) with equal
  weights, fixed in advance (nothing is fitted to choose them): does the mechanism add anything to a flexible
  learner that sees the same samples?
- **boosting with the library twin's forecast as features** (not the twin alone either): the boosting reference's
  features plus the library twin's forecast of the row (:func:`twin_informed_boosting`), fitted on the training
  people: the learner decides from the training data how far to trust the twin.

Scores per k (pooled over folds; see ``challenger_folds.score``): RMSE of the median on quantified rows, 50 / 90 %
coverage on quantified rows, censoring-aware log-likelihood per row; and the same RMSE and coverages for the
forecast of **every later sample as reported** (negatives at their limit, forecasts clipped at it:
``challenger_folds.reported_scores``). 92-95 % of the later rows here are negative tests: scoring only the quantified
ones keeps the late low positives and drops the negatives around them, which rewards carrying a positive value
forward and charges a method that forecasts clearance.

Run ``python experiments/kissler_forecast.py`` (about 3 h on one thread: 2 h of it the per-patient fits, 24 min the
fine-tuning, 26 min the conformal calibration); results:
``experiments/results/kissler_forecast.{md,json}``; fine-tuned fits are cached per fold. ``--methods NAME,...
--merge`` runs only the named methods and keeps the other methods' rows of the existing results file.
``--release r,delta_T,k_T --stem NAME`` fine-tunes with those shipped-fixed parameters estimated too
(:func:`offset_estimated`), into ``experiments/results/NAME.{md,json}``. ``--closure --stem NAME`` fine-tunes a hybrid
twin instead: the shipped twin plus ``challenger_folds.CLOSURE`` (the clearance rate c replaced by
``c * exp(net(t, log10 T))``, starting at zero output, trained by SAEM's Adam steps; about 22 min per fold on one
core, against 5 for the mechanistic one). ``--fit-only 0,2,4`` and ``--fit-only 1,3`` side by side fill the fold
cache before a plain run scores it. ``--random K_V --stem NAME`` fine-tunes with the carrying capacity (one value for
everyone in the shipped twin) estimated per person (:func:`offset_estimated`, ``TwinConfig.per_patient``);
``--random c --stem kissler_forecast_rc`` the viral clearance rate (the variant whose blend closes the k = 5 gap to
the learner, see the README), ``--random r`` the CD8+ expansion rate.
``--closure --closure-bound B`` bounds the closure's log-multiplier to +-B (``constraint: bounded``; see
``closure_stiffness.py``); ``--score-only 0,1`` scores only those folds (the tables say which). ``--miss 0.2 --stem
NAME`` fine-tunes with a missed-sample probability (``TwinConfig.miss``, started at 0.2, estimated); ``--hold 0.8``
fine-tunes in two stages, the noise SD held at 0.8 (and the miss probability at its start) in the first.
``--library-ess 200 --stem NAME`` grows the library route's library until every person's effective sample size is
200 (``library_posterior(min_ess=...)``; copy the fold caches of another stem into ``NAME/`` to reuse its fits).
``--ks 1,2`` scores only those numbers of samples shown. Every run also writes ``NAME_people.csv``: each person's
squared errors and row counts per fold, k and method (``challenger_folds.person_scores``), which
``kissler_uncertainty.py`` resamples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import RESULTS, ROOT
from challenger_folds import (CLOSURE, QUANTILES, _from_quantiles, interval_rows, least_squares, locf,
                              person_scores, reported_scores, route_posterior, score)
from hybridtwin.checkpoint import load
from hybridtwin.conformal import ConformalBands, conformal_bands
from hybridtwin.data import CohortData, map_observables
from hybridtwin.datasets import load as load_dataset
from hybridtwin.estimation import SAEMConfig, estimate

DATA = ROOT.parent / "shared" / "data" / "kissler2021_nba_ct"
CHECKPOINT = ROOT / "checkpoints" / "sarscov2_challenger"
KS = (1, 2, 3, 5)
FINE_TUNE_SAEM = dict(n_explore=60, n_smooth=30, n_fisher=0, init_steps=0)
SHIFTS = np.arange(-4.0, 4.5, 1.0)


def kissler_data(path=DATA) -> CohortData:
    """Rows from each person's first positive test on, time re-based to it; cohort 'all', age missing."""
    data = map_observables(load_dataset("kissler2021", path),
                           {"log10_ge": {"name": "log10_V", "unit": "log10 GE/ml, taken as log10 copies/ml"}})
    obs = data.observations.sort_values(["subject_id", "time"], kind="stable")
    first = obs[~obs["censored"]].groupby("subject_id")["time"].min()
    obs = obs[obs["subject_id"].isin(first.index)].copy()
    obs["time"] = obs["time"] - obs["subject_id"].map(first)
    obs = obs[obs["time"] >= 0].assign(cohort="all").reset_index(drop=True)
    ids = sorted(obs["subject_id"].unique())
    cov = pd.DataFrame({"subject_id": ids, "age": np.nan})
    return CohortData(obs, data.doses.iloc[:0], cov, dict(data.meta))


def split_quantified(obs: pd.DataFrame, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each person's first ``k`` quantified rows, and every row after the k-th (people with fewer dropped)."""
    q = obs[~obs["censored"]].sort_values(["subject_id", "time"], kind="stable")
    early = q.groupby("subject_id").head(k)
    counts = early.groupby("subject_id").size()
    keep = set(counts[counts == k].index)
    early = early[early["subject_id"].isin(keep)]
    last = early.groupby("subject_id")["time"].max()
    late = obs[obs["subject_id"].isin(keep)]
    late = late[late["time"] > late["subject_id"].map(last)]
    keep = set(late["subject_id"])
    return early[early["subject_id"].isin(keep)].reset_index(drop=True), late.reset_index(drop=True)


def _template(train: pd.DataFrame) -> pd.Series:
    """Median log10 value per day since first positive (censored rows at their limit), days 0..max."""
    med = train.groupby(np.rint(train["time"]))["value"].median()
    days = np.arange(0.0, float(med.index.max()) + 1)
    return pd.Series(np.interp(days, med.index.to_numpy(), med.to_numpy()), index=days)


def _template_at(curve: pd.Series, t: np.ndarray) -> np.ndarray:
    return np.interp(t, curve.index.to_numpy(), curve.to_numpy())


def _fit_shift(curve: pd.Series, t: np.ndarray, y: np.ndarray, k: int) -> tuple[float, float]:
    best = (np.inf, 0.0, 0.0)
    for tau in (SHIFTS if k >= 2 else (0.0,)):
        base = _template_at(curve, t - tau)
        a = float(np.mean(y - base))
        sse = float(np.sum((y - base - a) ** 2))
        best = min(best, (sse, tau, a))
    return best[1], best[2]


def population_template(train: pd.DataFrame, early: pd.DataFrame, late: pd.DataFrame, k: int) -> pd.DataFrame:
    curve = _template(train)
    # residual quantiles: each training person's later rows around its template fitted to its own first k
    tr_early, tr_late = split_quantified(train, k)
    res = []
    for sid, g in tr_early.groupby("subject_id"):
        tau, a = _fit_shift(curve, g["time"].to_numpy(), g["value"].to_numpy(), k)
        lt = tr_late[tr_late["subject_id"] == sid]
        res.append(lt["value"].to_numpy() - _template_at(curve, lt["time"].to_numpy() - tau) - a)
    qs = np.quantile(np.concatenate(res), QUANTILES)
    out = late[["subject_id", "time", "observable"]].copy()
    centre = np.empty(len(out))
    for sid, g in early.groupby("subject_id"):
        tau, a = _fit_shift(curve, g["time"].to_numpy(), g["value"].to_numpy(), k)
        rows = (out["subject_id"] == sid).to_numpy()
        centre[rows] = _template_at(curve, out.loc[rows, "time"].to_numpy() - tau) + a
    for q, v in zip(QUANTILES, qs):
        out[f"q{q}"] = centre + v
    return _from_quantiles(out)


#: days since the k-th sample after which the reference distribution pools every later day
REFERENCE_MAX_GAP = 15


def later_sample_reference(train: pd.DataFrame, early: pd.DataFrame, late: pd.DataFrame, k: int) -> pd.DataFrame:
    """Reference forecast that ignores the person's values: the quantiles of the training people's *reported*
    later samples (negatives at their limit) by whole days since their k-th quantified sample (days beyond
    ``REFERENCE_MAX_GAP`` pooled). With 92-95 % of later samples negative its median is "negative" from a few
    days on; a forecaster of the reported sample has to beat it to have learned anything about the person."""
    def day_class(rows: pd.DataFrame, shown: pd.DataFrame) -> np.ndarray:
        last = shown.groupby("subject_id")["time"].max()
        return np.minimum(np.rint(rows["time"] - rows["subject_id"].map(last)), REFERENCE_MAX_GAP).to_numpy()

    tr_early, tr_late = split_quantified(train, k)
    reported = np.where(tr_late["censored"], tr_late["lloq"], tr_late["value"])
    qs = pd.DataFrame({"gap": day_class(tr_late, tr_early), "y": reported}).groupby("gap")["y"].quantile(
        list(QUANTILES)).unstack()
    pooled = np.quantile(reported, QUANTILES)
    out = late[["subject_id", "time", "observable"]].copy()
    table = qs.reindex(day_class(out, early))
    for j, q in enumerate(QUANTILES):
        out[f"q{q}"] = table[q].fillna(pooled[j]).to_numpy()
    return _from_quantiles(out)


def _early_features(early: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """Per row: days since the first positive and since the k-th sample, and the person's k values (first, last,
    max, mean, and the slope from first to last per day; 0 for k = 1)."""
    g = early.groupby("subject_id")
    per = pd.DataFrame({"first": g["value"].first(), "last": g["value"].last(), "max": g["value"].max(),
                        "mean": g["value"].mean(), "t_last": g["time"].last(), "t_first": g["time"].first()})
    span = (per["t_last"] - per["t_first"]).to_numpy()
    per["slope"] = np.where(span > 0, (per["last"] - per["first"]).to_numpy() / np.where(span > 0, span, 1.0), 0.0)
    p = per.reindex(rows["subject_id"]).to_numpy()
    cols = list(per.columns)
    t = rows["time"].to_numpy(float)
    return np.column_stack([t, t - p[:, cols.index("t_last")]] +
                           [p[:, cols.index(c)] for c in ("first", "last", "max", "mean", "slope")])


def early_sample_boosting(train: pd.DataFrame, early: pd.DataFrame, late: pd.DataFrame, k: int,
                          seed: int, point: str = "median") -> pd.DataFrame:
    """Reference forecast that *uses* the person's values, with no mechanism: gradient-boosted quantile regressions
    (scikit-learn's ``HistGradientBoostingRegressor``, one per quantile, as in ``challenger_folds``) of the reported
    later sample (negatives at their limit) on the days since the first positive and since the k-th sample and on
    the k values (:func:`_early_features`), fitted to the training people's rows split the same way. Not a
    baseline the issue lists: it measures how much a flexible learner gets out of the k samples here, i.e. what is
    achievable from these data, against which the twin's gain over the listed baselines can be read.

    ``point="mean"``: the point forecast is a squared-error regression (the conditional mean, which is what
    minimises RMSE) instead of the median; the bands stay the quantile regressions'."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    tr_early, tr_late = split_quantified(train, k)
    X = _early_features(tr_early, tr_late)
    y = np.where(tr_late["censored"], tr_late["lloq"], tr_late["value"]).astype(float)
    Xt = _early_features(early, late)
    out = late[["subject_id", "time", "observable"]].copy()
    for q in QUANTILES:
        m = HistGradientBoostingRegressor(loss="quantile", quantile=q, max_iter=200, random_state=seed).fit(X, y)
        out[f"q{q}"] = m.predict(Xt)
    out = _from_quantiles(out)
    if point == "mean":
        out["median"] = HistGradientBoostingRegressor(max_iter=200, random_state=seed).fit(X, y).predict(Xt)
    elif point != "median":
        raise ValueError(f"point must be 'median' or 'mean', got {point!r}")
    return out


#: options of the library route (``--library-ess N``: ``{"min_ess": N}``, the library grown until every held-out
#: person's effective sample size reaches N)
LIBRARY_OPTIONS: dict = {}


def twin_informed_boosting(twin, cov: pd.DataFrame, train: pd.DataFrame, early: pd.DataFrame, late: pd.DataFrame,
                           k: int, seed: int, held_rows: pd.DataFrame) -> pd.DataFrame:
    """A learner that sees the twin: :func:`early_sample_boosting`'s features plus the library twin's forecast of
    the same row (median and the 50 / 90 % band edges), a squared-error gradient boosting for the point forecast and
    quantile ones for the bands, fitted to the training people (their twin forecasts from their own first ``k``
    samples). ``held_rows``: the twin's forecast of the held-out rows (``late``), computed once elsewhere.

    The twin's population model was fine-tuned on these same training people, so its forecasts of them are a
    little better than of new people and the learner may lean on them a little too much; the held-out people's
    scores are unaffected by that (they are never used to fit either part)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    keys = ["subject_id", "time", "observable"]
    tr_early, tr_late = split_quantified(train, k)
    c = cov[cov["subject_id"].isin(set(tr_early["subject_id"]))]
    tr_twin = tr_late[keys].merge(twin_rows(twin, c, tr_early, tr_late, "library", seed), on=keys, how="left")
    te_twin = late[keys].merge(held_rows, on=keys, how="left")

    def features(e, rows, tw):
        return np.column_stack([_early_features(e, rows), tw[list(BANDS)].to_numpy(float)])

    X, Xt = features(tr_early, tr_late, tr_twin), features(early, late, te_twin)
    y = np.where(tr_late["censored"], tr_late["lloq"], tr_late["value"]).astype(float)
    out = late[keys].copy()
    for q in QUANTILES:
        out[f"q{q}"] = HistGradientBoostingRegressor(loss="quantile", quantile=q, max_iter=200,
                                                     random_state=seed).fit(X, y).predict(Xt)
    out = _from_quantiles(out)
    out["median"] = HistGradientBoostingRegressor(max_iter=200, random_state=seed).fit(X, y).predict(Xt)
    return out


def twin_rows(twin, cov: pd.DataFrame, early: pd.DataFrame, late: pd.DataFrame, method: str, seed: int) -> pd.DataFrame:
    options = LIBRARY_OPTIONS if method == "library" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # age missing for everyone is reported once in the results
        return interval_rows(twin, cov, early, late, route_posterior(twin, cov, early, method, **options), seed)


def conformal_factors(twin, cov: pd.DataFrame, train_obs: pd.DataFrame, k: int, seed: int) -> tuple[float, float]:
    """Split-conformal widths of the twin's MAP bands, from the people it was fine-tuned on: each shows their first
    ``k`` quantified samples and the MAP route forecasts their later samples (:func:`conformal_scale`). The held-out
    people are not used."""
    early, late = split_quantified(train_obs, k)
    late = late[~late["censored"]]
    c = cov[cov["subject_id"].isin(set(early["subject_id"]))]
    return conformal_scale(twin_rows(twin, c, early, late, "map", seed), late)


def conformal_scale(pred: pd.DataFrame, late: pd.DataFrame) -> tuple[float, float]:
    """Split-conformal factors from a forecast ``pred`` of calibration rows ``late`` (quantified rows only;
    :func:`hybridtwin.conformal.conformal_bands`): the factors that stretch or shrink the 90 % band into a 90 % and
    a 50 % band (:func:`rescaled`)."""
    return tuple(conformal_bands(pred, late, level).factors["log10_V"] for level in (0.90, 0.50))


def rescaled(pred: pd.DataFrame, f90: float, f50: float) -> pd.DataFrame:
    """``pred`` with its 90 % band's half-widths (each side) multiplied by ``f90`` and turned into a 50 % band by
    ``f50``; the median unchanged."""
    narrow = ConformalBands({"log10_V": f50}, 0.50).apply(pred)
    return ConformalBands({"log10_V": f90}, 0.90).apply(pred).assign(lower50=narrow["lower"], upper50=narrow["upper"])


def conformal_rows(twin, cov, pred: pd.DataFrame, train_obs, k, seed) -> pd.DataFrame:
    """The fine-tuned twin's MAP forecast ``pred`` (from :func:`twin_rows`) with its bands rescaled by
    :func:`conformal_factors` (median unchanged)."""
    return rescaled(pred, *conformal_factors(twin, cov, train_obs, k, seed))


#: the blend weights tried for the MAP route (the library route gets 1 - w)
BLEND_GRID = np.round(np.linspace(0.0, 1.0, 11), 2)
BANDS = ("median", "lower50", "upper50", "lower", "upper")


def vincentized(a: pd.DataFrame, b: pd.DataFrame, w: float) -> pd.DataFrame:
    """The quantile average ``w * a + (1 - w) * b`` of two forecasts of the same rows (median and both bands;
    Vincentization: each quantile of the blend is the weighted mean of the two forecasts' same quantile)."""
    keys = ["subject_id", "time", "observable"]
    m = a[keys + list(BANDS)].merge(b[keys + list(BANDS)], on=keys, suffixes=("_a", "_b"), validate="one_to_one")
    if len(m) != len(a) or len(m) != len(b):
        raise ValueError(f"the two forecasts cover different rows ({len(a)}, {len(b)}; {len(m)} in common)")
    return m[keys].assign(**{c: w * m[f"{c}_a"] + (1.0 - w) * m[f"{c}_b"] for c in BANDS})


def blend_training(twin, cov: pd.DataFrame, train_obs: pd.DataFrame, k: int, seed: int) -> dict:
    """Both routes' forecasts of the fine-tuning people's later samples, each shown their own first ``k``
    quantified samples: ``{"map": ..., "library": ..., "late": ...}`` (what :func:`blend_weight` chooses on and
    :func:`blend_conformal_rows` calibrates on; compute once per fold and k)."""
    early, late = split_quantified(train_obs, k)
    c = cov[cov["subject_id"].isin(set(early["subject_id"]))]
    return {"map": twin_rows(twin, c, early, late, "map", seed), "library": twin_rows(twin, c, early, late, "library", seed),
            "late": late}


def blend_weight(twin, cov: pd.DataFrame, train_obs: pd.DataFrame, k: int, seed: int,
                 training: dict | None = None) -> tuple[float, dict]:
    """The weight of the MAP route in a blend with the library route, chosen on the people the twin was fine-tuned
    on (never the held-out ones): each shows their first ``k`` quantified samples, both routes forecast every later
    sample, and the weight in ``BLEND_GRID`` whose blend (:func:`vincentized`) has the smallest every-sample RMSE
    (``challenger_folds.reported_scores``) wins. Returns it and the RMSE at every weight. ``training``: the routes'
    forecasts from :func:`blend_training`, if already computed."""
    t = training if training is not None else blend_training(twin, cov, train_obs, k, seed)
    keys = ["subject_id", "time", "observable"]
    rmse = {float(w): reported_scores(t["late"].merge(vincentized(t["map"], t["library"], w), on=keys,
                                                      validate="one_to_one"))["rmse_reported"]
            for w in BLEND_GRID}
    return min(rmse, key=rmse.get), rmse


def blend_rows(twin, cov, map_rows: pd.DataFrame, library_rows: pd.DataFrame, train_obs, k, seed,
               info: dict, training: dict | None = None) -> pd.DataFrame:
    """The held-out people's MAP and library forecasts blended with :func:`blend_weight`'s weight (recorded in
    ``info``)."""
    w, curve = blend_weight(twin, cov, train_obs, k, seed, training)
    info.update(blend_weight=w, blend_rmse_training=curve)
    return vincentized(map_rows, library_rows, w)


def blend_conformal_rows(twin, cov, map_rows: pd.DataFrame, library_rows: pd.DataFrame, train_obs, k, seed,
                         info: dict, training: dict | None = None) -> pd.DataFrame:
    """:func:`blend_rows`' forecast with split-conformal bands: the fine-tuning people's blend (the same weight) is
    the calibration forecast (:func:`conformal_scale`); the median is the blend's. ``info`` gets the weight and the
    two factors."""
    t = training if training is not None else blend_training(twin, cov, train_obs, k, seed)
    w, _ = blend_weight(twin, cov, train_obs, k, seed, t)
    f90, f50 = conformal_scale(vincentized(t["map"], t["library"], w), t["late"])
    info.update(blend_weight=w, conformal_f90=f90, conformal_f50=f50)
    return rescaled(vincentized(map_rows, library_rows, w), f90, f50)


def folds(ids: list[str], n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(sorted(ids))
    return [sorted(order[i::n].tolist()) for i in range(n)]


def offset_estimated(checkpoint: Path, release: tuple = (), closure: bool | dict = False, random: tuple = (),
                     miss: float | None = None):
    """The shipped twin with its time-offset distribution made estimable (``estimate_population``).

    The shipped twin reads day 0 as symptom onset: its offset prior is the incubation period (typical 5.1 days).
    Here day 0 is the first positive test of *daily screening*, which comes days before symptoms (or without any),
    so fine-tuning re-estimates the offset's typical value and SD together with the other population parameters;
    the weights are the shipped ones, the offset distribution starts at the shipped prior.

    ``release``: parameters the shipped twin keeps fixed that fine-tuning estimates as population values (starting
    at the values they were fixed at), e.g. the CD8+ response's ``r``, ``delta_T``, ``k_T``.
    ``closure``: True adds ``challenger_folds.CLOSURE``; a dict adds that closure config instead.
    ``random``: parameters the shipped twin holds at one value for everyone (population or fixed) that become
    per-person random effects (typical value starting at the shipped one, between-person SD at ``omega_init``,
    covariate effects and the encoder's outputs for them at zero), e.g. the viral carrying capacity ``K_V``, which
    sets the peak height.
    ``miss``: adds a missed-sample probability to ``log10_V`` (``TwinConfig.miss``), starting at this value and
    estimated with the noise: daily screening interleaves negative tests with positives for two weeks, which an
    M3 likelihood can only read as a low curve or a large noise SD.
    """
    from hybridtwin.checkpoint import read_card
    from hybridtwin.twin import HybridTwin

    shipped = load(checkpoint)  # verified against its card
    card = read_card(checkpoint)
    config = card["twin"]["config"]
    config["time_offset"]["estimate_population"] = True
    unknown = set(release) - set(config["fixed"])
    if unknown:
        raise ValueError(f"release: {sorted(unknown)} are not fixed in the shipped twin (fixed: {config['fixed']})")
    unknown = set(random) - set(shipped.population_names) - set(config["fixed"])
    if unknown:
        raise ValueError(f"random: {sorted(unknown)} are not held at one value for everyone in the shipped twin "
                         f"(population: {shipped.population_names}, fixed: {config['fixed']})")
    config["fixed"] = [n for n in config["fixed"] if n not in set(release) | set(random)]
    population = list(config["population"]) + [n for n in release if n not in config["population"]]
    config["population"] = [n for n in population if n not in set(random)]
    config["per_patient"] = list(config.get("per_patient", [])) + list(random)
    if closure:
        if config["closures"]:
            raise ValueError(f"the shipped twin already has closures: {config['closures']}")
        config["closures"] = [CLOSURE if closure is True else dict(closure)]
    if miss is not None:
        if config.get("miss"):
            raise ValueError(f"the shipped twin already has missed samples: {config['miss']}")
        config["miss"] = {"log10_V": float(miss)}
    twin = HybridTwin.from_card(card["twin"])
    state = shipped.state_dict()
    if release or random:
        state = _regrouped_state(shipped, twin, state)
    if closure or miss is not None:  # new terms keep their start; everything else is the shipped twin's
        missing, unexpected = twin.load_state_dict(state, strict=False)
        new_terms = ("observation.logit_miss", "observation.uses_miss")
        if unexpected or any("closure" not in key and key not in new_terms for key in missing):
            raise RuntimeError(f"shipped weights do not fit the twin with new terms: missing {missing}, "
                               f"unexpected {unexpected}")
    else:
        twin.load_state_dict(state, strict=True)
    return twin


def _regrouped_state(shipped, twin, state: dict) -> dict:
    """``shipped``'s weights for ``twin``, the same model with parameters moved between fixed, population and per
    person: every parameter keeps its shipped (unconstrained) value as the new typical value; a new random effect
    gets ``twin``'s initial between-person SD, zero covariate effects and zero encoder outputs."""
    def value(name):
        if name in shipped.patient_names:
            return shipped.mu[shipped.patient_names.index(name)]
        if name in shipped.population_names:
            return shipped.mu_population[shipped.population_names.index(name)]
        return shipped.z_default[shipped.model.parameter_space.names.index(name)]

    state = dict(state)
    with torch.no_grad():
        state["mu_population"] = torch.stack([value(n) for n in twin.population_names]) if twin.population_names \
            else twin.mu_population.detach().clone()
        state["mu"] = torch.stack([value(n) for n in twin.patient_names])
        old = {n: i for i, n in enumerate(shipped.patient_names)}
        omega, beta = twin.log_omega.detach().clone(), torch.zeros_like(twin.beta)
        head = twin.encoder.head.net[-1]
        head_w, head_b = head.weight.detach().clone(), head.bias.detach().clone()
        last = [k for k in state if k.startswith("encoder.head.net.") and k.endswith(".weight")][-1][: -len(".weight")]
        n_old, n_new = len(shipped.patient_names), len(twin.patient_names)
        for i, n in enumerate(twin.patient_names):
            if n in old:
                j = old[n]
                omega[i], beta[i] = state["log_omega"][j], state["beta"][j]
                for a, b in ((i, j), (n_new + i, n_old + j)):  # the encoder's mean row and log-SD row
                    head_w[a], head_b[a] = state[last + ".weight"][b], state[last + ".bias"][b]
        state.update({"log_omega": omega, "beta": beta, last + ".weight": head_w, last + ".bias": head_b,
                      "patient_idx": twin.patient_idx, "population_idx": twin.population_idx})
    return state


def held_stage(twin, train: CohortData, seed: int, saem: dict, hold: float) -> list:
    """SAEM on ``train`` with the noise SD held at ``hold`` (and a missed-sample probability at its value);
    returns the held parameters (still frozen: set ``requires_grad_(True)`` to estimate them again)."""
    om = twin.observation
    with torch.no_grad():
        om.log_sigma_add.fill_(math.log(hold))
    held = [om.log_sigma_add] + ([om.logit_miss] if om.has_miss else [])
    for par in held:
        par.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimate(twin, train, SAEMConfig(seed=seed, progress=False, **saem), amortisation=False)
    return held


def _observation_summary(twin) -> dict:
    """The fitted noise SD (and missed-sample probability) of ``log10_V`` and the typical time offset."""
    d = twin.observation.describe()["log10_V"]
    out = {"noise_sd": d["sigma_additive"]}
    if "miss_probability" in d:
        out["miss_probability"] = d["miss_probability"]
    return out


def fine_tuned(data: CohortData, held: list[str], fold: int, seed: int, saem: dict, cache: Path,
               checkpoint: Path = CHECKPOINT, release: tuple = (), closure: bool | dict = False, random: tuple = (),
               miss: float | None = None, hold: float | None = None):
    """The shipped twin re-estimated on the people not in ``held`` (cached as a checkpoint per fold).

    ``hold``: first run SAEM with the noise SD held at this value (and the missed-sample probability at its
    start), then SAEM again from there with both estimated; both stages are recorded (``stages``)."""
    from hybridtwin.checkpoint import save

    from hybridtwin.checkpoint import read_card

    folder = cache / f"fold{fold}_twin"
    if (folder / "weights.pt").is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cached = load(folder)
        want = [n for n in read_card(checkpoint)["twin"]["config"]["fixed"] if n not in set(release) | set(random)]
        if sorted(cached.config.fixed) != sorted(want):  # a cache fine-tuned with another --release
            raise ValueError(f"{folder} was fine-tuned with fixed={list(cached.config.fixed)}, this run asks for "
                             f"fixed={want} (release={list(release)}): use another --stem or delete the cache")
        per_person = sorted(set(load(checkpoint).patient_names) | set(random))
        if sorted(cached.patient_names) != per_person:
            raise ValueError(f"{folder} was fine-tuned with {sorted(cached.patient_names)} per person, this run asks "
                             f"for {per_person} (random={list(random)}): use another --stem or delete the cache")
        if bool(cached.config.closures) != bool(closure):
            was = "with" if cached.config.closures else "without"
            asks = "with" if closure else "without"
            raise ValueError(f"{folder} was fine-tuned {was} a closure, this run asks {asks}:"
                             " use another --stem or delete the cache")
        if bool(cached.config.miss) != (miss is not None):
            raise ValueError(f"{folder} was fine-tuned with miss={cached.config.miss}, this run asks for "
                             f"miss={miss}: use another --stem or delete the cache")
        if closure:
            want_c = (CLOSURE if closure is True else closure)
            got_c = cached.config.closures[0]
            if (got_c.constraint, list(got_c.bounds)) != (want_c.get("constraint", "signed"),
                                                          list(want_c.get("bounds", got_c.bounds))):
                raise ValueError(f"{folder} was fine-tuned with a {got_c.constraint} closure (bounds "
                                 f"{list(got_c.bounds)}), this run asks for {want_c}: use another --stem")
        return cached, json.loads((cache / f"fold{fold}.json").read_text())
    twin = offset_estimated(checkpoint, release, closure, random, miss)
    # everyone's covariates are the same here (age unknown), so the covariate effects cannot be re-estimated:
    # a ridge keeps the design solvable; only mu + beta x (the same for everyone) matters for these people
    twin.config = dataclasses.replace(twin.config, covariate_penalty=1.0)
    train = data.subset([s for s in data.subject_ids if s not in set(held)])
    t0 = time.perf_counter()
    stages = {}
    if hold is not None:  # stage 1: noise SD (and the miss probability) held, the rest estimated
        held_params = held_stage(twin, train, seed, saem, hold)
        stages["held"] = {"seconds": time.perf_counter() - t0, **_observation_summary(twin)}
        for par in held_params:
            par.requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = estimate(twin, train, SAEMConfig(seed=seed, progress=False, **saem), amortisation=False)
    info = {"fit_seconds": time.perf_counter() - t0, "n_train": len(train.subject_ids),
            **_observation_summary(twin), "diagnostics": [d["message"] for d in fit.diagnostics]}
    if stages:
        info["stages"] = stages
    save(twin, folder, metrics=info)
    (cache / f"fold{fold}.json").write_text(json.dumps(info, indent=1))
    print(f"fold {fold}: fine-tuned on {info['n_train']} people in {info['fit_seconds'] / 60:.1f} min", flush=True)
    return twin.eval(), info


def main(path=DATA, out: Path | str = RESULTS, ks=KS, n_folds: int = 5, seed: int = 0, saem: dict | None = None,
         n_people: int | None = None, stem: str = "kissler_forecast", checkpoint: Path | str = CHECKPOINT,
         only: list[str] | None = None, merge: bool = False, release: tuple = (), closure: bool | dict = False,
         fit_only: list[int] | None = None, random: tuple = (), score_only: list[int] | None = None,
         miss: float | None = None, hold: float | None = None) -> dict:
    """Run the forecasts and write the tables (see the module docstring). ``fit_only``: only fine-tune these folds
    into the cache and return (for running folds side by side before a plain run scores them all). ``score_only``:
    score only these folds (the tables then pool those folds alone, and say so)."""
    torch.set_num_threads(1)
    out = Path(out)
    cache = out / stem
    cache.mkdir(parents=True, exist_ok=True)
    data = kissler_data(path)
    if n_people:
        data = data.subset(list(data.subject_ids)[:n_people])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        external = load(checkpoint)
    obs, cov = data.observations, data.covariates
    rows = []
    people = []  # per-person sums behind the scores (person_scores), for resampling people
    fold_info = []
    previous = json.loads((out / f"{stem}.json").read_text()) if merge else None
    people_file = out / f"{stem}_people.csv"
    if merge:
        if not only:
            raise ValueError("merge=True needs the methods to run (only=[...])")
        rows = [r for r in previous["rows"] if r["method"] not in set(only)]
        if people_file.is_file():
            kept = pd.read_csv(people_file, dtype={"subject_id": str})
            people = kept[~kept["method"].isin(set(only))].to_dict("records")
    tuning = only is None or any(m.startswith("twin fine-tuned") or m == INFORMED for m in only)
    for f, held in enumerate(folds(list(data.subject_ids), n_folds, seed)):
        if score_only is not None and fit_only is None and f not in score_only:
            continue
        if fit_only is not None:
            if f in fit_only:
                fine_tuned(data, held, f, seed, {**FINE_TUNE_SAEM, **(saem or {})}, cache, Path(checkpoint),
                           tuple(release), closure, tuple(random), miss, hold)
            continue
        if tuning:
            tuned, info = fine_tuned(data, held, f, seed, {**FINE_TUNE_SAEM, **(saem or {})}, cache, Path(checkpoint),
                                      tuple(release), closure, tuple(random), miss, hold)
        else:
            tuned, info = None, next(i for i in previous["folds"] if i["fold"] == f) if previous else {}
            info = {k: v for k, v in info.items() if k not in ("fold", "held_out")}
        fold_info.append({"fold": f, "held_out": len(held), **info})
        train_obs = obs[~obs["subject_id"].isin(set(held))]
        test_obs = obs[obs["subject_id"].isin(set(held))]
        for k in ks:
            early, late = split_quantified(test_obs, k)
            if late.empty:
                continue
            c = cov[cov["subject_id"].isin(set(early["subject_id"]))]
            tuned_map = {}  # the fine-tuned forecasts by route (MAP, library), each computed once for all methods

            def tuned_rows(route="map"):
                if route not in tuned_map:
                    tuned_map[route] = twin_rows(tuned, c, early, late, route, seed)
                return tuned_map[route]

            blend_info = {}  # the blend's weight and its training-people RMSE curve, recorded with its scores
            conformal_info = {}  # the conformal blend's weight and factors
            training = {}  # both routes' forecasts of the fine-tuning people, shared by the two blends

            def blend_training_rows():
                if not training:
                    training.update(blend_training(tuned, cov, train_obs, k, seed))
                return training
            boosted = {}

            def boosting_mean():
                if "mean" not in boosted:
                    boosted["mean"] = early_sample_boosting(train_obs, early, late, k, seed, point="mean")
                return boosted["mean"]

            methods = {"twin external (auto)": lambda: twin_rows(external, c, early, late, "auto", seed),
                       "twin external (MAP)": lambda: twin_rows(external, c, early, late, "map", seed),
                       "twin fine-tuned (MAP)": tuned_rows,
                       "twin fine-tuned (MAP + conformal bands)": lambda: conformal_rows(
                           tuned, cov, tuned_rows(), train_obs, k, seed),
                       "twin fine-tuned (library posterior)": lambda: tuned_rows("library"),
                       BLEND: lambda: blend_rows(tuned, cov, tuned_rows(), tuned_rows("library"), train_obs, k, seed,
                                                 blend_info, blend_training_rows()),
                       BLEND_CONFORMAL: lambda: blend_conformal_rows(tuned, cov, tuned_rows(), tuned_rows("library"),
                                                                     train_obs, k, seed, conformal_info,
                                                                     blend_training_rows()),
                       "twin fine-tuned (MAP + importance sampling)": lambda: twin_rows(tuned, c, early, late, "map_is",
                                                                                        seed),
                       "LOCF": lambda: locf(train_obs, early, late, k),
                       "population template": lambda: population_template(train_obs, early, late, k),
                       "per-patient mechanistic fit": lambda: least_squares(external, c, early, late, seed),
                       REFERENCE: lambda: later_sample_reference(train_obs, early, late, k),
                       BOOSTING: lambda: early_sample_boosting(train_obs, early, late, k, seed),
                       BOOSTING_MEAN: boosting_mean,
                       STACK: lambda: vincentized(tuned_rows("library"), boosting_mean(), 0.5),
                       INFORMED: lambda: twin_informed_boosting(tuned, cov, train_obs, early, late, k, seed,
                                                                tuned_rows("library"))}
            unknown = set(only or ()) - set(methods)
            if unknown:
                raise ValueError(f"unknown method(s) {sorted(unknown)}; known: {sorted(methods)}")
            for name, method in methods.items():
                if only is not None and name not in only:
                    continue
                t1 = time.perf_counter()
                pred = method()
                rows.append({"fold": f, "k": k, "method": name, "n_people": int(early["subject_id"].nunique()),
                             "seconds": time.perf_counter() - t1, **score(pred, late),
                             **(blend_info if name == BLEND else {}),
                             **(conformal_info if name == BLEND_CONFORMAL else {})})
                people += person_scores(pred, late).assign(fold=f, k=k, method=name).to_dict("records")
                print(f"fold {f} k={k} {name}: RMSE {rows[-1]['rmse']:.2f}, 90 % cov {rows[-1]['coverage90']:.2f}",
                      flush=True)
    if fit_only is not None:
        return {"rows": [], "folds": []}
    order = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (r["fold"], r["k"], order.get(r["method"], len(order))))
    report = summarise(rows, fold_info, data, n_folds)
    (out / f"{stem}.md").write_text(report)
    (out / f"{stem}.json").write_text(json.dumps({"rows": rows, "folds": fold_info}, indent=1))
    cols = ["fold", "k", "method", "subject_id", "n_rows", "sse_reported", "in90_reported", "n_quantified",
            "sse_quantified"]
    pd.DataFrame(people, columns=cols).to_csv(people_file, index=False)
    print(report)
    return {"rows": rows, "folds": fold_info}


#: the methods in the order the tables list them
METHODS = ("twin external (auto)", "twin external (MAP)", "twin fine-tuned (MAP)",
           "twin fine-tuned (MAP + conformal bands)", "twin fine-tuned (library posterior)",
           "twin fine-tuned (MAP + importance sampling)", "twin fine-tuned (MAP/library blend)",
           "twin fine-tuned (MAP/library blend + conformal bands)", "LOCF",
           "population template", "per-patient mechanistic fit",
           "reference: later samples by day", "reference: gradient boosting on the k samples",
           "reference: gradient boosting on the k samples (mean)",
           "twin fine-tuned (library) + boosting (mean): equal average",
           "boosting with the library twin's forecast as features")
REFERENCE, BOOSTING, BOOSTING_MEAN, STACK, INFORMED = METHODS[-5:]
BLEND, BLEND_CONFORMAL = METHODS[6:8]


def _which_folds(fold_info: list[dict], n_folds: int) -> str:
    """'folds 0, 1 of ' when only some folds were scored, else ''."""
    if len(fold_info) >= n_folds:
        return ""
    return "folds " + ", ".join(str(f["fold"]) for f in fold_info) + " of "


def summarise(rows: list[dict], fold_info: list[dict], data: CohortData, n_folds: int = 5) -> str:
    df = pd.DataFrame(rows)
    obs = data.observations
    lines = ["# Forecasting people from their first samples: kissler2021 (SARS-CoV-2, daily tests)", "",
             f"{len(data.subject_ids)} people, {len(obs)} rows from each person's first positive test on "
             f"({int(obs['censored'].sum())} negative). Later rows forecast from the first k quantified samples; "
             f"pooled over {_which_folds(fold_info, n_folds)}a {n_folds}-fold split of the people. See the script's docstring for the methods.", ""]
    for k, g in df.groupby("k"):
        reported = "rmse_reported" in g and g["rmse_reported"].notna().any()
        head = "| method | people | RMSE quantified | 50 % cov. | 90 % cov. | log-lik / row |"
        head += " RMSE every sample | 50 % cov. | 90 % cov. |" if reported else ""
        lines += [f"## k = {k}", "", head, "|" + "---|" * (head.count("|") - 1)]
        for m, h in g.groupby("method", sort=False):
            w, n = h["n_quantified"].to_numpy(), h["n_rows"].to_numpy()
            rmse = float(np.sqrt(np.sum(w * h["rmse"] ** 2) / w.sum()))
            cov50 = float(np.sum(w * h["coverage50"]) / w.sum())
            cov90 = float(np.sum(w * h["coverage90"]) / w.sum())
            ll = float(np.sum(n * h["loglik_per_row"]) / n.sum())
            line = f"| {m} | {int(h['n_people'].sum())} | {rmse:.2f} | {cov50:.2f} | {cov90:.2f} | {ll:.2f} |"
            part = h[h["rmse_reported"].notna()] if reported else h
            if reported and part.empty:  # rows kept from a run before these scores existed
                line += " (not rerun) | | |"
            elif reported:
                nr = part["n_rows"].to_numpy()
                tag = "" if len(part) == len(h) else f" ({len(part)} of {len(h)} folds rescored)"
                line += (f" {float(np.sqrt(np.sum(nr * part['rmse_reported'] ** 2) / nr.sum())):.2f}{tag} |"
                         f" {float(np.sum(nr * part['coverage50_reported']) / nr.sum()):.2f} |"
                         f" {float(np.sum(nr * part['coverage90_reported']) / nr.sum()):.2f} |")
            lines.append(line)
        lines.append("")
    if "blend_weight" in df:
        b = df[df["method"] == (BLEND if (df["method"] == BLEND).any() else BLEND_CONFORMAL)]
        lines += ["Weight of the MAP route in the blend, chosen per fold on the fine-tuning people (folds 0-4):", ""]
        lines += [f"- k = {k}: " + ", ".join(f"{w:.1f}" for w in g["blend_weight"]) for k, g in b.groupby("k")]
        lines.append("")
    if "conformal_f90" in df:
        b = df[df["method"] == BLEND_CONFORMAL]
        lines += ["Split-conformal factors of the blend's 90 % band (90 % / 50 %), per fold, from the fine-tuning "
                  "people:", ""]
        lines += [f"- k = {k}: " + ", ".join(f"{a:.2f}/{c:.2f}" for a, c in zip(g["conformal_f90"], g["conformal_f50"]))
                  for k, g in b.groupby("k")]
        lines.append("")
    refs = [m for m in (REFERENCE, BOOSTING, BOOSTING_MEAN, INFORMED) if m in set(df["method"])]
    if refs:
        lines += [f"The bands of {', '.join(repr(m) for m in refs)} collapse onto the limit on most days (nearly "
                  "every later sample there is negative), so their log-likelihood (normal with the SD implied by the "
                  "90 % band, floored at 1e-3) says nothing; compare them by RMSE and coverage.", ""]
    if fold_info and "fit_seconds" not in fold_info[0]:
        return "\n".join(lines) + "\n"
    miss = any("miss_probability" in f for f in fold_info)
    lines += ["## Fine-tuning fits", "", "| fold | people held out | trained on | min | noise SD |"
              + (" missed-sample probability |" if miss else ""), "|---|---|---|---|---|" + ("---|" if miss else "")]
    for f in fold_info:
        lines.append(f"| {f['fold']} | {f['held_out']} | {f['n_train']} | {f['fit_seconds'] / 60:.1f} | {f['noise_sd']:.2f} |"
                     + (f" {f.get('miss_probability', float('nan')):.2f} |" if miss else ""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--methods", help="comma-separated method names to run (default: all)")
    ap.add_argument("--merge", action="store_true", help="keep the other methods' rows of the existing results")
    ap.add_argument("--release", help="comma-separated parameters fixed in the shipped twin to estimate in fine-tuning")
    ap.add_argument("--stem", default="kissler_forecast", help="results file stem (and cache folder)")
    ap.add_argument("--closure", action="store_true",
                    help="fine-tune with a neural closure for the clearance rate (challenger_folds.CLOSURE)")
    ap.add_argument("--random", help="comma-separated parameters held at one value for everyone in the shipped twin "
                    "to estimate as per-person random effects in fine-tuning (e.g. K_V)")
    ap.add_argument("--closure-bound", type=float,
                    help="with --closure: bound the log of the closure's clearance multiplier to +-B (constraint "
                         "'bounded'; see experiments/closure_stiffness.py)")
    ap.add_argument("--score-only", help="comma-separated folds to score (default: all)")
    ap.add_argument("--ks", help="comma-separated numbers of samples shown (default: 1,2,3,5)")
    ap.add_argument("--fit-only", help="comma-separated folds to fine-tune into the cache, then stop (no scores)")
    ap.add_argument("--miss", type=float, help="fine-tune with a missed-sample probability on log10_V starting at "
                    "this value (TwinConfig.miss), estimated with the noise")
    ap.add_argument("--library-ess", type=float, help="grow the library route's library (from 2000 members, doubling, "
                    "up to 64000) until every person's effective sample size reaches this")
    ap.add_argument("--hold", type=float, help="fine-tune in two stages: SAEM with the noise SD held at this value "
                    "(and the missed-sample probability at its start), then SAEM with both estimated")
    a = ap.parse_args()
    if a.library_ess is not None:
        LIBRARY_OPTIONS["min_ess"] = a.library_ess
    if a.hold is not None and not a.hold > 0:
        ap.error("--hold must be a positive noise SD")
    if a.miss is not None and not 0 < a.miss < 1:
        ap.error("--miss must be a probability strictly between 0 and 1")
    if a.closure_bound is not None and not a.closure:
        ap.error("--closure-bound needs --closure")
    closure = ({**CLOSURE, "constraint": "bounded", "bounds": [-a.closure_bound, a.closure_bound]}
               if a.closure_bound is not None else a.closure)
    main(n_folds=a.folds, ks=tuple(int(k) for k in a.ks.split(",")) if a.ks else KS,
         only=a.methods.split(",") if a.methods else None, merge=a.merge,
         release=tuple(a.release.split(",")) if a.release else (), stem=a.stem, closure=closure,
         fit_only=[int(f) for f in a.fit_only.split(",")] if a.fit_only else None,
         random=tuple(a.random.split(",")) if a.random else (),
         score_only=[int(f) for f in a.score_only.split(",")] if a.score_only else None, miss=a.miss, hold=a.hold)
