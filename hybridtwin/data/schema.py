"""Canonical long tables and their validation.

Three tables describe a multi-cohort longitudinal data set:

- **observations**: one row per measurement: ``subject_id, time, observable, value`` plus optional
  ``cohort``, ``lloq`` (lower limit of quantification, on the scale of ``value``) and ``censored`` (the value
  is only known to be below ``lloq``; its ``value`` is then the limit itself);
- **doses**: ``subject_id, time, amount, target, duration`` (optional ``interval``, ``additional`` as
  NONMEM II/ADDL);
- **covariates**: one row per subject: ``subject_id`` plus numeric or categorical columns (missing values
  allowed; they are handled explicitly by :class:`hybridtwin.data.CovariatePreprocessor`).

:func:`validate` checks them, types and sorts them, and returns a :class:`CohortData`, or raises a
``ValueError`` naming the column, the subjects and the offending rows (row labels of the table as given).
Nothing is silently dropped: what a loader excludes on purpose is counted in ``CohortData.report``.

Subject ids are strings
-----------------------
:func:`validate` turns the ``subject_id`` column of every table into Python strings
(:func:`normalise_subject_ids`), one rule for every table and for :mod:`hybridtwin.data.nonmem`:

- a column of strings is kept as it is (``"007"``, ``"7"`` and ``"07"`` are three subjects);
- a column of integers becomes their decimal strings (``1`` -> ``"1"``), as read from a CSV file;
- a column of floats (e.g. integers that a CSV reader turned into floats) is accepted only if every value is
  a whole number (below 2**53), and becomes the integer's string (``1.0`` -> ``"1"``); ``1.5`` is refused;
- a column that mixes value types (``1`` and ``"1"``, ``True`` and ``1``, ``1`` and ``1.0`` in an object
  column), booleans, other types, missing ids (NaN/None/empty strings) and strings with leading or
  trailing white space are refused, naming the rows.

Each table is converted on its own, so integer ids in the observations match the same integers in the
covariates. Tables are sorted by these strings (``"10"`` sorts before ``"2"``).

Times and scope
---------------
Times are on the data's own clock and may be negative (e.g. days relative to symptom onset or to the peak
viral load, as in some real-data loaders); pass ``min_time=0.0`` to :func:`validate` to refuse, naming the
subjects and their times, observations and doses before the time origin of a simulation. Every subject
needs at least one observation: an empty observations table and doses of subjects without observations are
refused. Duplicated column names are refused in every table.

Example
-------
>>> import pandas as pd
>>> from hybridtwin.data import validate
>>> obs = pd.DataFrame({"subject_id": [1, 1, 2], "time": [1.0, 2.0, 1.0], "observable": "log10_V",
...                     "value": [3.2, 0.5, 4.1], "lloq": 0.5, "censored": [False, True, False]})
>>> data = validate(obs)
>>> data.report["n_subjects"], data.report["n_censored"]
(2, 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import numpy as np
import pandas as pd

OBS_REQUIRED = ("subject_id", "time", "observable", "value")
OBS_COLUMNS = OBS_REQUIRED + ("cohort", "lloq", "censored")
DOSE_REQUIRED = ("subject_id", "time", "amount", "target")
DOSE_COLUMNS = DOSE_REQUIRED + ("duration", "interval", "additional")
DEFAULT_COHORT = "all"


@dataclass
class CohortData:
    """Validated observations, doses and covariates (pandas DataFrames), plus what is known about them.

    ``report`` counts subjects, rows, censored rows per cohort and anything excluded on purpose (with the
    reason). Virtual cohorts also carry ``true_parameters`` (one row per subject) and ``trajectories``
    (noise-free observables in the observation schema); ``meta`` holds free-form provenance (source,
    citation, ground truth of a simulation).
    """

    observations: pd.DataFrame
    doses: pd.DataFrame
    covariates: pd.DataFrame
    report: dict = field(default_factory=dict)
    true_parameters: pd.DataFrame | None = None
    trajectories: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)

    @property
    def subject_ids(self) -> list:
        """Subjects in order of first appearance in the (sorted) observations, then dose-only subjects."""
        ids = list(pd.unique(self.observations["subject_id"]))
        seen = set(ids)
        extra = [s for s in pd.unique(self.doses["subject_id"]) if s not in seen]
        return ids + extra

    @property
    def cohorts(self) -> list[str]:
        return sorted(self.observations["cohort"].unique().tolist())

    @property
    def observables(self) -> list[str]:
        return sorted(self.observations["observable"].unique().tolist())

    def with_report(self, **entries: Any) -> "CohortData":
        """A copy whose report also holds ``entries`` (e.g. ``excluded={"no samples": 3}``)."""
        return replace(self, report={**self.report, **entries})

    def subset(self, subject_ids: Iterable) -> "CohortData":
        """The data of the given subjects only (tables keep their order; report recomputed)."""
        keep = set(subject_ids)
        known = set(self.subject_ids)
        unknown = keep - known
        if unknown:
            hint = ""
            if any(not isinstance(s, str) and str(s) in known for s in unknown):
                hint = " (subject ids are strings after validate(): use e.g. '1', not 1)"
            raise ValueError(f"subset: unknown subject(s) {sorted(unknown, key=str)[:10]}{hint}")

        def cut(df):
            return None if df is None else df[df["subject_id"].isin(keep)].reset_index(drop=True)

        obs, doses, cov = cut(self.observations), cut(self.doses), cut(self.covariates)
        report = {k: v for k, v in self.report.items() if k in ("excluded", "source")}
        report.update(_counts(obs, doses, cov))
        return CohortData(obs, doses, cov, report, cut(self.true_parameters), cut(self.trajectories), dict(self.meta))

    def summary(self) -> pd.DataFrame:
        """Per-cohort counts: subjects, observations, censored observations, observables, doses."""
        obs = self.observations
        rows = []
        for cohort, g in obs.groupby("cohort", sort=True):
            subs = set(g["subject_id"])
            rows.append(dict(cohort=cohort, subjects=len(subs), observations=len(g),
                             censored=int(g["censored"].sum()), observables=", ".join(sorted(g["observable"].unique())),
                             doses=int(self.doses["subject_id"].isin(subs).sum()),
                             time_min=float(g["time"].min()), time_max=float(g["time"].max())))
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        r = self.report
        return (f"CohortData({r.get('n_subjects')} subjects, {r.get('n_observations')} observations "
                f"({r.get('n_censored')} censored), {r.get('n_doses')} doses, cohorts={self.cohorts})")


def _rows(mask: np.ndarray, frame: pd.DataFrame, limit: int = 10) -> str:
    idx = np.nonzero(np.asarray(mask))[0]
    labels = frame.index[idx[:limit]].tolist()
    subjects = pd.unique(frame["subject_id"].iloc[idx]) if "subject_id" in frame.columns else []
    more = f" (+{len(idx) - limit} more)" if len(idx) > limit else ""
    return f"subject(s) {list(subjects[:limit])}, rows {labels}{more}"


def _require(frame: pd.DataFrame, required: Iterable[str], table: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{table} must be a pandas DataFrame, got {type(frame).__name__}")
    dup = frame.columns[frame.columns.duplicated()]
    if len(dup):
        raise ValueError(f"{table} table has duplicated column name(s) {list(pd.unique(dup))}; "
                         f"each column must appear once (columns: {list(frame.columns)})")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{table} table is missing required column(s) {missing}; it has {list(frame.columns)}"
        )


def _numeric(frame: pd.DataFrame, column: str, table: str, allow_nan: bool = False) -> np.ndarray:
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad_type = np.isnan(values) & raw.notna().to_numpy()
    if bad_type.any():
        raise ValueError(f"{table} column {column!r} has non-numeric values {raw[bad_type].tolist()[:5]} in "
                         f"{_rows(bad_type, frame)}")
    bad = ~np.isfinite(values) if not allow_nan else np.isinf(values)
    if bad.any():
        raise ValueError(f"{table} column {column!r} has non-finite values in {_rows(bad, frame)}")
    return values


_MAX_EXACT_FLOAT = 2.0 ** 53


def _id_kind(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, str):
        return "str"
    return type(value).__name__


def _row_list(index: pd.Index, mask: np.ndarray, limit: int = 10) -> str:
    idx = np.nonzero(np.asarray(mask))[0]
    more = f" (+{len(idx) - limit} more)" if len(idx) > limit else ""
    return f"{index[idx[:limit]].tolist()}{more}"


def _float_id_strings(values: np.ndarray, index: pd.Index, table: str, column: str) -> list[str]:
    bad = ~np.isfinite(values) | (np.abs(values) >= _MAX_EXACT_FLOAT)
    bad[~bad] = values[~bad] != np.round(values[~bad])
    if bad.any():
        raise ValueError(f"{table} column {column!r} holds floats that are not whole numbers "
                         f"{values[bad][:5].tolist()} in rows {_row_list(index, bad)}; float ids are accepted only "
                         "when every one is a whole number (1.0 -> '1'); give ids as strings or integers")
    return [str(int(v)) for v in values]


def normalise_subject_ids(ids, table: str = "observations", column: str = "subject_id") -> pd.Series:
    """The subject ids of one table column as Python strings (the rule of the module docstring).

    Returns a Series with the index of ``ids``; raises ``ValueError`` naming ``table``, ``column`` and the
    row labels for missing ids, mixed value types, booleans, non-whole floats, unsupported types and strings
    with surrounding white space.
    """
    s = ids if isinstance(ids, pd.Series) else pd.Series(ids)
    index = s.index
    missing = s.isna().to_numpy()
    if missing.any():
        raise ValueError(f"{table} column {column!r} has missing ids (NaN/None) in rows {_row_list(index, missing)}")
    if pd.api.types.is_bool_dtype(s.dtype):
        raise ValueError(f"{table} column {column!r} holds booleans; subject ids must be strings or integers "
                         f"(rows {_row_list(index, np.ones(len(s), dtype=bool))})")
    if pd.api.types.is_integer_dtype(s.dtype):
        out = [str(int(v)) for v in s.to_numpy()]
    elif pd.api.types.is_float_dtype(s.dtype):
        out = _float_id_strings(s.to_numpy(dtype=float), index, table, column)
    else:
        values = s.astype(object).to_numpy()
        kinds = np.array([_id_kind(v) for v in values], dtype=object)
        found = list(pd.unique(kinds))
        if len(found) > 1:
            parts = []
            for k in found:
                m = kinds == k
                parts.append(f"{k} in rows {_row_list(index, m, 5)} (e.g. {values[m][0]!r})")
            raise ValueError(f"{table} column {column!r} mixes id types: {'; '.join(parts)}. Ids of one table must "
                             "be all strings or all integers (1 and '1', or True and 1, or 1 and 1.0 would be "
                             "ambiguous)")
        kind = found[0] if found else "str"
        if kind == "str":
            out = [str(v) for v in values]
            blank = np.array([v.strip() == "" for v in out], dtype=bool)
            if blank.any():
                raise ValueError(f"{table} column {column!r} has empty ids in rows {_row_list(index, blank)}")
            padded = np.array([v != v.strip() for v in out], dtype=bool)
            if padded.any():
                raise ValueError(f"{table} column {column!r} has ids with leading or trailing white space "
                                 f"{[out[i] for i in np.nonzero(padded)[0][:5]]} in rows {_row_list(index, padded)}; "
                                 "strip them first (they would be subjects distinct from the stripped ids)")
        elif kind == "int":
            out = [str(int(v)) for v in values]
        elif kind == "float":
            out = _float_id_strings(values.astype(float), index, table, column)
        else:
            what = "booleans" if kind == "bool" else f"values of type {kind}"
            raise ValueError(f"{table} column {column!r} holds {what}; subject ids must be strings or integers "
                             f"(rows {_row_list(index, np.ones(len(s), dtype=bool))})")
    return pd.Series(out, index=index, dtype=object, name=column)


def _with_string_ids(frame: pd.DataFrame | None, required: Iterable[str], table: str) -> pd.DataFrame | None:
    if frame is None:
        return None
    _require(frame, required, table)
    return frame.assign(subject_id=normalise_subject_ids(frame["subject_id"], table).to_numpy())


def check_min_time(frame: pd.DataFrame, min_time: float, table: str) -> None:
    """Raise a ``ValueError`` naming the subjects and their times if ``frame`` has times before ``min_time``."""
    early = (frame["time"] < min_time).to_numpy()
    if early.any():
        bad = frame.loc[early]
        per = bad.groupby("subject_id", sort=False)["time"].apply(lambda t: sorted(t.tolist()))
        shown = "; ".join(f"subject {k!r}: {v[:5]}" for k, v in list(per.items())[:10])
        more = f" (+{len(per) - 10} more subjects)" if len(per) > 10 else ""
        raise ValueError(f"{table}: {int(early.sum())} time(s) before min_time={min_time:g} in {len(per)} subject(s): "
                         f"{shown}{more}; shift the times to the model's clock before fitting")


def _check_subject_ids(frame: pd.DataFrame, table: str) -> None:
    missing = frame["subject_id"].isna().to_numpy()
    if missing.any():
        raise ValueError(f"{table} column 'subject_id' is missing in rows {frame.index[missing][:10].tolist()}")


def _validate_observations(obs: pd.DataFrame, model) -> tuple[pd.DataFrame, dict]:
    _require(obs, OBS_REQUIRED, "observations")
    _check_subject_ids(obs, "observations")
    notes: dict = {}
    out = pd.DataFrame({"subject_id": obs["subject_id"].to_numpy(), "time": _numeric(obs, "time", "observations")},
                       index=obs.index)
    out["observable"] = obs["observable"].astype(str).to_numpy()
    censored = np.zeros(len(obs), dtype=bool)
    if "censored" in obs.columns:
        raw = obs["censored"]
        if raw.isna().any():
            raise ValueError(f"observations column 'censored' has missing values in {_rows(raw.isna().to_numpy(), obs)}")
        try:
            censored = raw.astype(bool).to_numpy() if raw.dtype == bool else raw.astype(int).to_numpy().astype(bool)
        except (TypeError, ValueError):
            raise ValueError("observations column 'censored' must be boolean (True/False or 1/0)") from None
        if raw.dtype != bool and not set(np.unique(raw.astype(int))) <= {0, 1}:
            raise ValueError(f"observations column 'censored' must be 0/1 or boolean, got {sorted(raw.unique())[:5]}")
    lloq = _numeric(obs, "lloq", "observations", allow_nan=True) if "lloq" in obs.columns else np.full(len(obs), np.nan)
    no_limit = censored & np.isnan(lloq)
    if no_limit.any():
        raise ValueError(f"observations: censored rows need a finite 'lloq' (the limit they are below); "
                         f"missing in {_rows(no_limit, obs)}")
    value = _numeric(obs, "value", "observations", allow_nan=True)
    missing_value = np.isnan(value) & ~censored
    if missing_value.any():
        raise ValueError(f"observations column 'value' is missing or non-finite for uncensored "
                         f"{_rows(missing_value, obs)}; drop such rows explicitly (and report them) or mark them censored")
    filled = censored & (np.isnan(value) | (value != lloq))
    if filled.any():
        notes["censored_values_set_to_lloq"] = int(filled.sum())
    value = np.where(censored, lloq, value)
    below = ~censored & ~np.isnan(lloq) & (value < lloq)
    if below.any():
        notes["uncensored_below_lloq"] = int(below.sum())
    out["value"] = value
    out["lloq"] = lloq
    out["censored"] = censored
    if "cohort" in obs.columns:
        if obs["cohort"].isna().any():
            raise ValueError(f"observations column 'cohort' is missing in {_rows(obs['cohort'].isna().to_numpy(), obs)}")
        out["cohort"] = obs["cohort"].astype(str).to_numpy()
        multi = out.groupby("subject_id")["cohort"].nunique()
        if (multi > 1).any():
            raise ValueError(f"observations: a subject belongs to one cohort; subject(s) {multi[multi > 1].index.tolist()[:10]} "
                             "have several")
    else:
        out["cohort"] = DEFAULT_COHORT
    dup = out.duplicated(["subject_id", "time", "observable"], keep=False).to_numpy()
    if dup.any():
        raise ValueError(f"observations: duplicate (subject_id, time, observable) in {_rows(dup, obs)}; "
                         "average replicates or give them distinct observables before validating")
    if model is not None:
        known = set(model.observable_names) | set(model.all_state_names)
        unknown = ~out["observable"].isin(known).to_numpy()
        if unknown.any():
            raise ValueError(f"observations: observable(s) {sorted(set(out['observable'][unknown]))} are not known to model "
                             f"{model.name!r} (observables: {model.observable_names}, states: {model.all_state_names}); "
                             f"{_rows(unknown, obs)}")
    extra = [c for c in obs.columns if c not in OBS_COLUMNS]
    if extra:
        notes["ignored_observation_columns"] = extra
    out = out[list(OBS_COLUMNS)].sort_values(["subject_id", "time", "observable"], kind="stable").reset_index(drop=True)
    return out, notes


def _validate_doses(doses: pd.DataFrame | None, model, subjects: set) -> pd.DataFrame:
    cols = list(DOSE_COLUMNS)
    if doses is None or len(doses) == 0:
        if doses is not None:
            _require(doses, DOSE_REQUIRED, "doses")
        empty = pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
        empty["subject_id"] = pd.Series(dtype=object)
        empty["target"] = pd.Series(dtype=str)
        return empty
    _require(doses, DOSE_REQUIRED, "doses")
    _check_subject_ids(doses, "doses")
    out = pd.DataFrame({"subject_id": doses["subject_id"].to_numpy()}, index=doses.index)
    out["time"] = _numeric(doses, "time", "doses")
    out["amount"] = _numeric(doses, "amount", "doses")
    if (out["amount"] < 0).any():
        raise ValueError(f"doses: negative 'amount' in {_rows((out['amount'] < 0).to_numpy(), doses)}")
    out["target"] = doses["target"].astype(str).to_numpy()
    out["duration"] = np.nan_to_num(_numeric(doses, "duration", "doses", allow_nan=True), nan=0.0) if "duration" in doses else 0.0
    if (out["duration"] < 0).any():
        raise ValueError(f"doses: negative 'duration' in {_rows((out['duration'] < 0).to_numpy(), doses)}")
    out["interval"] = _numeric(doses, "interval", "doses", allow_nan=True) if "interval" in doses else np.nan
    add = _numeric(doses, "additional", "doses", allow_nan=True) if "additional" in doses else np.zeros(len(doses))
    add = np.nan_to_num(add, nan=0.0)
    bad = (add < 0) | (add != np.round(add))
    if bad.any():
        raise ValueError(f"doses: 'additional' (ADDL) must be a non-negative integer in {_rows(bad, doses)}")
    no_ii = (add > 0) & ~(out["interval"].to_numpy() > 0)
    if no_ii.any():
        raise ValueError(f"doses: repeated doses (additional > 0) need an 'interval' (II) > 0 in {_rows(no_ii, doses)}")
    out["additional"] = add.astype(int)
    if model is not None:
        known = set(model.interventions)
        unknown = ~out["target"].isin(known).to_numpy()
        if unknown.any():
            raise ValueError(f"doses: target(s) {sorted(set(out['target'][unknown]))} do not exist in model {model.name!r}; "
                             f"valid targets: {sorted(known)}; {_rows(unknown, doses)}")
    if subjects:
        stray = ~out["subject_id"].isin(subjects).to_numpy()
        if stray.any():
            raise ValueError(f"doses: subjects without any observation: {_rows(stray, doses)}")
    return out[cols].sort_values(["subject_id", "time"], kind="stable").reset_index(drop=True)


def _validate_covariates(cov: pd.DataFrame | None, order: list) -> tuple[pd.DataFrame, dict]:
    subjects = set(order)
    if cov is None:
        return pd.DataFrame({"subject_id": order}), {}
    _require(cov, ("subject_id",), "covariates")
    _check_subject_ids(cov, "covariates")
    dup = cov["subject_id"].duplicated(keep=False).to_numpy()
    if dup.any():
        raise ValueError(f"covariates: one row per subject expected; duplicated {_rows(dup, cov)}")
    unknown = ~cov["subject_id"].isin(subjects).to_numpy()
    if unknown.any():
        raise ValueError(f"covariates given for unknown subjects (no observations): {_rows(unknown, cov)}")
    out = cov.copy()
    for c in out.columns:
        if c == "subject_id":
            continue
        col = out[c]
        if pd.api.types.is_bool_dtype(col):
            out[c] = col.astype(float)
        elif pd.api.types.is_numeric_dtype(col):
            values = col.to_numpy(dtype=float)
            if np.isinf(values).any():
                raise ValueError(f"covariates column {c!r} has infinite values in {_rows(np.isinf(values), cov)}")
            out[c] = values
        else:
            out[c] = col.astype("string").astype(object).where(col.notna(), np.nan)
    missing = sorted(subjects - set(out["subject_id"]), key=str)
    notes = {"subjects_without_covariates": len(missing),
             "missing_covariate_values": {c: int(out[c].isna().sum()) for c in out.columns if c != "subject_id" and out[c].isna().any()}}
    if missing:
        out = pd.concat([out, pd.DataFrame({"subject_id": missing})], ignore_index=True)
    rank = {s: i for i, s in enumerate(order)}
    out = out.iloc[np.argsort(out["subject_id"].map(rank).to_numpy(), kind="stable")].reset_index(drop=True)
    return out, notes


def _counts(obs: pd.DataFrame, doses: pd.DataFrame, cov: pd.DataFrame) -> dict:
    per_cohort = obs.groupby("cohort")["subject_id"].nunique().to_dict()
    return dict(n_subjects=int(obs["subject_id"].nunique()), n_observations=len(obs),
                n_censored=int(obs["censored"].sum()), n_doses=len(doses), n_cohorts=len(per_cohort),
                subjects_per_cohort={str(k): int(v) for k, v in per_cohort.items()},
                covariates=[c for c in cov.columns if c != "subject_id"])


def check_observations(observations: pd.DataFrame, model=None) -> pd.DataFrame:
    """One observation table checked and normalised exactly as :func:`validate` does it (string ids, required
    columns, numeric values, censoring, observables of ``model``); returns the canonical table. For code that
    handles tables one at a time (personalising new patients)."""
    table = _with_string_ids(observations, OBS_REQUIRED, "observations")
    return _validate_observations(table, model)[0]


def check_doses(doses: pd.DataFrame | None, model=None) -> pd.DataFrame:
    """One dose table checked and normalised as :func:`validate` does it (``None`` or empty: an empty table)."""
    if doses is not None and len(doses):
        doses = _with_string_ids(doses, ("subject_id",), "doses")
    return _validate_doses(doses, model, set())


def validate(observations: pd.DataFrame, doses: pd.DataFrame | None = None, covariates: pd.DataFrame | None = None,
             model=None, min_time: float | None = None) -> CohortData:
    """Check, type and sort the three tables; see the module docstring.

    ``model`` (a name or :class:`hybridtwin.Model`) additionally checks observables (model observables or
    states) and dose targets (states, drug compartments, intervention names). ``min_time`` (default None:
    any finite time, negative ones included) refuses observations and doses earlier than it. Subject ids
    become strings (module docstring). Raises ``ValueError`` naming the column, subjects and rows for:
    missing or duplicated columns, an empty observations table, missing or ambiguous subject ids,
    non-numeric or non-finite times/values, times before ``min_time``, negative amounts, duplicate
    (subject, time, observable) rows, unknown observables or dose targets, covariates or doses of unknown
    subjects, censored rows without a limit, a subject in several cohorts.
    """
    if model is not None:
        from .. import models as _models

        model = _models.get(model)
    _require(observations, OBS_REQUIRED, "observations")
    if len(observations) == 0:
        raise ValueError("observations table is empty (0 rows): every subject needs at least one observation "
                         f"(columns: {list(observations.columns)})")
    observations = _with_string_ids(observations, OBS_REQUIRED, "observations")
    if doses is not None and len(doses):
        doses = _with_string_ids(doses, DOSE_REQUIRED, "doses")
    covariates = _with_string_ids(covariates, ("subject_id",), "covariates")
    obs, notes = _validate_observations(observations, model)
    subjects = set(obs["subject_id"])
    dose_table = _validate_doses(doses, model, subjects)
    if min_time is not None:
        min_time = float(min_time)
        if not np.isfinite(min_time):
            raise ValueError(f"min_time must be a finite number or None, got {min_time}")
        check_min_time(obs, min_time, "observations")
        check_min_time(dose_table, min_time, "doses")
    cov, cov_notes = _validate_covariates(covariates, list(pd.unique(obs["subject_id"])))
    report = _counts(obs, dose_table, cov)
    report.update(notes)
    report.update({k: v for k, v in cov_notes.items() if v})
    return CohortData(obs, dose_table, cov, report)
