"""Covariate preprocessing: scikit-learn for fitting, a JSON state for saving (nothing is unpickled).

Numeric columns: median imputation, then centring and scaling -- by default by the training mean and SD
(a covariate effect is then "per 1 SD above the training mean"), or by a stated centre and unit
(``scaling={"age": (50.0, 10.0)}``: "per 10 years above 50"); ``log10=`` columns are log10-transformed
first, and the centre and scale then apply to log10(value). Every numeric column that had missing values in
the training subjects also gets a 0/1 missing-value indicator (``age_missing``).

Categorical columns: reference (treatment) coding. A missing value is its own level (``"missing"``); the
reference level is the most frequent non-missing level in training (ties: the first in sorted order) or the
one given in ``reference={"sex": "M"}``; every other training level gets a named contrast ``sex[F vs M]``
(1 for that level, 0 otherwise), so a subject at the reference level encodes as all zeros and the
contrasts are not collinear with the population intercept. ``sex[missing vs M]`` exists only if ``sex``
was missing for some training subject. A level unseen in training encodes as all zeros (the reference)
and :meth:`CovariatePreprocessor.transform` warns (``UserWarning``) naming the column and the value(s).

Fit on training subjects only. ``units_`` says what one unit of each feature means (kind, centre, scale, a
sentence). :meth:`CovariatePreprocessor.to_dict` / :meth:`from_dict` carry the fitted state in plain JSON
types, and a loaded preprocessor transforms exactly as the fitted scikit-learn ``ColumnTransformer`` does
and reports the same units (tested). States written before reference coding (version 1, one column per
level ``sex=F``) still load and transform as they were fitted.

Example
-------
>>> import numpy as np, pandas as pd
>>> from hybridtwin.data import CovariatePreprocessor
>>> cov = pd.DataFrame({"subject_id": [1, 2, 3, 4], "age": [30.0, np.nan, 50.0, 70.0],
...                     "sex": ["F", "M", None, "M"]})
>>> pre = CovariatePreprocessor(scaling={"age": (50.0, 10.0)}).fit(cov)
>>> pre.feature_names_
['age', 'age_missing', 'sex[F vs M]', 'sex[missing vs M]']
>>> pre.transform(cov)
array([[-2.,  0.,  1.,  0.],
       [ 0.,  1.,  0.,  0.],
       [ 0.,  0.,  0.,  1.],
       [ 2.,  0.,  0.,  0.]])
>>> pre.units_.loc[0, "unit"]
'per 10 units of age, centred at 50'
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pandas as pd

MISSING = "missing"
VERSION = 2


def _affine(x, center, scale):
    """(x - center) / scale: the stated-unit scaling of one numeric column (a FunctionTransformer)."""
    return (np.asarray(x, dtype=float) - center) / scale


def _num(value: float) -> str:
    return f"{value:.4g}"


class CovariatePreprocessor:
    """Scaling, reference coding and explicit missing-value handling of a covariate table.

    numeric, categorical: column lists; by default every non-``subject_id`` column is numeric if its dtype
    is numeric or boolean, categorical otherwise.
    log10: numeric columns to log10-transform first (positive markers spanning orders of magnitude).
    reference: ``{categorical column: reference level}``; default the most frequent level in training.
    scaling: ``{numeric column: (centre, scale)}`` in the column's units (log10 units for ``log10`` columns);
        default the training mean and SD.

    Fitted attributes: ``feature_names_``, ``numeric_``, ``categorical_``, ``indicator_columns_``,
    ``reference_`` (``{column: reference level}``) and ``units_`` (a DataFrame: ``feature, column, kind``
    -- ``numeric``, ``missing-indicator`` or ``contrast`` -- ``center, scale, unit``).
    """

    def __init__(self, numeric: list[str] | None = None, categorical: list[str] | None = None,
                 log10: list[str] | tuple = (), reference: dict | None = None, scaling: dict | None = None):
        self.numeric = list(numeric) if numeric is not None else None
        self.categorical = list(categorical) if categorical is not None else None
        self.log10 = list(log10)
        self.reference = {str(k): str(v) for k, v in (reference or {}).items()}
        self.scaling = {}
        for c, cs in (scaling or {}).items():
            try:
                center, scale = (float(v) for v in cs)
            except (TypeError, ValueError):
                raise ValueError(f"scaling[{c!r}] must be a (centre, scale) pair of numbers, got {cs!r}") from None
            if not (np.isfinite(center) and np.isfinite(scale) and scale > 0):
                raise ValueError(f"scaling[{c!r}] = {cs!r}: the centre must be finite and the scale finite and > 0")
            self.scaling[str(c)] = (center, scale)

    # -- fitting with scikit-learn ----------------------------------------------------------------------------
    def fit(self, covariates: pd.DataFrame) -> "CovariatePreprocessor":
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import MissingIndicator, SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

        if not isinstance(covariates, pd.DataFrame) or len(covariates) == 0:
            raise ValueError("CovariatePreprocessor.fit needs a non-empty covariate DataFrame")
        cols = [c for c in covariates.columns if c != "subject_id"]
        numeric = self.numeric if self.numeric is not None else [
            c for c in cols if pd.api.types.is_numeric_dtype(covariates[c]) or pd.api.types.is_bool_dtype(covariates[c])]
        categorical = self.categorical if self.categorical is not None else [c for c in cols if c not in numeric]
        unknown = [c for c in numeric + categorical if c not in covariates.columns]
        if unknown:
            raise ValueError(f"covariate column(s) {unknown} are not in the table (columns: {cols})")
        for option, names, kind, allowed in (("log10", self.log10, "numeric", numeric),
                                             ("scaling", list(self.scaling), "numeric", numeric),
                                             ("reference", list(self.reference), "categorical", categorical)):
            wrong = [c for c in names if c not in allowed]
            if wrong:
                raise ValueError(f"{option} covariate(s) {wrong} must be {kind} columns ({kind}: {allowed})")
        all_missing = [c for c in numeric if covariates[c].isna().all()]
        if all_missing:
            raise ValueError(f"numeric covariate(s) {all_missing} have no observed value in the training subjects")
        with_missing = [c for c in numeric if covariates[c].isna().any()]
        frame = self._typed(covariates, numeric, categorical, self.log10)

        levels, reference = [], []
        for c in categorical:
            counts = Counter(frame[c])
            cats = sorted(counts)  # the order OneHotEncoder uses
            if c in self.reference:
                if self.reference[c] not in counts:
                    raise ValueError(f"reference level {self.reference[c]!r} of covariate {c!r} does not occur in the "
                                     f"training subjects (levels: {cats})")
                ref = self.reference[c]
            else:
                observed = [v for v in cats if v != MISSING] or cats
                ref = max(observed, key=lambda v: counts[v])  # first of the most frequent, in sorted order
            levels.append(cats)
            reference.append(ref)

        transformers = []
        for c in numeric:  # one pipeline per column keeps the features in column order
            scale = (FunctionTransformer(_affine, kw_args=dict(zip(("center", "scale"), self.scaling[c])))
                     if c in self.scaling else StandardScaler())
            transformers.append((f"num:{c}", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", scale)]),
                                 [c]))
        if with_missing:
            transformers.append(("miss", MissingIndicator(features="all"), with_missing))
        if categorical:
            transformers.append(("cat", OneHotEncoder(categories=[np.asarray(v, dtype=object) for v in levels],
                                                      drop=reference, handle_unknown="ignore", sparse_output=False),
                                 categorical))
        ct = ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)
        ct.fit(frame)

        state = {"numeric": numeric, "categorical": categorical, "indicators": with_missing, "log10": list(self.log10),
                 "scaling": [c for c in numeric if c in self.scaling], "median": [], "center": [], "scale": [],
                 "categories": levels, "reference": reference}
        state["min"] = [float(np.nanmin(frame[c].to_numpy(dtype=float))) for c in numeric]
        state["max"] = [float(np.nanmax(frame[c].to_numpy(dtype=float))) for c in numeric]
        for c in numeric:
            pipe = ct.named_transformers_[f"num:{c}"]
            state["median"].append(float(pipe.named_steps["impute"].statistics_[0]))
            if c in self.scaling:
                center, scale = self.scaling[c]
            else:
                scaler = pipe.named_steps["scale"]
                center, scale = float(scaler.mean_[0]), float(scaler.scale_[0])
            state["center"].append(center)
            state["scale"].append(scale)
        constant = [c for c in numeric if c not in self.scaling
                    and ct.named_transformers_[f"num:{c}"].named_steps["scale"].var_[0] == 0]
        self.column_transformer_ = ct
        self._set_state(state, constant)
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

    # -- the fitted state -------------------------------------------------------------------------------------------
    def _set_state(self, state: dict, constant=()) -> None:
        """Set every fitted attribute from the JSON state (shared by fit and from_dict)."""
        self.state_ = state
        self.numeric_, self.categorical_, self.indicator_columns_ = state["numeric"], state["categorical"], state["indicators"]
        refs = state["reference"]
        self.reference_ = {c: r for c, r in zip(state["categorical"], refs) if r is not None}
        contrasts = [(c, v, r) for c, cats, r in zip(state["categorical"], state["categories"], refs) for v in cats if v != r]
        self.feature_names_ = (list(state["numeric"]) + [f"{c}_missing" for c in state["indicators"]]
                               + [f"{c}={v}" if r is None else f"{c}[{v} vs {r}]" for c, v, r in contrasts])
        if "units" not in state:
            state["units"] = self._units(state, contrasts, constant)
        self.units_ = pd.DataFrame(state["units"], columns=["feature", "column", "kind", "center", "scale", "unit"])

    def _units(self, state: dict, contrasts: list, constant=()) -> list[dict]:
        rows = []
        for c, center, scale in zip(state["numeric"], state["center"], state["scale"]):
            log = "log10 " if c in state["log10"] else ""
            what = f"{log}unit{'' if scale == 1 else 's'} of {c}"
            if c in state["scaling"]:
                unit = f"per {_num(scale)} {what}, centred at {_num(center)}"
            elif c in constant:  # StandardScaler leaves a constant column unscaled
                unit = f"per 1 {log}unit of {c} ({c} did not vary in training), centred at the training mean {_num(center)}"
            else:
                unit = f"per 1 SD = {_num(scale)} {what}, centred at the training mean {_num(center)}"
            rows.append(dict(feature=c, column=c, kind="numeric", center=center, scale=scale, unit=unit))
        for c in state["indicators"]:
            med = state["median"][state["numeric"].index(c)]
            rows.append(dict(feature=f"{c}_missing", column=c, kind="missing-indicator", center=None, scale=None,
                             unit=f"1 if {c} is missing (imputed with the training median {_num(med)}), else 0"))
        for name, (c, v, r) in zip(self.feature_names_[len(rows):], contrasts):
            against = "any other level" if r is None else f"the reference level {r!r}"
            rows.append(dict(feature=name, column=c, kind="contrast", center=None, scale=None,
                             unit=f"1 if {c} is {v!r}, 0 for {against}"))
        return rows

    # -- transforming -----------------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "state_"):
            raise ValueError("CovariatePreprocessor is not fitted: call fit(training covariates) first")

    def transform(self, covariates: pd.DataFrame) -> np.ndarray:
        """(n_subjects, n_features) float array, rows in the order of ``covariates``.

        Warns (``UserWarning``, naming subjects and columns) when a categorical value was not seen in training
        (it encodes as the reference) and when a numeric value lies outside the training range by more than
        that range's width (``min - width`` .. ``max + width``, on the log10 scale for ``log10`` columns; a
        column constant in training allows one scaling unit): the twin extrapolates there.
        """
        self._check_fitted()
        st = self.state_
        missing = [c for c in st["numeric"] + st["categorical"] if c not in covariates.columns]
        if missing:
            raise ValueError(f"covariate table lacks column(s) {missing} the preprocessor was fitted with")
        frame = self._typed(covariates, st["numeric"], st["categorical"], st.get("log10", ()))
        unseen = []
        for c, cats, ref in zip(st["categorical"], st["categories"], st["reference"]):
            new = sorted(set(frame[c]) - set(cats))
            if new:
                as_what = "all zeros" if ref is None else f"the reference level {ref!r}"
                unseen.append(f"{c!r}: {new} ({int(frame[c].isin(new).sum())} subject(s); encoded as {as_what})")
        if unseen:
            warnings.warn("covariate value(s) not seen in the training subjects -- " + "; ".join(unseen),
                          UserWarning, stacklevel=2)
        far = self._far_outside(frame, covariates)
        if far:
            warnings.warn("covariate value(s) far outside the training range (beyond min - width .. max + width of the "
                          "training values): predictions extrapolate -- " + "; ".join(far), UserWarning, stacklevel=2)
        if getattr(self, "column_transformer_", None) is not None:
            with warnings.catch_warnings():  # reported above, with column names and values
                warnings.filterwarnings("ignore", message="Found unknown categories", category=UserWarning)
                return np.asarray(self.column_transformer_.transform(frame), dtype=float)
        return self._transform_from_state(frame)

    def _far_outside(self, frame: pd.DataFrame, covariates: pd.DataFrame) -> list[str]:
        st = self.state_
        if "min" not in st:  # fitted by an older version: no range recorded
            return []
        ids = covariates["subject_id"].tolist() if "subject_id" in covariates.columns else list(range(len(frame)))
        out = []
        for c, lo, hi, scale in zip(st["numeric"], st["min"], st["max"], st["scale"]):
            width = hi - lo if hi > lo else float(scale)
            x = frame[c].to_numpy(dtype=float)
            bad = np.nonzero(np.isfinite(x) & ((x < lo - width) | (x > hi + width)))[0]
            if len(bad):
                shown = ", ".join(f"{ids[i]!s}: {covariates[c].iloc[i]!r}" for i in bad[:5])
                log = "log10 " if c in st.get("log10", ()) else ""
                out.append(f"{c!r} ({log}training range {lo:.4g}..{hi:.4g}) for {len(bad)} subject(s): {shown}")
        return out

    def _transform_from_state(self, frame: pd.DataFrame) -> np.ndarray:
        st = self.state_
        parts = []
        if st["numeric"]:
            x = frame[st["numeric"]].to_numpy(dtype=float)
            x = np.where(np.isnan(x), np.asarray(st["median"]), x)
            parts.append((x - np.asarray(st["center"])) / np.asarray(st["scale"]))
        if st["indicators"]:
            parts.append(frame[st["indicators"]].isna().to_numpy(dtype=float))
        for c, cats, ref in zip(st["categorical"], st["categories"], st["reference"]):
            kept = np.asarray([v for v in cats if v != ref], dtype=object)
            parts.append((frame[c].to_numpy(dtype=object)[:, None] == kept[None, :]).astype(float))
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 0))

    def fit_transform(self, covariates: pd.DataFrame) -> np.ndarray:
        return self.fit(covariates).transform(covariates)

    # -- saving without pickle --------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The fitted state in JSON types (for model cards / checkpoints), units included."""
        self._check_fitted()
        return {"kind": "CovariatePreprocessor", "version": VERSION, **self.state_}

    @classmethod
    def from_dict(cls, state: dict) -> "CovariatePreprocessor":
        version = state.get("version")
        if state.get("kind") != "CovariatePreprocessor" or version not in (1, VERSION):
            raise ValueError(f"not a CovariatePreprocessor state (kind={state.get('kind')!r}, version={version!r})")
        st = {k: state[k] for k in ("numeric", "categorical", "indicators", "median", "scale", "categories")}
        st["log10"] = list(state.get("log10", ()))
        if "min" in state:
            st["min"], st["max"] = list(state["min"]), list(state["max"])
        if version == 1:  # one column per level (reference None), numeric scaled by the training mean and SD
            st.update(center=list(state["mean"]), scaling=[], reference=[None] * len(st["categorical"]))
        else:
            st.update(center=list(state["center"]), scaling=list(state["scaling"]), reference=list(state["reference"]),
                      units=[dict(r) for r in state["units"]])
        scaling = {c: (st["center"][i], st["scale"][i]) for i, c in enumerate(st["numeric"]) if c in st["scaling"]}
        pre = cls(st["numeric"], st["categorical"], st["log10"], scaling=scaling,
                  reference={c: r for c, r in zip(st["categorical"], st["reference"]) if r is not None})
        pre.column_transformer_ = None
        pre._set_state(st)
        return pre
