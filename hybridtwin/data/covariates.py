"""Covariate preprocessing: scikit-learn for fitting, a JSON state for saving (nothing is unpickled).

Numeric columns: median imputation + standardisation, plus a missing-value indicator for every numeric
column that had missing values in the training subjects. Categorical columns: a missing value is its own
category (``"missing"``), then one-hot encoding; categories unseen in training encode as all zeros.

Fit on training subjects only; :meth:`CovariatePreprocessor.to_dict` / :meth:`from_dict` carry the fitted
state in plain JSON types, and a loaded preprocessor transforms exactly as the fitted scikit-learn
``ColumnTransformer`` does (tested).

Example
-------
>>> import numpy as np, pandas as pd
>>> from hybridtwin.data import CovariatePreprocessor
>>> cov = pd.DataFrame({"subject_id": [1, 2, 3], "age": [30.0, np.nan, 50.0], "sex": ["F", "M", None]})
>>> pre = CovariatePreprocessor().fit(cov)
>>> pre.feature_names_
['age', 'age_missing', 'sex=F', 'sex=M', 'sex=missing']
>>> pre.transform(cov).shape
(3, 5)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MISSING = "missing"


class CovariatePreprocessor:
    """Scaling, one-hot encoding and explicit missing-value handling of a covariate table.

    numeric, categorical: column lists; by default every non-``subject_id`` column is numeric if its dtype
    is numeric or boolean, categorical otherwise.
    log10: numeric columns to log10-transform first (positive markers spanning orders of magnitude).
    """

    def __init__(self, numeric: list[str] | None = None, categorical: list[str] | None = None,
                 log10: list[str] | tuple = ()):
        self.numeric = list(numeric) if numeric is not None else None
        self.categorical = list(categorical) if categorical is not None else None
        self.log10 = list(log10)

    # -- fitting with scikit-learn ----------------------------------------------------------------------------
    def fit(self, covariates: pd.DataFrame) -> "CovariatePreprocessor":
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import MissingIndicator, SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        if not isinstance(covariates, pd.DataFrame) or len(covariates) == 0:
            raise ValueError("CovariatePreprocessor.fit needs a non-empty covariate DataFrame")
        cols = [c for c in covariates.columns if c != "subject_id"]
        numeric = self.numeric if self.numeric is not None else [
            c for c in cols if pd.api.types.is_numeric_dtype(covariates[c]) or pd.api.types.is_bool_dtype(covariates[c])]
        categorical = self.categorical if self.categorical is not None else [c for c in cols if c not in numeric]
        unknown = [c for c in numeric + categorical if c not in covariates.columns]
        if unknown:
            raise ValueError(f"covariate column(s) {unknown} are not in the table (columns: {cols})")
        not_numeric = [c for c in self.log10 if c not in numeric]
        if not_numeric:
            raise ValueError(f"log10 covariate(s) {not_numeric} must be numeric columns (numeric: {numeric})")
        all_missing = [c for c in numeric if covariates[c].isna().all()]
        if all_missing:
            raise ValueError(f"numeric covariate(s) {all_missing} have no observed value in the training subjects")
        with_missing = [c for c in numeric if covariates[c].isna().any()]
        frame = self._typed(covariates, numeric, categorical, self.log10)
        transformers = []
        if numeric:
            transformers.append(("num", Pipeline([("impute", SimpleImputer(strategy="median")),
                                                  ("scale", StandardScaler())]), numeric))
        if with_missing:
            transformers.append(("miss", MissingIndicator(features="all"), with_missing))
        if categorical:
            transformers.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical))
        ct = ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)
        ct.fit(frame)
        self.numeric_, self.categorical_, self.indicator_columns_ = numeric, categorical, with_missing
        self.column_transformer_ = ct
        state = {"numeric": numeric, "categorical": categorical, "indicators": with_missing, "log10": list(self.log10),
                 "median": [], "mean": [], "scale": [], "categories": []}
        if numeric:
            pipe = ct.named_transformers_["num"]
            state["median"] = pipe.named_steps["impute"].statistics_.astype(float).tolist()
            state["mean"] = pipe.named_steps["scale"].mean_.astype(float).tolist()
            state["scale"] = pipe.named_steps["scale"].scale_.astype(float).tolist()
        if categorical:
            state["categories"] = [[str(v) for v in cats] for cats in ct.named_transformers_["cat"].categories_]
        self.state_ = state
        self.feature_names_ = (numeric + [f"{c}_missing" for c in with_missing]
                               + [f"{c}={v}" for c, cats in zip(categorical, state["categories"]) for v in cats])
        return self

    @staticmethod
    def _typed(covariates: pd.DataFrame, numeric: list[str], categorical: list[str], log10=()) -> pd.DataFrame:
        frame = pd.DataFrame(index=range(len(covariates)))
        for c in numeric:
            values = pd.to_numeric(covariates[c], errors="coerce")
            bad = values.isna() & covariates[c].notna()
            if bad.any():
                raise ValueError(f"numeric covariate {c!r} has non-numeric values {covariates[c][bad].tolist()[:5]}")
            values = values.to_numpy(dtype=float)
            if c in log10:
                if (values <= 0).any():
                    raise ValueError(f"covariate {c!r} is log10-transformed but has values <= 0")
                values = np.log10(values)
            frame[c] = values
        for c in categorical:
            col = covariates[c]
            frame[c] = np.where(col.isna(), MISSING, col.astype(str)).astype(object)
        return frame

    # -- transforming -----------------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "state_"):
            raise ValueError("CovariatePreprocessor is not fitted: call fit(training covariates) first")

    def transform(self, covariates: pd.DataFrame) -> np.ndarray:
        """(n_subjects, n_features) float array, rows in the order of ``covariates``."""
        self._check_fitted()
        st = self.state_
        missing = [c for c in st["numeric"] + st["categorical"] if c not in covariates.columns]
        if missing:
            raise ValueError(f"covariate table lacks column(s) {missing} the preprocessor was fitted with")
        frame = self._typed(covariates, st["numeric"], st["categorical"], st.get("log10", ()))
        if getattr(self, "column_transformer_", None) is not None:
            return np.asarray(self.column_transformer_.transform(frame), dtype=float)
        return self._transform_from_state(frame)

    def _transform_from_state(self, frame: pd.DataFrame) -> np.ndarray:
        st = self.state_
        parts = []
        if st["numeric"]:
            x = frame[st["numeric"]].to_numpy(dtype=float)
            x = np.where(np.isnan(x), np.asarray(st["median"]), x)
            parts.append((x - np.asarray(st["mean"])) / np.asarray(st["scale"]))
        if st["indicators"]:
            parts.append(frame[st["indicators"]].isna().to_numpy(dtype=float))
        for c, cats in zip(st["categorical"], st["categories"]):
            parts.append((frame[c].to_numpy(dtype=object)[:, None] == np.asarray(cats, dtype=object)[None, :]).astype(float))
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 0))

    def fit_transform(self, covariates: pd.DataFrame) -> np.ndarray:
        return self.fit(covariates).transform(covariates)

    # -- saving without pickle --------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The fitted state in JSON types (for model cards / checkpoints)."""
        self._check_fitted()
        return {"kind": "CovariatePreprocessor", "version": 1, **self.state_}

    @classmethod
    def from_dict(cls, state: dict) -> "CovariatePreprocessor":
        if state.get("kind") != "CovariatePreprocessor" or state.get("version") != 1:
            raise ValueError(f"not a CovariatePreprocessor state (kind={state.get('kind')!r}, version={state.get('version')!r})")
        pre = cls(state["numeric"], state["categorical"], state.get("log10", ()))
        pre.numeric_, pre.categorical_, pre.indicator_columns_ = state["numeric"], state["categorical"], state["indicators"]
        pre.state_ = {k: state[k] for k in ("numeric", "categorical", "indicators", "median", "mean", "scale", "categories")}
        pre.state_["log10"] = list(state.get("log10", ()))
        pre.column_transformer_ = None
        pre.feature_names_ = (state["numeric"] + [f"{c}_missing" for c in state["indicators"]]
                              + [f"{c}={v}" for c, cats in zip(state["categorical"], state["categories"]) for v in cats])
        return pre
