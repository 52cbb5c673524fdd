"""Loader for the daily SARS-CoV-2 RT-qPCR series of Kissler et al. (2021)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import CohortData
from ._common import average_replicates, drop_exact_duplicates, finish, require_columns, require_file

FOLDER = "kissler2021_nba_ct"
FILE = "ct_dat_clean.csv"
COLUMNS = ("Person.ID", "Date.Index", "CT.Mean", "Symptomatic", "Novel.Persistent.Infection", "log10_GEperML")
NEGATIVE_CT = 40.0
CITATION = ("Kissler SM, Fauver JR, Mack C, et al. Viral dynamics of acute SARS-CoV-2 infection and applications "
            "to diagnostic and public health strategies. PLoS Biol 19(7):e3001333 (2021), "
            "doi:10.1371/journal.pbio.3001333")


def load_kissler2021(path) -> CohortData:
    """Dense daily SARS-CoV-2 RT-qPCR series of 68 people (Kissler et al. 2021, NBA occupational testing).

    Source: ``ct_dat_clean.csv`` in the folder ``kissler2021_nba_ct`` (shedding-hub/shedding-hub,
    ``data/kissler2021viral``; originally gradlab/CtTrajectories ``data/ct_dat_clean.csv``). Citation:
    Kissler SM et al., PLoS Biol 19(7):e3001333 (2021), doi:10.1371/journal.pbio.3001333; cite Shedding Hub
    too. Licence: CC BY 4.0.

    Conventions:

    - ``subject_id`` = ``Person.ID`` as a string; one cohort, ``"kissler2021"``.
    - ``time`` = ``Date.Index``: days relative to the day of each person's minimum Ct (peak viral load = day
      0), -56 to 76. The time of infection and of symptom onset are unknown.
    - observable ``log10_ge`` = ``log10_GEperML``, log10 genome equivalents per ml. In the file it is an exact
      linear function of ``CT.Mean``: log10 GE/ml = 13.7388 - 0.277030 x Ct, i.e.
      (Ct - 40.93733) / (-3.609714) + log10(250) (least-squares fit, residual < 1e-13).
    - Censoring: ``CT.Mean == 40`` codes a negative test (Ct >= 40 or no amplification). These rows are
      censored at the detection limit lloq = log10 GE at Ct 40 = 2.657610, read from the data (the value
      of the negative rows, checked to be one number). Every row has this ``lloq``; 2181 of the 2406 rows are
      censored: the negative tests before and after each infection.
    - Duplicates: 4 rows repeat an earlier row exactly (negative tests of persons 2695, 2976 and 3047) and
      are dropped; person 3357 has two different positive tests on day 0 (Ct 37.06 and 35.28), merged into
      their mean on the log10 scale. Both are counted in ``report["excluded"]``: 2411 rows in, 2406 out.
    - Covariates: ``infection`` (``"Novel"``/``"Persistent"``, from ``Novel.Persistent.Infection``) and
      ``symptomatic`` (``"Yes"``/``"No"``, recorded for 41 of the 68 people, NaN otherwise). No age or sex.

    Example
    -------
    >>> from hybridtwin.datasets import load_kissler2021
    >>> data = load_kissler2021("../shared/data/kissler2021_nba_ct")  # doctest: +SKIP
    >>> data.report["n_subjects"], data.report["n_observations"], data.report["n_censored"]  # doctest: +SKIP
    (68, 2406, 2181)
    """
    file = require_file(path, FILE, "load_kissler2021", FOLDER)
    raw = pd.read_csv(file)
    require_columns(raw, COLUMNS, file, "load_kissler2021")
    rows, n_duplicates = drop_exact_duplicates(raw)
    observations, n_merged = average_replicates(_observations(rows, _detection_limit(rows, file)))
    meta = dict(source="kissler2021", citation=CITATION, licence="CC BY 4.0", path=str(file.parent), files=[FILE])
    excluded = {"exact duplicate rows (every column equal to an earlier row)": n_duplicates,
                "same-day replicate tests merged into their mean (log10 scale)": n_merged}
    return finish(observations, _covariates(rows), source="kissler2021", meta=meta, excluded=excluded)


def _detection_limit(rows: pd.DataFrame, file) -> float:
    """log10 GE/ml of a negative test (Ct 40): the single value the file gives all negative rows."""
    negative = rows["CT.Mean"].to_numpy(dtype=float) >= NEGATIVE_CT
    limits = np.unique(rows.loc[negative, "log10_GEperML"].to_numpy(dtype=float))
    if len(limits) != 1:
        raise ValueError(f"load_kissler2021: {file.name}: negative tests (CT.Mean >= 40) should share one "
                         f"log10_GEperML value, found {limits[:5].tolist()}")
    return float(limits[0])


def _observations(rows: pd.DataFrame, lloq: float) -> pd.DataFrame:
    """One row per test: log10 GE/ml, censored at ``lloq`` when negative."""
    censored = rows["CT.Mean"].to_numpy(dtype=float) >= NEGATIVE_CT
    return pd.DataFrame({
        "subject_id": rows["Person.ID"].astype(str).to_numpy(),
        "time": rows["Date.Index"].to_numpy(dtype=float),
        "observable": "log10_ge",
        "value": np.where(censored, lloq, rows["log10_GEperML"].to_numpy(dtype=float)),
        "lloq": lloq,
        "censored": censored,
        "cohort": "kissler2021",
    })


def _covariates(rows: pd.DataFrame) -> pd.DataFrame:
    """Infection type and symptom status per person (each recorded at most once per person)."""
    per_person = rows.groupby("Person.ID", sort=False)
    for col in ("Novel.Persistent.Infection", "Symptomatic"):
        if (per_person[col].nunique() > 1).any():
            raise ValueError(f"load_kissler2021: column {col!r} has several values for one person")
    first = per_person[["Novel.Persistent.Infection", "Symptomatic"]].first().reset_index()
    return pd.DataFrame({"subject_id": first["Person.ID"].astype(str),
                         "infection": first["Novel.Persistent.Infection"],
                         "symptomatic": first["Symptomatic"]})
