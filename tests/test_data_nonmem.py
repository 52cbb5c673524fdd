"""NONMEM event tables: reading, refusing what we cannot honour, and a lossless round trip."""

import numpy as np
import pandas as pd
import pytest

from hybridtwin.data import from_nonmem, to_nonmem, validate


def nm_table():
    return pd.DataFrame({
        "ID":   [1, 1, 1, 1, 1, 2, 2, 2],
        "TIME": [0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 1.5, 4.0],
        "EVID": [1, 1, 0, 0, 2, 1, 0, 0],
        "AMT":  [100.0, 5.0, 0, 0, 0, 50.0, 0, 0],
        "CMT":  [2, 1, 0, 0, 0, 2, 0, 0],
        "RATE": [0.0, 2.5, 0, 0, 0, 0, 0, 0],
        "II":   [7.0, 0, 0, 0, 0, 0, 0, 0],
        "ADDL": [3, 0, 0, 0, 0, 0, 0, 0],
        "DV":   [0, 0, 3.2, 1.0, 0, 0, 2.2, 5.0],
        "MDV":  [1, 1, 0, 0, 1, 1, 0, 0],
        "CENS": [0, 0, 0, 1, 0, 0, 0, 0],
        "DVID": [0, 0, 1, 1, 0, 0, 1, 2],
        "STUDY": [10, 10, 10, 10, 10, 20, 20, 20],
        "AGE":  [40, 40, 40, 40, 40, 61, 61, 61],
        "SEX":  ["F", "F", "F", "F", "F", "M", "M", "M"],
    })


def test_reads_events_censoring_cohorts_and_covariates():
    data = from_nonmem(nm_table(), observables={1: "log10_V", 2: "IFN"}, targets={1: "C_nai", 2: "V"})
    obs = data.observations
    assert len(obs) == 4 and obs["cohort"].tolist() == ["10", "10", "20", "20"]
    cens = obs[obs.censored]
    assert cens["value"].tolist() == [1.0] and cens["lloq"].tolist() == [1.0]
    d = data.doses
    assert d["target"].tolist() == ["V", "C_nai", "V"]
    infusion = d[d.target == "C_nai"].iloc[0]
    assert infusion["duration"] == 2.0  # AMT 5 / RATE 2.5
    bolus = d[(d.subject_id == 1) & (d.target == "V")].iloc[0]
    assert bolus["interval"] == 7.0 and bolus["additional"] == 3
    assert data.covariates.set_index("subject_id").loc[2, "AGE"] == 61
    assert data.report["nonmem_other_events_ignored"] == 1


def test_round_trip_preserves_every_event():
    data = from_nonmem(nm_table(), observables={1: "log10_V", 2: "IFN"}, targets={1: "C_nai", 2: "V"})
    table = to_nonmem(data, observables={"log10_V": 1, "IFN": 2}, targets={"C_nai": 1, "V": 2})
    assert (table.EVID == 1).sum() == 3 and (table.EVID == 0).sum() == 4
    back = from_nonmem(table, observables={1: "log10_V", 2: "IFN"}, targets={1: "C_nai", 2: "V"})
    for name in ("observations", "doses", "covariates"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(data, name), check_dtype=False)


def test_round_trip_from_canonical_tables_with_string_ids_and_lloq():
    obs = pd.DataFrame({"subject_id": ["p1", "p1", "p2"], "time": [1.0, 2.0, 0.5], "observable": "log10_V",
                        "value": [3.0, 0.7, 2.0], "lloq": [0.7, 0.7, 0.7], "censored": [False, True, False],
                        "cohort": ["A", "A", "B"]})
    doses = pd.DataFrame({"subject_id": ["p2"], "time": [0.0], "amount": [3.0], "target": "C_nai", "duration": [0.7]})
    data = validate(obs, doses, pd.DataFrame({"subject_id": ["p1", "p2"], "wt": [70.0, np.nan]}))
    table = to_nonmem(data)
    assert table["ID"].tolist() == [1, 1, 2, 2] and table["SUBJECT"].tolist() == ["p1", "p1", "p2", "p2"]
    back = from_nonmem(table, observables={1: "log10_V"}, targets={1: "C_nai"})
    for name in ("observations", "doses", "covariates"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(data, name), check_dtype=False)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(EVID=[4, 1, 0, 0, 2, 1, 0, 0]), "EVID other than 0, 1, 2"),
        (dict(RATE=[-1.0, 2.5, 0, 0, 0, 0, 0, 0]), "modelled rate"),
        (dict(CENS=[0, 0, 0, -1, 0, 0, 0, 0]), "right-censoring"),
        (dict(SS=[1, 0, 0, 0, 0, 0, 0, 0]), "steady-state"),
        (dict(AGE=[40, 41, 40, 40, 40, 61, 61, 61]), r"time-varying covariate\(s\) \['AGE'\] in subject\(s\) \[1\]"),
        (dict(DVID=[0, 0, 1, 1, 0, 0, 1, 3]), r"DVID code\(s\) \[3.0\] have no name"),
    ],
)
def test_unsupported_or_ambiguous_tables_are_refused(change, message):
    table = nm_table().assign(**change)
    with pytest.raises(ValueError, match=message):
        from_nonmem(table, observables={1: "log10_V", 2: "IFN"}, targets={1: "C_nai", 2: "V"})
