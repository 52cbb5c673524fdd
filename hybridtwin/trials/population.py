"""Virtual populations for trials: covariates drawn like a source cohort's, parameters from a trained twin.

- :class:`CovariateModel` learns a covariate table and draws new patients from it: ``"bootstrap"`` resamples
  whole rows (every joint feature and missing value kept as observed); ``"gmm"`` draws the categorical columns
  from their observed joint frequencies and, within each category combination, the numeric columns from a
  Gaussian mixture (scikit-learn) fitted on that stratum (on the log scale for positive columns; the pooled
  mixture for strata too small to fit), clipped to the observed range and rounded where every observed value
  is a whole number -- new, never-seen patients with the
  source's correlations.
- :func:`virtual_population` turns drawn covariates into patients of a trained twin: parameters from the
  twin's population model given the covariates, between-patient variability included, optionally with the
  uncertainty of the population estimates (a new draw of the estimates per trial replicate, from their
  covariance ``twin.uncertainty``).
- :func:`subgroup` selects patients by covariate filters (age bands, sex, a biomarker range).

Example
-------
>>> import pandas as pd
>>> from hybridtwin.trials import CovariateModel, subgroup
>>> source = pd.DataFrame({"age": [25, 40, 61, 70, 33, 55], "sex": ["F", "M", "F", "M", "F", "M"]})
>>> m = CovariateModel("gmm", seed=0).fit(source)
>>> new = m.sample(1000)
>>> sorted(new["sex"].unique()), bool(new["age"].between(25, 70).all())
(['F', 'M'], True)
>>> len(subgroup(new, {"age": [50, None], "sex": "F"})) > 0
True
"""

from __future__ import annotations

import copy
import math
from typing import Mapping

import numpy as np
import pandas as pd

METHODS = ("bootstrap", "gmm")


def _is_categorical(s: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)


class CovariateModel:
    """A model of a covariate table to draw virtual patients from (see the module docstring).

    method: ``"bootstrap"`` or ``"gmm"``. n_components: mixture components per stratum (fewer when the
    stratum is small). categorical: columns to treat as categories (default: non-numeric and boolean
    columns). seed: default seed of :meth:`sample`.
    """

    def __init__(self, method: str = "gmm", n_components: int = 3, categorical=None, seed: int = 0):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
        self.method, self.n_components, self.categorical, self.seed = method, n_components, categorical, seed
        self.columns_: list[str] | None = None

    def fit(self, covariates: pd.DataFrame) -> "CovariateModel":
        """Learn ``covariates`` (one row per patient; ``subject_id`` is ignored)."""
        if not isinstance(covariates, pd.DataFrame) or covariates.empty:
            raise ValueError("covariates must be a non-empty DataFrame with one row per patient")
        data = covariates.drop(columns=[c for c in ("subject_id",) if c in covariates.columns]).reset_index(drop=True)
        if data.shape[1] == 0:
            raise ValueError("covariates have no column besides subject_id")
        cats = list(self.categorical) if self.categorical is not None else [c for c in data if _is_categorical(data[c])]
        unknown = [c for c in cats if c not in data.columns]
        if unknown:
            raise ValueError(f"categorical column(s) {unknown} are not in the covariates {list(data.columns)}")
        self.columns_, self.dtypes_ = list(data.columns), data.dtypes
        self.categorical_ = cats
        self.numeric_ = [c for c in data.columns if c not in cats]
        self.data_ = data
        if self.method == "gmm":
            self._fit_gmm(data)
        return self

    def _fit_gmm(self, data: pd.DataFrame) -> None:
        num = data[self.numeric_]
        complete = num.notna().all(axis=1)
        if self.numeric_ and complete.sum() < 2:
            raise ValueError("the gmm covariate model needs at least 2 rows with every numeric covariate present")
        self.log_ = [c for c in self.numeric_ if (num[c].dropna() > 0).all()]
        self.low_ = num.min().to_dict()
        self.high_ = num.max().to_dict()
        self.integral_ = [c for c in self.numeric_ if (num[c].dropna() % 1 == 0).all()]  # counts, whole years
        key = data[self.categorical_].astype(str).agg("\x1f".join, axis=1) if self.categorical_ else pd.Series("", index=data.index)
        self.strata_ = key.value_counts(normalize=True).sort_index()
        self.stratum_rows_ = {k: data.index[key == k] for k in self.strata_.index}
        self.pooled_ = self._mixture(num[complete]) if self.numeric_ else None
        self.mixtures_ = {}
        for k, rows in self.stratum_rows_.items():
            sub = num.loc[rows][complete.loc[rows]]
            self.mixtures_[k] = self._mixture(sub) if self.numeric_ and len(sub) >= max(10, 5 * len(self.numeric_)) else None

    def _transform(self, num: pd.DataFrame) -> np.ndarray:
        x = num.to_numpy(dtype=float).copy()
        for j, c in enumerate(self.numeric_):
            if c in self.log_:
                x[:, j] = np.log(x[:, j])
        return x

    def _mixture(self, num: pd.DataFrame):
        from sklearn.mixture import GaussianMixture

        x = self._transform(num)
        k = max(1, min(self.n_components, len(x) // max(5, 2 * x.shape[1])))
        return GaussianMixture(k, covariance_type="full", reg_covar=1e-6, random_state=0).fit(x)

    def sample(self, n: int, seed: int | None = None) -> pd.DataFrame:
        """``n`` new patients (columns as the source, ``subject_id`` ``"v<k>"``)."""
        if self.columns_ is None:
            raise RuntimeError("call fit(covariates) before sample()")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        rng = np.random.default_rng(self.seed if seed is None else seed)
        if self.method == "bootstrap":
            out = self.data_.iloc[rng.integers(0, len(self.data_), n)].reset_index(drop=True)
        else:
            strata = rng.choice(len(self.strata_), size=n, p=self.strata_.to_numpy())
            cols = {c: np.empty(n, dtype=object) for c in self.categorical_}
            cols.update({c: np.empty(n, dtype=float) for c in self.numeric_})
            for s_idx in np.unique(strata):
                key = self.strata_.index[s_idx]
                rows = np.flatnonzero(strata == s_idx)
                src = self.data_.loc[self.stratum_rows_[key]]
                for c in self.categorical_:  # the stratum fixes every categorical value
                    cols[c][rows] = src[c].iloc[0]
                if self.numeric_:
                    x = _draw(self.mixtures_[key] or self.pooled_, len(rows), rng)
                    for j, c in enumerate(self.numeric_):
                        v = np.exp(x[:, j]) if c in self.log_ else x[:, j]
                        cols[c][rows] = np.clip(v, self.low_[c], self.high_[c])
            for c in self.integral_:
                cols[c] = np.round(cols[c])
            out = pd.DataFrame({c: pd.Series(cols[c]).astype(self.dtypes_[c]) for c in self.columns_})
        out.insert(0, "subject_id", [f"v{k + 1:0{len(str(n))}d}" for k in range(n)])
        return out


def _draw(gm, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws from a fitted GaussianMixture with our generator (its own sample() uses its random_state)."""
    comp = rng.choice(len(gm.weights_), size=n, p=gm.weights_ / gm.weights_.sum())
    out = np.empty((n, gm.means_.shape[1]))
    for k in np.unique(comp):
        idx = comp == k
        out[idx] = rng.multivariate_normal(gm.means_[k], gm.covariances_[k], size=int(idx.sum()))
    return out


def _perturbed(twin, rng: np.random.Generator):
    """A copy of ``twin`` whose population estimates are one draw from their sampling distribution."""
    import torch

    from ..estimation.fisher import _tensor, population_columns

    u = getattr(twin, "uncertainty", None)
    if not u:
        raise ValueError("parameter_uncertainty needs the twin's standard errors (twin.uncertainty): estimate it "
                         "with SAEM and n_fisher > 0, or pass parameter_uncertainty=False")
    cols = population_columns(twin)
    names = [c["name"] for c in cols]
    if names != list(u["names"]):
        raise ValueError("twin.uncertainty does not match the twin's estimated quantities")
    cov = np.asarray(u["cov"], dtype=float)
    cov = (cov + cov.T) / 2
    w, V = np.linalg.eigh(cov)
    draw = np.asarray(u["estimate"], dtype=float) + V @ (np.sqrt(np.clip(w, 0, None)) * rng.standard_normal(len(w)))
    new = copy.deepcopy(twin)
    with torch.no_grad():
        for c, v in zip(cols, draw):
            t = _tensor(new, c["tensor"])
            t[c["index"]] = float(v)
    return new


def virtual_population(twin, n: int, covariates: pd.DataFrame, method: str = "gmm", cohort: str | None = None,
                       parameter_uncertainty: bool = False, replicates: int = 1, seed: int = 0,
                       categorical=None) -> pd.DataFrame:
    """``n`` virtual patients of a trained twin (per replicate): covariates drawn by a :class:`CovariateModel`
    of ``covariates`` (the source cohort's covariate table, e.g. the twin's training covariates), parameters
    from the twin's population model given those covariates (between-patient variability included).

    cohort: the twin's cohort whose population (cohort shifts) the patients belong to (default: the
    ``cohort`` column of ``covariates`` when there is one, resampled with the rest; else the reference
    cohort). parameter_uncertainty: draw the population estimates anew for each of ``replicates`` (from the
    covariance of the estimates; needs ``twin.uncertainty``), so that trial replicates carry the uncertainty of
    the fit as well as sampling; the result then has a ``replicate`` column (0..replicates-1) and
    ``replicates * n`` rows.

    Returns one row per patient: ``subject_id``, the covariates, ``cohort`` (when known), the twin's patient
    parameters (natural scale) -- a population for :class:`~hybridtwin.engine.TwinEngine`, a surrogate of the
    twin, or :func:`~hybridtwin.trials.run_trial`.
    """
    from ..engine import twin_population

    for name, v in (("n", n), ("replicates", replicates)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if replicates > 1 and not parameter_uncertainty:
        raise ValueError("replicates > 1 is for parameter_uncertainty=True (without it every replicate draws from "
                         "the same population: sample n * replicates patients instead)")
    if cohort is not None and cohort not in twin.cohort_names:
        raise ValueError(f"unknown cohort {cohort!r}; the twin knows {list(twin.cohort_names)}")
    cov_in = covariates.copy()
    if cohort is not None or "cohort" not in cov_in.columns:
        cov_in["cohort"] = cohort if cohort is not None else twin.cohort_names[0]
    model = CovariateModel(method, categorical=categorical, seed=seed).fit(cov_in)
    rng = np.random.default_rng(seed)
    frames = []
    for r in range(replicates):
        cov = model.sample(n, seed=int(rng.integers(2**31)))
        if "cohort" in cov.columns:
            bad = sorted(set(cov["cohort"].astype(str)) - set(twin.cohort_names))
            if bad:
                raise ValueError(f"covariates name cohort(s) {bad} the twin does not know ({list(twin.cohort_names)})")
        tw = _perturbed(twin, rng) if parameter_uncertainty else twin
        params = twin_population(tw, cov, per_patient=1, seed=int(rng.integers(2**31)))
        params = params.drop(columns=["subject_id"] + (["cohort"] if "cohort" in params.columns else []))
        pop = pd.concat([cov.reset_index(drop=True), params.reset_index(drop=True)], axis=1)
        if parameter_uncertainty:
            pop.insert(1, "replicate", r)
            pop["subject_id"] = [f"r{r}-{s}" for s in pop["subject_id"]]
        frames.append(pop)
    return pd.concat(frames, ignore_index=True)


def subgroup(population: pd.DataFrame, where) -> pd.DataFrame:
    """Patients of ``population`` matching ``where``: a pandas query string (``"age >= 65 and sex == 'F'"``)
    or a mapping ``{column: value | [low, high] | list of values}`` (``[low, high]`` closed, either end may be
    None; a list of more than two values, or of strings, is a set of allowed values). An unknown column or an
    empty result is an error."""
    if isinstance(where, str):
        try:
            out = population.query(where)
        except Exception as e:  # pandas raises many kinds for a bad expression
            raise ValueError(f"subgroup {where!r}: {e} (columns: {list(population.columns)})") from None
    elif isinstance(where, Mapping):
        unknown = [c for c in where if c not in population.columns]
        if unknown:
            raise ValueError(f"subgroup: column(s) {unknown} not in the population ({list(population.columns)})")
        keep = pd.Series(True, index=population.index)
        for c, v in where.items():
            col = population[c]
            if isinstance(v, (list, tuple)) and len(v) == 2 and all(x is None or isinstance(x, (int, float)) for x in v) \
                    and pd.api.types.is_numeric_dtype(col):
                lo, hi = (-math.inf if v[0] is None else v[0]), (math.inf if v[1] is None else v[1])
                keep &= col.between(lo, hi)
            elif isinstance(v, (list, tuple, set)):
                keep &= col.isin(list(v))
            else:
                keep &= col == v
        out = population[keep]
    else:
        raise ValueError(f"subgroup filter must be a query string or a mapping, got {type(where).__name__}")
    if out.empty:
        raise ValueError(f"subgroup {where!r} selects no patient of {len(population)}")
    return out
