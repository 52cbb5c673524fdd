"""Loader for the Hong Kong influenza household study of Tsang et al. (2016)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import CohortData
from ._common import finish, require_file

FOLDER = "tsang2016_flu_households"
FILE = "data.csv"
MISSING = -1
DETECTION_LIMIT = 900.0  # copies/ml; below-detection results are coded as log10(900) in the file
DAY_COLUMNS = {col: col - 16 for col in range(16, 29)}  # README columns 16..28 = days 0..12
SUBTYPES = {0: "unsubtyped_A", 1: "seasonal_H1N1", 2: "seasonal_H3N2", 3: "pandemic_H1N1"}
INTERVENTIONS = {1: "control", 3: "hand_hygiene", 4: "hand_hygiene_facemask"}
# README column number -> 0/1 covariate (-1 = missing)
FLAGS = {10: "vaccinated", 14: "antiviral", 15: "asymptomatic", 29: "chronic_disease", 30: "smoking", 33: "co_index",
         34: "fever", 35: "sore_throat", 36: "cough", 37: "runny_nose", 38: "phlegm", 39: "muscle_pain",
         40: "headache"}
CITATION = ("Tsang TK, Fang VJ, Chan KH, Ip DKM, Leung GM, Peiris JSM, Cowling BJ, Cauchemez S. Individual "
            "correlates of infectivity of influenza A virus infections in households. PLoS ONE 11(5):e0154418 "
            "(2016), doi:10.1371/journal.pone.0154418")


def load_tsang2016(path) -> CohortData:
    """Influenza A viral loads of the 478 PCR-confirmed infections in a household study (Tsang et al. 2016).

    Source: ``data.csv`` (no header; column dictionary in ``README_original.txt``) in the folder
    ``tsang2016_flu_households`` (shedding-hub/shedding-hub, ``data/tsang2016individual``; published with the
    paper). Citation: Tsang TK et al., PLoS ONE 11(5):e0154418 (2016), doi:10.1371/journal.pone.0154418; cite
    Shedding Hub too. Licence: CC BY 4.0.

    Conventions (column numbers as in ``README_original.txt``; the file has 40 fields per line, the 41st,
    blank README column is absent; -1 = missing everywhere):

    - Subjects: household members with a PCR-confirmed infection (column 4 == 1): 478 of the 1533 members
      (all 386 index cases and 92 household contacts), each with 1-3 samples. The 1055 uninfected members
      have no viral load and are counted in ``report["excluded"]``. ``subject_id`` = ``"<household>-<member>"``
      (member 0 = index case).
    - ``cohort`` = influenza subtype (column 32): ``"seasonal_H1N1"``, ``"seasonal_H3N2"``,
      ``"pandemic_H1N1"``, ``"unsubtyped_A"``.
    - ``time`` = day 0..12 of columns 16-28. Day 0 is the symptom onset of the household's **index case**
      (README), so for a contact the clock starts before its own onset; covariate ``onset_time`` (column 5 -
      column 11) is the subject's own onset on the same clock (0 for index cases), so days since own onset
      are ``time - onset_time`` (the 9 asymptomatic infections also have a column-5 date; it is used as
      recorded). A -1 entry is a day without a sample and gives no row.
    - observable ``log10_vl`` = log10 viral copies/ml (RT-qPCR). Negative samples are coded in the file as
      exactly log10(900) = 2.9542, the assay's detection limit of about 900 copies/ml and the smallest value
      present; these rows are censored at lloq = log10(900), the ``lloq`` of every row.
    - Covariates (NaN where the file has -1): ``age`` (years), ``sex`` (``"M"``/``"F"``, column 9, 1 =
      male), ``vaccinated``, ``antiviral`` (treated or not), ``asymptomatic``, ``chronic_disease``,
      ``smoking``, symptoms (``fever``, ``sore_throat``, ``cough``, ``runny_nose``, ``phlegm``,
      ``muscle_pain``, ``headache``) as 0/1; ``index_case`` (0/1), ``household`` (id, a string: use it to
      keep households together in splits), ``household_size``,
      ``co_index`` (household with a co-index case), ``intervention`` (household arm: ``"control"``,
      ``"hand_hygiene"``, ``"hand_hygiene_facemask"``) and ``onset_time`` (days).
    - Antiviral treatment: the file only says whether a member was treated (column 14, yes/no), not when or
      with what dose, so it is a covariate only and the doses table is empty; placing a dose at an assumed
      day would invent data.

    Example
    -------
    >>> from hybridtwin.datasets import load_tsang2016
    >>> data = load_tsang2016("../shared/data/tsang2016_flu_households")  # doctest: +SKIP
    >>> data.report["n_subjects"], data.report["n_observations"], data.report["n_censored"]  # doctest: +SKIP
    (478, 1154, 345)
    """
    file = require_file(path, FILE, "load_tsang2016", FOLDER)
    raw = _read(file)
    infected = raw[raw[4] == 1]
    if (infected[2] < 0).any() or infected.duplicated([1, 2]).any():
        raise ValueError(f"load_tsang2016: {file.name}: household/member ids must be unique and non-negative")
    observations = _observations(infected)
    covariates = _covariates(infected)
    meta = dict(source="tsang2016", citation=CITATION, licence="CC BY 4.0", path=str(file.parent), files=[FILE])
    excluded = {"household members without PCR-confirmed infection (no viral load)": len(raw) - len(infected)}
    return finish(observations, covariates, source="tsang2016", meta=meta, excluded=excluded)


def _read(file) -> pd.DataFrame:
    """The header-less table with columns numbered 1.. as in the README."""
    raw = pd.read_csv(file, header=None, skipinitialspace=True)
    if raw.shape[1] not in (40, 41):
        raise ValueError(f"load_tsang2016: {file.name} should have 40 or 41 columns (README_original.txt), "
                         f"found {raw.shape[1]}")
    raw.columns = range(1, raw.shape[1] + 1)
    raw[32] = pd.to_numeric(raw[32], errors="raise")  # the subtype is quoted in the file
    return raw


def _subject_ids(rows: pd.DataFrame) -> pd.Series:
    """``"<household>-<member>"`` strings."""
    return rows[1].astype(str) + "-" + rows[2].astype(str)


def _observations(infected: pd.DataFrame) -> pd.DataFrame:
    """One row per (subject, sampled day); values at the detection limit are censored."""
    ids = _subject_ids(infected)
    wide = infected[list(DAY_COLUMNS)].rename(columns=DAY_COLUMNS)
    wide.index = ids.to_numpy()
    long = wide.rename_axis("subject_id").reset_index().melt(id_vars="subject_id", var_name="time", value_name="value")
    long = long[long["value"] != MISSING]
    lloq = np.log10(DETECTION_LIMIT)
    values = long["value"].to_numpy(dtype=float)
    below = values < lloq - 1e-9
    if below.any():
        raise ValueError(f"load_tsang2016: {below.sum()} viral loads below log10(900) = {lloq:.4f}, the coded "
                         "detection limit; the censoring rule would need revisiting")
    censored = np.abs(values - lloq) < 1e-9
    unknown = ~infected[32].isin(list(SUBTYPES))
    if unknown.any():
        codes = sorted(infected.loc[unknown, 32].unique())
        raise ValueError(f"load_tsang2016: unknown influenza subtype code(s) {codes} in column 32 (expected 0-3)")
    subtype = dict(zip(ids, infected[32].map(SUBTYPES)))
    return pd.DataFrame({
        "subject_id": long["subject_id"].to_numpy(),
        "time": long["time"].to_numpy(dtype=float),
        "observable": "log10_vl",
        "value": np.where(censored, lloq, values),
        "lloq": lloq,
        "censored": censored,
        "cohort": long["subject_id"].map(subtype).to_numpy(),
    })


def _covariates(infected: pd.DataFrame) -> pd.DataFrame:
    """Per-subject covariates; -1 becomes NaN, codes become labels."""
    flags = {name: infected[col].replace(MISSING, np.nan).to_numpy(dtype=float) for col, name in FLAGS.items()}
    own_onset = (infected[5] - infected[11]).where((infected[5] >= 0) & (infected[11] >= 0))
    return pd.DataFrame({
        "subject_id": _subject_ids(infected).to_numpy(),
        "age": infected[8].replace(MISSING, np.nan).to_numpy(dtype=float),
        "sex": infected[9].map({1: "M", 0: "F"}).to_numpy(),
        **flags,
        "index_case": (infected[2] == 0).to_numpy(dtype=float),
        "onset_time": own_onset.to_numpy(dtype=float),
        "household": infected[1].astype(str).to_numpy(),
        "household_size": infected[3].replace(MISSING, np.nan).to_numpy(dtype=float),
        "intervention": infected[13].map(INTERVENTIONS).to_numpy(),
    })
