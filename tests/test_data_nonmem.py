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
    bolus = d[(d.subject_id == "1") & (d.target == "V")].iloc[0]
    assert bolus["interval"] == 7.0 and bolus["additional"] == 3
    assert data.covariates.set_index("subject_id").loc["2", "AGE"] == 61
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
        (dict(AGE=[40, 41, 40, 40, 40, 61, 61, 61]), r"time-varying covariate\(s\) \['AGE'\] in subject\(s\) \['1'\]"),
        (dict(DVID=[0, 0, 1, 1, 0, 0, 1, 3]), r"DVID code\(s\) \[3.0\] have no name"),
    ],
)
def test_unsupported_or_ambiguous_tables_are_refused(change, message):
    table = nm_table().assign(**change)
    with pytest.raises(ValueError, match=message):
        from_nonmem(table, observables={1: "log10_V", 2: "IFN"}, targets={1: "C_nai", 2: "V"})


# -- round trips are exact or raise ----------------------------------------------------------------------------
MAPS = dict(observables={1: "log10_V", 2: "IFN"}, targets={1: "C_nai", 2: "V"})


def string_id_cohort():
    obs = pd.DataFrame({"subject_id": ["007", "7", "07", "7"], "time": [1.0, 1.0, 2.0, 3.0], "observable": "log10_V",
                        "value": [1.0, 2.0, 3.0, 4.0], "cohort": ["01", "1", "01", "1"]})
    doses = pd.DataFrame({"subject_id": ["07"], "time": [0.0], "amount": [2.0], "target": "V", "duration": [0.3]})
    cov = pd.DataFrame({"subject_id": ["7", "007", "07"], "wt": [70.0, 80.0, np.nan]})
    return validate(obs, doses, cov)


def test_csv_round_trip_keeps_string_ids_that_look_like_numbers(tmp_path):
    data = string_id_cohort()
    assert data.report["n_subjects"] == 3
    path = tmp_path / "nm.csv"
    to_nonmem(data).to_csv(path, index=False)
    for back in (from_nonmem(path, observables={1: "log10_V"}, targets={1: "V"}),
                 from_nonmem(pd.read_csv(path, dtype={"SUBJECT": str, "STUDY": str}), observables={1: "log10_V"},
                             targets={1: "V"})):
        for name in ("observations", "doses", "covariates"):
            pd.testing.assert_frame_equal(getattr(back, name), getattr(data, name), check_dtype=False)


def test_csv_read_that_collapses_string_ids_is_refused(tmp_path):
    path = tmp_path / "nm.csv"
    to_nonmem(string_id_cohort()).to_csv(path, index=False)
    naive = pd.read_csv(path)  # SUBJECT "007", "7", "07" all read as the number 7
    with pytest.raises(ValueError, match=r"ID and SUBJECT must correspond one to one; SUBJECT '7': ID \['1', '2', '3'\]"):
        from_nonmem(naive, observables={1: "log10_V"}, targets={1: "V"})


def test_one_id_with_several_subject_values_is_refused():
    table = nm_table().assign(SUBJECT=["a", "a", "b", "a", "a", "c", "c", "c"])
    with pytest.raises(ValueError, match=r"ID '1': SUBJECT \['a', 'b'\] \(rows \[0, 1, 2, 3, 4\]\)"):
        from_nonmem(table, **MAPS)


def test_ids_follow_the_string_rule():
    data = from_nonmem(nm_table().assign(ID=[1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0]), **MAPS)
    assert data.subject_ids == ["1", "2"]
    mixed = nm_table().assign(ID=pd.Series([1, 1, 1, 1, 1, "1", "1", "1"], dtype=object))
    with pytest.raises(ValueError, match=r"NONMEM column 'ID' mixes id types: int in rows \[0, 1, 2, 3, 4\]"):
        from_nonmem(mixed, **MAPS)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(ADDL=[2.7, 0, 0, 0, 0, 0, 0, 0]), r"'ADDL' must be a non-negative integer on dose rows; got \[2.7\] in rows \[0\]"),
        (dict(ADDL=[-1, 0, 0, 0, 0, 0, 0, 0]), r"'ADDL' must be a non-negative integer"),
        (dict(II=[-7.0, 0, 0, 0, 0, 0, 0, 0]), r"'II' is negative on dose rows; got \[-7.0\] in rows \[0\]"),
        (dict(CENS=[0, 0, 0, 2, 0, 0, 0, 0]), r"'CENS' must be 0 \(observed\) or 1 .* got \[2.0\] in rows \[3\], IDs \[1\]"),
        (dict(CENS=[0, 0, 0, 0.5, 0, 0, 0, 0]), r"'CENS' must be 0 \(observed\) or 1"),
        (dict(DUR=[0, 3.0, 0, 0, 0, 0, 0, 0]),  # AMT 5 / RATE 2.5 = 2, not 3
         r"'RATE' and 'DUR' disagree on dose rows \(rows \[1\], IDs \[1\]\): DUR \[3.0\] but AMT / RATE = \[2.0\]"),
        (dict(DUR=[-1.0, 0, 0, 0, 0, 0, 0, 0]), r"'DUR' is negative on dose rows \(rows \[0\]"),
        (dict(SUBJECT=["a", "a", "a", "a", "a", "a", "a", "a"]), r"SUBJECT 'a': ID \['1', '2'\]"),
        (dict(ID=[1, 1, 1, 1, 1, np.nan, 2, 2]), r"NONMEM column 'ID' has missing ids \(NaN/None\) in rows \[5\]"),
    ],
)
def test_values_that_would_be_silently_changed_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        from_nonmem(nm_table().assign(**change), **MAPS)


def test_consistent_rate_and_dur_are_accepted():
    data = from_nonmem(nm_table().assign(DUR=[0, 2.0 * (1 + 1e-12), 0, 0, 0, 0, 0, 0]), **MAPS)
    assert data.doses.loc[data.doses.target == "C_nai", "duration"].tolist() == [2.0 * (1 + 1e-12)]


def test_dose_only_tables_and_subjects_and_duplicated_columns_are_refused():
    doses_only = nm_table()[lambda t: t.EVID == 1]
    with pytest.raises(ValueError, match=r"NONMEM table has no observation rows \(EVID 0 with MDV 0, value in column "
                                         r"'DV'\): 3 rows, 3 of them doses"):
        from_nonmem(doses_only, **MAPS)
    no_obs_2 = nm_table()[lambda t: (t.ID == 1) | (t.EVID == 1)]
    with pytest.raises(ValueError, match=r"subject\(s\) \['2'\] have dose rows but no observation .*rows \[5\], IDs \[2\]"):
        from_nonmem(no_obs_2, **MAPS)
    dup = pd.concat([nm_table(), nm_table()[["AMT"]]], axis=1)
    with pytest.raises(ValueError, match=r"NONMEM table has duplicated column name\(s\) \['AMT'\]"):
        from_nonmem(dup, **MAPS)


def test_to_nonmem_refuses_covariates_named_like_nonmem_columns():
    data = validate(pd.DataFrame({"subject_id": ["a"], "time": [1.0], "observable": "y", "value": [1.0]}),
                    covariates=pd.DataFrame({"subject_id": ["a"], "DV": [3.0]}))
    with pytest.raises(ValueError, match=r"to_nonmem: covariate column\(s\) \['DV'\] have the name of a NONMEM column"):
        to_nonmem(data)
