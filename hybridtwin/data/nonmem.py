"""NONMEM / rxode2-style event tables in and out.

One row per event, sorted by ``ID`` then ``TIME``:

- ``EVID`` 0 = observation (``DV``; ``MDV`` 1 marks a missing one), 1 = dose (``AMT`` into ``CMT``; ``RATE`` > 0
  gives an infusion of duration ``AMT / RATE``; ``II``/``ADDL`` repeat it), 2 = other event (counted, not
  used). ``EVID`` 3/4 (resets), ``SS`` != 0 (steady state) and modelled rates (``RATE`` -1/-2) are refused with
  a clear message rather than silently mis-read.
- ``CENS`` 1 = left-censored: the value is below the limit held in ``DV`` (M3 convention), 0 = observed;
  ``CENS`` -1 (right-censoring) and any other value are refused. ``LIMIT`` (the other bound, e.g. 0) is kept
  in the round trip; an ``LLOQ`` column gives the limit of quantification of every row (also uncensored
  ones); ``DUR`` an infusion duration. A dose row with both ``RATE`` > 0 and ``DUR`` > 0 must agree
  (``DUR == AMT / RATE`` to a relative 1e-9), otherwise it is refused; ``ADDL`` must be a non-negative
  integer and ``II``, ``DUR`` non-negative on dose rows.
- ``DVID`` (endpoint id) and ``CMT`` (compartment) are mapped to observable and dose-target names by the
  user's dictionaries; ``STUDY`` becomes the cohort; any other column is a (time-constant) covariate.

Subject ids are strings (the rule of :mod:`hybridtwin.data.schema`). ``ID`` is the NONMEM subject number;
``SUBJECT``, when present, holds the original (string) id and names the subject. ``ID`` and ``SUBJECT``
must correspond one to one: two IDs sharing one SUBJECT value (e.g. ids ``"007"`` and ``"7"`` read back as
the number 7 by a CSV reader) or one ID with several SUBJECT values are refused. Without ``SUBJECT`` the
``ID`` values themselves are the ids (``1`` -> ``"1"``). ``from_nonmem`` also takes the path of a CSV file,
read with ``SUBJECT`` and ``STUDY`` as strings, so ``to_nonmem(data).to_csv(path, index=False)`` followed by
``from_nonmem(path, ...)`` keeps ids such as ``"007"``.

A table must hold at least one observation (``EVID`` 0 with ``MDV`` 0), and every subject with doses needs
an observation: dose-only tables and subjects are refused (as :func:`hybridtwin.data.validate` does).
Duplicated column names are refused.

``to_nonmem`` writes the same layout back; ``from_nonmem(to_nonmem(data, ...), ...)`` reproduces every
event of ``data`` (or raises).

Example
-------
>>> import pandas as pd
>>> from hybridtwin.data import from_nonmem, to_nonmem
>>> nm = pd.DataFrame({"ID": [1, 1, 1], "TIME": [0.0, 1.0, 2.0], "EVID": [1, 0, 0], "AMT": [1.0, 0, 0],
...                    "CMT": [1, 0, 0], "DV": [0.0, 3.1, 0.5], "MDV": [1, 0, 0], "CENS": [0, 0, 1],
...                    "DVID": [0, 1, 1], "AGE": [40, 40, 40]})
>>> data = from_nonmem(nm, observables={1: "log10_V"}, targets={1: "antiviral"})
>>> data.report["n_censored"], list(data.covariates.columns), data.subject_ids
(1, ['subject_id', 'AGE'], ['1'])
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import pandas as pd

from .schema import CohortData, DEFAULT_COHORT, normalise_subject_ids, validate

RESERVED = ("ID", "TIME", "EVID", "AMT", "CMT", "RATE", "II", "ADDL", "SS", "DV", "MDV", "CENS", "LIMIT", "DVID",
            "STUDY", "SUBJECT", "DUR", "LLOQ")


def _col(df: pd.DataFrame, name: str, default: float) -> np.ndarray:
    if name not in df.columns:
        return np.full(len(df), default, dtype=float)
    values = pd.to_numeric(df[name], errors="coerce")
    bad = values.isna() & df[name].notna()
    if bad.any():
        raise ValueError(f"NONMEM column {name!r} has non-numeric values in rows {df.index[bad.to_numpy()][:10].tolist()}")
    return values.fillna(default).to_numpy(dtype=float)


def _where(mask: np.ndarray, df: pd.DataFrame) -> str:
    return f"rows {df.index[mask][:10].tolist()}, IDs {pd.unique(df['ID'][mask])[:10].tolist()}"


def _refuse(mask: np.ndarray, df: pd.DataFrame, what: str) -> None:
    if mask.any():
        raise ValueError(f"NONMEM table: {what} is not supported ({_where(mask, df)})")


def _subjects(df: pd.DataFrame) -> pd.Series:
    """The subject id (string) of every row: SUBJECT when present, checked one to one against ID."""
    ids = normalise_subject_ids(df["ID"], "NONMEM", "ID")
    if "SUBJECT" not in df.columns:
        return ids
    subject = normalise_subject_ids(df["SUBJECT"], "NONMEM", "SUBJECT")
    pairs = pd.DataFrame({"ID": ids, "SUBJECT": subject})
    for key, other in (("SUBJECT", "ID"), ("ID", "SUBJECT")):
        n = pairs.groupby(key, sort=False)[other].nunique()
        bad = n[n > 1].index.tolist()
        if bad:
            mask = pairs[key].isin(bad).to_numpy()
            seen = {k: sorted(set(g[other])) for k, g in pairs[mask].groupby(key, sort=False)}
            shown = "; ".join(f"{key} {k!r}: {other} {v}" for k, v in list(seen.items())[:10])
            raise ValueError(f"NONMEM table: ID and SUBJECT must correspond one to one; {shown} (rows "
                             f"{df.index[mask][:10].tolist()}). If SUBJECT holds string ids such as '007', read "
                             "the file with SUBJECT as strings (pd.read_csv(path, dtype={'SUBJECT': str}) or "
                             "from_nonmem(path))")
    return subject


def _map(codes: np.ndarray, mapping: Mapping | None, what: str, df: pd.DataFrame, mask: np.ndarray) -> np.ndarray:
    if mapping is None:
        return np.array([str(int(c)) if float(c).is_integer() else str(c) for c in codes], dtype=object)
    keys = {float(k): v for k, v in mapping.items()}
    out = np.array([keys.get(float(c)) for c in codes], dtype=object)
    missing = pd.isna(out) & mask
    if missing.any():
        raise ValueError(f"NONMEM table: {what} code(s) {sorted(set(codes[missing].tolist()))} have no name in the mapping "
                         f"{dict(mapping)} (rows {df.index[missing][:10].tolist()})")
    return out


def from_nonmem(df: pd.DataFrame | str | os.PathLike, observables: Mapping | None = None,
                targets: Mapping | None = None, covariates: list[str] | None = None, model=None) -> CohortData:
    """Read a NONMEM-style event table (a DataFrame, or a CSV file's path) into a validated :class:`CohortData`.

    observables: ``{DVID: observable name}`` (without it, the DVID code itself is the name; a table without
        DVID has one observable named ``"DV"``).
    targets: ``{CMT: target name}`` for dose rows (without it, the CMT code is the name).
    covariates: the covariate columns (default: every non-reserved column); each must be constant within a
        subject (time-varying covariates are refused).
    """
    if isinstance(df, (str, os.PathLike)):
        df = pd.read_csv(df, dtype={"SUBJECT": str, "STUDY": str})
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"from_nonmem takes a DataFrame or the path of a CSV file, got {type(df).__name__}")
    dup = df.columns[df.columns.duplicated()]
    if len(dup):
        raise ValueError(f"NONMEM table has duplicated column name(s) {list(pd.unique(dup))}; each column must "
                         f"appear once (columns: {list(df.columns)})")
    missing = [c for c in ("ID", "TIME", "DV") if c not in df.columns]
    if missing:
        raise ValueError(f"NONMEM table is missing required column(s) {missing}; it has {list(df.columns)}")
    df = df.reset_index(drop=True)
    evid = _col(df, "EVID", 0.0)
    mdv = _col(df, "MDV", np.nan)
    mdv = np.where(np.isnan(mdv), (evid != 0).astype(float), mdv)
    rate = _col(df, "RATE", 0.0)
    _refuse(~np.isin(evid, (0, 1, 2)), df, "EVID other than 0, 1, 2 (resets)")
    _refuse(_col(df, "SS", 0.0) != 0, df, "steady-state dosing (SS != 0)")
    _refuse((evid == 1) & (rate < 0), df, "a modelled rate or duration (RATE -1/-2)")
    cens = _col(df, "CENS", 0.0)
    _refuse(cens < 0, df, "right-censoring (CENS = -1)")
    bad_cens = ~np.isin(cens, (0.0, 1.0))
    if bad_cens.any():
        raise ValueError(f"NONMEM column 'CENS' must be 0 (observed) or 1 (below the limit in DV); got "
                         f"{sorted(set(cens[bad_cens].tolist()))[:5]} in {_where(bad_cens, df)}")
    subject = _subjects(df)

    is_obs = (evid == 0) & (mdv == 0)
    is_dose = evid == 1
    if not is_obs.any():
        raise ValueError(f"NONMEM table has no observation rows (EVID 0 with MDV 0, value in column 'DV'): {len(df)} "
                         f"rows, {int(is_dose.sum())} of them doses; every subject needs at least one observation")
    dose_only = np.asarray(is_dose & ~subject.isin(set(subject[is_obs])).to_numpy())
    if dose_only.any():
        raise ValueError(f"NONMEM table: subject(s) {list(pd.unique(subject[dose_only]))[:10]} have dose rows but no "
                         f"observation (EVID 0 with MDV 0) ({_where(dose_only, df)}); every subject needs one")
    obs_names = (_map(_col(df, "DVID", 0.0), observables, "DVID", df, is_obs) if "DVID" in df.columns
                 else np.full(len(df), "DV", dtype=object))
    obs = pd.DataFrame({"subject_id": subject[is_obs].to_numpy(), "time": df["TIME"][is_obs].to_numpy(),
                        "observable": obs_names[is_obs], "value": df["DV"][is_obs].to_numpy(),
                        "censored": cens[is_obs] == 1})
    obs["lloq"] = np.where(obs["censored"], obs["value"], np.nan)
    if "LLOQ" in df.columns:  # a per-row limit (also on uncensored rows), as the field's LLOQ column
        lloq = _col(df, "LLOQ", np.nan)[is_obs]
        obs["lloq"] = np.where(np.isfinite(lloq), lloq, obs["lloq"])
    if "LIMIT" in df.columns:
        obs["limit"] = _col(df, "LIMIT", np.nan)[is_obs]
    obs["cohort"] = df["STUDY"][is_obs].astype(str).to_numpy() if "STUDY" in df.columns else DEFAULT_COHORT

    amt = _col(df, "AMT", 0.0)
    duration = np.where(rate > 0, amt / np.where(rate > 0, rate, 1.0), 0.0)
    if "DUR" in df.columns:
        dur = _col(df, "DUR", 0.0)
        negative = is_dose & (dur < 0)
        if negative.any():
            raise ValueError(f"NONMEM column 'DUR' is negative on dose rows ({_where(negative, df)})")
        both = is_dose & (rate > 0) & (dur > 0)
        clash = both & ~(np.abs(dur - duration) <= 1e-9 * np.maximum(np.abs(dur), np.abs(duration)))
        if clash.any():
            i = np.nonzero(clash)[0][:5]
            raise ValueError(f"NONMEM columns 'RATE' and 'DUR' disagree on dose rows ({_where(clash, df)}): DUR "
                             f"{dur[i].tolist()} but AMT / RATE = {duration[i].tolist()}; give one of them, or "
                             "consistent values")
        duration = np.where(dur > 0, dur, duration)
    doses = pd.DataFrame({"subject_id": subject[is_dose].to_numpy(), "time": df["TIME"][is_dose].to_numpy(),
                          "amount": amt[is_dose], "target": _map(_col(df, "CMT", 0.0), targets, "CMT", df, is_dose)[is_dose],
                          "duration": duration[is_dose]})
    ii, addl = _col(df, "II", np.nan), _col(df, "ADDL", 0.0)
    bad_addl = is_dose & ((addl < 0) | (addl != np.round(addl)))
    if bad_addl.any():
        raise ValueError(f"NONMEM column 'ADDL' must be a non-negative integer on dose rows; got "
                         f"{addl[bad_addl][:5].tolist()} in {_where(bad_addl, df)}")
    bad_ii = is_dose & (ii < 0)
    if bad_ii.any():
        raise ValueError(f"NONMEM column 'II' is negative on dose rows; got {ii[bad_ii][:5].tolist()} in "
                         f"{_where(bad_ii, df)}")
    doses["interval"] = np.where(ii[is_dose] > 0, ii[is_dose], np.nan)
    doses["additional"] = addl[is_dose].astype(int)

    cov_cols = covariates if covariates is not None else [c for c in df.columns if c not in RESERVED]
    unknown = [c for c in cov_cols if c not in df.columns]
    if unknown:
        raise ValueError(f"covariate column(s) {unknown} are not in the NONMEM table")
    cov = pd.DataFrame({"subject_id": subject.to_numpy()})
    reserved = [c for c in cov_cols if c in ("subject_id",)]
    if reserved:
        raise ValueError("NONMEM table: a column named 'subject_id' would be read as a covariate and clash with the "
                         "subject ids (taken from SUBJECT, else ID); rename it or leave it out of `covariates`")
    for c in cov_cols:
        cov[c] = df[c].to_numpy()
    if cov_cols:
        varying = cov.groupby("subject_id")[cov_cols].nunique(dropna=False)
        bad = varying[(varying > 1).any(axis=1)]
        if len(bad):
            cols = [c for c in cov_cols if (bad[c] > 1).any()]
            raise ValueError(f"time-varying covariate(s) {cols} in subject(s) {bad.index.tolist()[:10]}: covariates must be "
                             "constant within a subject")
    cov = cov.drop_duplicates("subject_id").reset_index(drop=True)
    other = int((evid == 2).sum())
    missing_dv = int(((evid == 0) & (mdv == 1)).sum())
    extra_limit = obs.pop("limit") if "limit" in obs.columns else None
    data = validate(obs, doses, cov, model=model)
    report = {"nonmem_other_events_ignored": other, "nonmem_missing_observations_ignored": missing_dv}
    data = data.with_report(**{k: v for k, v in report.items() if v})
    if extra_limit is not None:
        data.meta["nonmem_limit"] = _limit_table(obs.assign(limit=extra_limit.to_numpy()))
    return data


def _limit_table(obs: pd.DataFrame) -> pd.DataFrame:
    keep = obs["limit"].notna()
    return obs.loc[keep, ["subject_id", "time", "observable", "limit"]].reset_index(drop=True)


def to_nonmem(data: CohortData, observables: Mapping | None = None, targets: Mapping | None = None) -> pd.DataFrame:
    """Write a :class:`CohortData` as one NONMEM event table (``ID`` numeric; the original id in ``SUBJECT``).

    observables: ``{observable name: DVID}`` (default: 1, 2, ... in sorted order); targets: ``{target name:
    CMT}`` (default: 1, 2, ... in sorted order). Covariates become constant columns on every row of a subject;
    a covariate named like a NONMEM column (``AMT``, ``DV`` ...) is refused. ``SUBJECT`` holds the string ids:
    write the table with ``to_csv(path, index=False)`` and read it back with ``from_nonmem(path)`` (or with
    ``dtype={"SUBJECT": str}``) to keep ids such as ``"007"``.
    """
    obs, doses = data.observations, data.doses
    clash = [c for c in data.covariates.columns if c in RESERVED or c == "_order"]
    if clash:
        raise ValueError(f"to_nonmem: covariate column(s) {clash} have the name of a NONMEM column; rename them")
    observables = dict(observables or {n: i + 1 for i, n in enumerate(sorted(obs["observable"].unique()))})
    targets = dict(targets or {n: i + 1 for i, n in enumerate(sorted(doses["target"].unique()))})
    for names, mapping, what in ((obs["observable"], observables, "observable"), (doses["target"], targets, "target")):
        missing = sorted(set(names) - set(mapping))
        if missing:
            raise ValueError(f"to_nonmem: no code given for {what}(s) {missing}")
    ids = {s: i + 1 for i, s in enumerate(data.subject_ids)}
    cohort = obs.groupby("subject_id")["cohort"].first()
    o = pd.DataFrame({"SUBJECT": obs["subject_id"], "TIME": obs["time"], "EVID": 0, "AMT": 0.0, "CMT": 0, "RATE": 0.0,
                      "II": 0.0, "ADDL": 0, "DV": obs["value"], "MDV": 0, "CENS": obs["censored"].astype(int),
                      "DVID": obs["observable"].map(observables), "LLOQ": obs["lloq"], "DUR": 0.0, "_order": 1})
    lim = data.meta.get("nonmem_limit")
    if lim is not None and len(lim):
        o = o.merge(lim.rename(columns={"subject_id": "SUBJECT", "time": "TIME", "limit": "LIMIT"})
                    .assign(DVID=lambda x: x["observable"].map(observables)).drop(columns="observable"),
                    on=["SUBJECT", "TIME", "DVID"], how="left")
    rate = np.where(doses["duration"] > 0, doses["amount"] / np.where(doses["duration"] > 0, doses["duration"], 1.0), 0.0)
    d = pd.DataFrame({"SUBJECT": doses["subject_id"], "TIME": doses["time"], "EVID": 1, "AMT": doses["amount"],
                      "CMT": doses["target"].map(targets), "RATE": rate, "II": doses["interval"].fillna(0.0),
                      "ADDL": doses["additional"], "DV": 0.0, "MDV": 1, "CENS": 0, "DVID": 0, "LLOQ": np.nan,
                      "DUR": doses["duration"], "_order": 0})
    table = pd.concat([d, o], ignore_index=True)
    table.insert(0, "ID", table["SUBJECT"].map(ids))
    table["STUDY"] = table["SUBJECT"].map(cohort).fillna(DEFAULT_COHORT)
    cov = data.covariates.set_index("subject_id")
    for c in cov.columns:
        table[c] = table["SUBJECT"].map(cov[c])
    table = table.sort_values(["ID", "TIME", "_order"], kind="stable").drop(columns="_order").reset_index(drop=True)
    return table
