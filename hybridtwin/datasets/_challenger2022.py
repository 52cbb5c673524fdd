"""Loader for the pooled SARS-CoV-2 viral-load data of Challenger et al. (2022)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import CohortData
from ._common import drop_exact_duplicates, finish, require_columns, require_file

FOLDER = "challenger2022_covid_vl_combined"
FILE = "Viral_Load.csv"
COLUMNS = ("Day", "value", "Age", "Sex", "SevMax", "Sev1st", "Died", "LOD", "SevMax3", "StudyNum", "PatientID")
CITATION = ("Challenger JD, Foo CY, Wu Y, Yan AWC, Marjaneh MM, Liew F, Thwaites RS, Okell LC, Cunnington AJ. "
            "Modelling upper respiratory viral load dynamics of SARS-CoV-2. BMC Med 20:25 (2022), "
            "doi:10.1186/s12916-021-02220-0")


def load_challenger2022(path) -> CohortData:
    """SARS-CoV-2 upper-respiratory viral loads of 605 patients pooled from 17 studies (Challenger et al. 2022).

    Source: ``Viral_Load.csv`` in the folder ``challenger2022_covid_vl_combined``, a format conversion of
    sheet ``Viral_Load`` of ``CombinedDataset.xlsx`` (shedding-hub/shedding-hub, ``data/tan2021early``; the
    supplement of the paper). Citation: Challenger JD et al., BMC Med 20:25 (2022),
    doi:10.1186/s12916-021-02220-0; cite each underlying study and Shedding Hub too. Licence: CC BY 4.0.

    Conventions:

    - ``subject_id`` = ``PatientID`` as given (``"<study>-<n>"``, e.g. ``"12-7"``; unique across studies,
      checked); ``cohort`` = ``"study_01"`` ... ``"study_17"`` from ``StudyNum``.
    - ``time`` = ``Day``, days relative to symptom onset (day 0); a few samples precede onset (down to -2).
    - observable ``log10_vl`` = log10(viral copies/ml); ``lloq`` = log10(``LOD``) of the row (the study's
      detection limit, 3 to 2690 copies/ml).
    - Censoring: a row is censored when ``value <= LOD``; its value is then the limit log10(LOD). In the file
      659 rows meet this rule: 658 rows carry the sheet's below-LOD placeholder ``value == 1`` and one row
      (patient ``14-53``, day 13) holds 24.9 copies/ml converted from Ct 41.4, below its study's LOD of
      67.24. One of the 659 is an exact duplicate of another row (patient ``7-8``, day 9, every column
      equal) and is dropped (``report["excluded"]``), so the result holds 2171 rows, 658 of them censored.
    - Covariates (one row per patient; missing values stay NaN): ``age`` (years), ``sex`` (``"F"``/``"M"``),
      ``severity`` (``SevMax3``: ``"Mild"``, ``"Moderate"``, ``"Severe"``), ``who_max`` and ``who_first``
      (``SevMax``/``Sev1st``, WHO ordinal scale, maximum and at first presentation) and ``died`` (0/1).
      Severity and death are outcomes of the illness, not baseline characteristics.
    - Not carried: ``Estimated`` (1 = value converted from a Ct value) and ``Ctvalue``; the observation table
      has no per-row assay columns.

    Example
    -------
    >>> from hybridtwin.datasets import load_challenger2022
    >>> data = load_challenger2022("../shared/data/challenger2022_covid_vl_combined")  # doctest: +SKIP
    >>> data.report["n_subjects"], data.report["n_cohorts"], data.report["n_censored"]  # doctest: +SKIP
    (605, 17, 658)
    """
    file = require_file(path, FILE, "load_challenger2022", FOLDER)
    raw = pd.read_csv(file)
    require_columns(raw, COLUMNS, file, "load_challenger2022")
    _check_ids(raw, file)
    rows, n_duplicates = drop_exact_duplicates(raw)
    observations = _observations(rows)
    covariates = _covariates(rows)
    meta = dict(source="challenger2022", citation=CITATION, licence="CC BY 4.0", path=str(file.parent),
                files=[FILE])
    return finish(observations, covariates, source="challenger2022", meta=meta,
                  excluded={"exact duplicate rows (every column equal to an earlier row)": n_duplicates})


def _check_ids(raw: pd.DataFrame, file) -> None:
    """Raise if a PatientID occurs in several studies (it would merge two people into one subject)."""
    studies = raw.groupby("PatientID")["StudyNum"].nunique()
    shared = studies[studies > 1].index.tolist()
    if shared:
        raise ValueError(f"load_challenger2022: {file.name}: PatientID(s) {shared[:10]} occur in several studies")


def _observations(rows: pd.DataFrame) -> pd.DataFrame:
    """log10 viral load per sample; at or below the row's LOD -> censored at log10(LOD)."""
    value = rows["value"].to_numpy(dtype=float)
    lod = rows["LOD"].to_numpy(dtype=float)
    if not (np.all(value > 0) and np.all(lod > 0)):
        raise ValueError("load_challenger2022: 'value' and 'LOD' must be positive copies/ml to take log10")
    censored = value <= lod
    lloq = np.log10(lod)
    return pd.DataFrame({
        "subject_id": rows["PatientID"].astype(str).to_numpy(),
        "time": rows["Day"].to_numpy(dtype=float),
        "observable": "log10_vl",
        "value": np.where(censored, lloq, np.log10(value)),
        "lloq": lloq,
        "censored": censored,
        "cohort": [f"study_{int(s):02d}" for s in rows["StudyNum"]],
    })


def _covariates(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per patient; raises if a patient's covariates differ between rows."""
    source = {"age": "Age", "sex": "Sex", "severity": "SevMax3", "who_max": "SevMax", "who_first": "Sev1st",
              "died": "Died"}
    per_patient = rows.groupby("PatientID", sort=False)
    varying = [col for col in source.values() if (per_patient[col].nunique(dropna=False) > 1).any()]
    if varying:
        raise ValueError(f"load_challenger2022: column(s) {varying} vary within a patient; expected one value each")
    first = per_patient[list(source.values())].first().reset_index()
    out = pd.DataFrame({"subject_id": first["PatientID"].astype(str)})
    for name, col in source.items():
        out[name] = first[col]
    out["died"] = out["died"].astype(float)
    return out
