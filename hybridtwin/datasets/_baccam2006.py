"""Loader for the six influenza challenge volunteers fitted by Baccam et al. (2006)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import CohortData
from ._common import finish, require_file

FOLDER = "baccam2006_influenza_6pt"
FILE = "Influenza.csv"
DETECTION_LIMIT = 0.5  # log10 TCID50/ml
FIRST_DAY = 1.0  # the first column is day 1 after inoculation
CITATION = ("Baccam P, Beauchemin C, Macken CA, Hayden FG, Perelson AS. Kinetics of influenza A virus infection in "
            "humans. J Virol 80(15):7590-7599 (2006). Primary data: Hayden FG et al. JAMA 275:295-299 (1996)")


def load_baccam2006(path) -> CohortData:
    """Daily nasal-wash influenza A titres of 6 challenged volunteers (Baccam et al. 2006, Table 1).

    Source: ``Influenza.csv`` in the folder ``baccam2006_influenza_6pt`` (sys-bio/SBstoat,
    ``examples/virus/Influenza.csv``, MIT licence, Copyright (c) 2020 UW Sauro Lab), transcribed from
    Baccam P et al., J Virol 80(15):7590-7599 (2006), Table 1: adults experimentally infected with influenza
    A/Hong Kong/123/77 (H1N1), from Hayden FG et al., JAMA 275:295-299 (1996).

    Conventions:

    - No header: row k = volunteer k (``subject_id`` ``"patient_1"`` ... ``"patient_6"``), one cohort
      ``"baccam2006"``.
    - ``time``: column j = day j after inoculation (day 0 = inoculation), days 1..7. The file has no day
      labels; this indexing follows SOURCE.txt and is consistent with an independent transcription of
      patient 4 over days 1..8 (3.5, 5.5, 6.5, 5.5, 3.5, 4.0, 0.5, 0.5), whose first seven values are row 4
      here with the below-limit day 7 written as 0. Day 8 is absent from this file. (Not checked against the
      printed Table 1 itself.)
    - observable ``log10_V`` = log10(TCID50/ml nasal wash), the observable of model ``baccam2006``.
    - Censoring: 0 means below detection (the rule is ``value < 0.5``; the smallest positive titre is 0.8);
      those rows are censored at lloq = 0.5 log10 TCID50/ml, the detection limit Baccam et al. used (value
      set to 0.5). Every row has ``lloq`` 0.5. 42 rows, 7 censored (day 7 of everyone, day 6 of patient 1).
    - No covariates, no doses. The result passes ``validate(..., model="baccam2006")``.

    Example
    -------
    >>> from hybridtwin.datasets import load_baccam2006
    >>> data = load_baccam2006("../shared/data/baccam2006_influenza_6pt")  # doctest: +SKIP
    >>> data.report["n_subjects"], data.report["n_observations"], data.report["n_censored"]  # doctest: +SKIP
    (6, 42, 7)
    """
    file = require_file(path, FILE, "load_baccam2006", FOLDER)
    titres = pd.read_csv(file, header=None).to_numpy(dtype=float)
    if titres.ndim != 2 or np.isnan(titres).any() or (titres < 0).any():
        raise ValueError(f"load_baccam2006: {file.name} should be a complete table of log10 titres >= 0, "
                         f"got shape {titres.shape}")
    observations = _observations(titres)
    covariates = pd.DataFrame({"subject_id": observations["subject_id"].unique()})
    meta = dict(source="baccam2006", citation=CITATION, licence="MIT (SBstoat transcription)",
                path=str(file.parent), files=[FILE])
    return finish(observations, covariates, source="baccam2006", meta=meta, excluded={}, model="baccam2006")


def _observations(titres: np.ndarray) -> pd.DataFrame:
    """Long table from the subjects x days matrix; 0 = below the detection limit."""
    n_subjects, n_days = titres.shape
    censored = titres.ravel() < DETECTION_LIMIT
    return pd.DataFrame({
        "subject_id": np.repeat([f"patient_{k + 1}" for k in range(n_subjects)], n_days),
        "time": np.tile(FIRST_DAY + np.arange(n_days, dtype=float), n_subjects),
        "observable": "log10_V",
        "value": np.where(censored, DETECTION_LIMIT, titres.ravel()),
        "lloq": DETECTION_LIMIT,
        "censored": censored,
        "cohort": "baccam2006",
    })
