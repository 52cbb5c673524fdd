"""validate(): typed, sorted tables or an error that names the column, subject and rows."""

import numpy as np
import pandas as pd
import pytest

from hybridtwin.data import CohortData, validate


def obs_table(**over):
    base = dict(subject_id=["a", "a", "b", "b"], time=[2.0, 1.0, 1.0, 3.0], observable="log10_V",
                value=[3.0, 2.0, 0.5, 4.0], lloq=0.5, censored=[False, False, True, False], cohort=["x", "x", "y", "y"])
    base.update(over)
    return pd.DataFrame(base)


def test_valid_tables_are_typed_sorted_and_counted():
    doses = pd.DataFrame({"subject_id": ["b", "a"], "time": [0.0, 0.0], "amount": [1.0, 2.0], "target": "antiviral"})
    cov = pd.DataFrame({"subject_id": ["b", "a"], "age": [30, np.nan], "sex": ["F", None]})
    data = validate(obs_table(), doses, cov, model="baccam2006")
    assert isinstance(data, CohortData)
    assert data.observations["time"].tolist() == [1.0, 2.0, 1.0, 3.0]  # sorted within subject
    assert data.observations["censored"].dtype == bool and data.observations["time"].dtype == float
    assert data.doses["subject_id"].tolist() == ["a", "b"] and data.doses["duration"].tolist() == [0.0, 0.0]
    assert data.covariates["subject_id"].tolist() == ["a", "b"]
    assert data.report["n_censored"] == 1 and data.report["subjects_per_cohort"] == {"x": 1, "y": 1}
    assert data.report["missing_covariate_values"] == {"age": 1, "sex": 1}
    # validating validated tables changes nothing
    again = validate(data.observations, data.doses, data.covariates)
    pd.testing.assert_frame_equal(again.observations, data.observations)
    pd.testing.assert_frame_equal(again.covariates, data.covariates)


def test_censored_value_is_the_limit_and_reported():
    data = validate(obs_table(value=[3.0, 2.0, np.nan, 4.0]))
    row = data.observations[data.observations.censored]
    assert row["value"].tolist() == [0.5]
    assert data.report["censored_values_set_to_lloq"] == 1


def test_subjects_without_covariates_are_kept_and_counted():
    data = validate(obs_table(), covariates=pd.DataFrame({"subject_id": ["a"], "age": [50.0]}))
    assert data.covariates["subject_id"].tolist() == ["a", "b"]
    assert np.isnan(data.covariates["age"].iloc[1]) and data.report["subjects_without_covariates"] == 1


@pytest.mark.parametrize(
    "obs, doses, cov, message",
    [
        (obs_table().drop(columns="value"), None, None, r"missing required column\(s\) \['value'\]"),
        (obs_table(time=[1.0, "x", 2.0, 3.0]), None, None, r"column 'time' has non-numeric values \['x'\].*rows \[1\]"),
        (obs_table(time=[1.0, np.inf, 2.0, 3.0]), None, None, r"'time' has non-finite values in subject\(s\) \['a'\], rows \[1\]"),
        (obs_table(value=[1.0, np.nan, 2.0, 3.0]), None, None, r"'value' is missing .* uncensored subject\(s\) \['a'\], rows \[1\]"),
        (obs_table(time=[1.0, 1.0, 2.0, 3.0]), None, None, r"duplicate \(subject_id, time, observable\) in subject\(s\) \['a'\], rows \[0, 1\]"),
        (obs_table(lloq=[0.5, 0.5, np.nan, 0.5]), None, None, r"censored rows need a finite 'lloq'.*rows \[2\]"),
        (obs_table(observable="log10_W"), None, None, r"observable\(s\) \['log10_W'\] are not known to model 'baccam2006'"),
        (obs_table(cohort=["x", "z", "y", "y"]), None, None, r"subject\(s\) \['a'\] have several"),
        (obs_table(), pd.DataFrame({"subject_id": ["a"], "time": [0.0], "amount": [-1.0], "target": "V"}), None,
         r"negative 'amount' in subject\(s\) \['a'\], rows \[0\]"),
        (obs_table(), pd.DataFrame({"subject_id": ["a"], "time": [0.0], "amount": [1.0], "target": "Q"}), None,
         r"target\(s\) \['Q'\] do not exist in model 'baccam2006'"),
        (obs_table(), pd.DataFrame({"subject_id": ["zz"], "time": [0.0], "amount": [1.0], "target": "V"}), None,
         r"subjects without any observation: subject\(s\) \['zz'\]"),
        (obs_table(), None, pd.DataFrame({"subject_id": ["a", "q"], "age": [1, 2]}),
         r"covariates given for unknown subjects.*\['q'\], rows \[1\]"),
        (obs_table(), None, pd.DataFrame({"subject_id": ["a", "a"], "age": [1, 2]}), r"one row per subject expected"),
    ],
)
def test_malformed_input_is_named(obs, doses, cov, message):
    with pytest.raises(ValueError, match=message):
        validate(obs, doses, cov, model="baccam2006")


def test_subset_and_summary():
    data = validate(obs_table())
    sub = data.subset(["b"])
    assert sub.report["n_subjects"] == 1 and sub.observations["subject_id"].unique().tolist() == ["b"]
    s = data.summary()
    assert s["subjects"].tolist() == [1, 1] and s["censored"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="unknown subject"):
        data.subset(["nobody"])


# -- subject ids are strings: one rule (see the module docstring) -------------------------------------------------
@pytest.mark.parametrize(
    "ids, message",
    [
        (pd.Series([1, 1.0], dtype=object), r"mixes id types: int in rows \[0\] \(e.g. 1\); float in rows \[1\]"),
        (pd.Series([True, 1], dtype=object), r"mixes id types: bool in rows \[0\] \(e.g. True\); int in rows \[1\]"),
        (pd.Series([1, "1"], dtype=object), r"mixes id types: int in rows \[0\] \(e.g. 1\); str in rows \[1\]"),
        (pd.Series(["a", None, "b"], dtype=object), r"has missing ids \(NaN/None\) in rows \[1\]"),
        (pd.Series([1.0, np.nan]), r"has missing ids \(NaN/None\) in rows \[1\]"),
        (pd.Series([1.0, 1.5]), r"holds floats that are not whole numbers \[1.5\] in rows \[1\]"),
        (pd.Series([True, False]), r"holds booleans"),
        (pd.Series(["a", "a "]), r"has ids with leading or trailing white space \['a '\] in rows \[1\]"),
        (pd.Series(["a", ""]), r"has empty ids in rows \[1\]"),
    ],
)
def test_ambiguous_subject_ids_are_refused_naming_the_rows(ids, message):
    obs = pd.DataFrame({"subject_id": ids, "time": np.arange(len(ids), dtype=float), "observable": "log10_V",
                        "value": 1.0})
    with pytest.raises(ValueError, match=r"observations column 'subject_id' " + message):
        validate(obs)


def test_ambiguous_ids_in_doses_and_covariates_name_the_table():
    with pytest.raises(ValueError, match=r"doses column 'subject_id' mixes id types"):
        validate(obs_table(), pd.DataFrame({"subject_id": pd.Series(["a", 1], dtype=object), "time": [0.0, 0.0],
                                            "amount": 1.0, "target": "V"}))
    with pytest.raises(ValueError, match=r"covariates column 'subject_id' has missing ids .* rows \[1\]"):
        validate(obs_table(), None, pd.DataFrame({"subject_id": ["a", None], "age": [1.0, 2.0]}))


def test_integer_and_whole_float_ids_become_strings_and_match_across_tables():
    obs = pd.DataFrame({"subject_id": [2, 1, 10], "time": 1.0, "observable": "log10_V", "value": 1.0})
    doses = pd.DataFrame({"subject_id": [1.0], "time": [0.0], "amount": [1.0], "target": "V"})  # float from CSV
    cov = pd.DataFrame({"subject_id": np.array([10, 2, 1], dtype=np.int32), "age": [30.0, 40.0, 50.0]})
    data = validate(obs, doses, cov)
    assert data.observations["subject_id"].tolist() == ["1", "10", "2"]  # sorted as strings
    assert data.doses["subject_id"].tolist() == ["1"]
    assert data.covariates["subject_id"].tolist() == ["1", "10", "2"]
    assert data.covariates["age"].tolist() == [50.0, 30.0, 40.0]
    assert all(type(s) is str for s in data.subject_ids)
    # 1 and 1.0 in one float column are one subject; "1" and "01" as strings are two
    assert validate(pd.DataFrame({"subject_id": [1, 1.0], "time": [0.0, 1.0], "observable": "y",
                                  "value": 0.0})).report["n_subjects"] == 1
    assert validate(pd.DataFrame({"subject_id": ["1", "01"], "time": [0.0, 1.0], "observable": "y",
                                  "value": 0.0})).subject_ids == ["01", "1"]
    with pytest.raises(ValueError, match=r"unknown subject\(s\) \[1\] \(subject ids are strings"):
        data.subset([1])


def test_empty_observations_and_duplicated_columns_are_refused():
    empty = obs_table().iloc[:0]
    with pytest.raises(ValueError, match=r"observations table is empty \(0 rows\)"):
        validate(empty)
    with pytest.raises(ValueError, match=r"observations table is empty"):  # even with doses of those subjects
        validate(empty, pd.DataFrame({"subject_id": ["a"], "time": [0.0], "amount": [1.0], "target": "V"}))
    dup = pd.concat([obs_table(), obs_table()[["time"]]], axis=1)
    with pytest.raises(ValueError, match=r"observations table has duplicated column name\(s\) \['time'\]"):
        validate(dup)
    doses = pd.DataFrame([["a", 0.0, 1.0, "V", 2.0]], columns=["subject_id", "time", "amount", "target", "amount"])
    with pytest.raises(ValueError, match=r"doses table has duplicated column name\(s\) \['amount'\]"):
        validate(obs_table(), doses)
    cov = pd.DataFrame([["a", 1.0, 2.0]], columns=["subject_id", "age", "age"])
    with pytest.raises(ValueError, match=r"covariates table has duplicated column name\(s\) \['age'\]"):
        validate(obs_table(), None, cov)


def test_negative_times_are_data_clock_times_unless_min_time_is_given():
    # deliberately supported (real data: days relative to symptom onset or peak), refused on request
    obs = obs_table(time=[-2.0, 1.0, -0.5, 3.0])
    assert validate(obs).observations["time"].min() == -2.0
    with pytest.raises(ValueError, match=r"observations: 2 time\(s\) before min_time=0 in 2 subject\(s\): "
                                         r"subject 'a': \[-2.0\]; subject 'b': \[-0.5\]"):
        validate(obs, min_time=0.0)
    doses = pd.DataFrame({"subject_id": ["b"], "time": [-1.0], "amount": [1.0], "target": "V"})
    with pytest.raises(ValueError, match=r"doses: 1 time\(s\) before min_time=0 .*subject 'b': \[-1.0\]"):
        validate(obs_table(), doses, min_time=0.0)
    assert validate(obs_table(), min_time=0.0).report["n_observations"] == 4
