"""Design features of the covariates: reference coding with named contrasts, stated units, JSON round trip,
and the cohort label of new patients kept apart from a covariate named ``cohort``."""

import json
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from hybridtwin.data import CovariatePreprocessor
from hybridtwin.virtual import make_virtual_cohort
from hybridtwin.personalise import _tables
from hybridtwin.twin import HybridTwin, TwinConfig


def table():
    return pd.DataFrame({"subject_id": [1, 2, 3, 4, 5, 6], "age": [30.0, 40.0, np.nan, 60.0, 70.0, 50.0],
                         "marker": [10.0, 100.0, 1000.0, 10.0, 100.0, 10.0],
                         "sex": ["F", "M", "M", "F", "M", None], "site": ["a", "b", "b", "a", "c", "c"]})


def test_reference_coding_names_and_values():
    cov = table()
    pre = CovariatePreprocessor(numeric=[], categorical=["sex", "site"]).fit(cov)
    # most frequent non-missing level is the reference (sex: M 3x; site: a, b, c 2x each -> first sorted, a)
    assert pre.reference_ == {"sex": "M", "site": "a"}
    assert pre.feature_names_ == ["sex[F vs M]", "sex[missing vs M]", "site[b vs a]", "site[c vs a]"]
    x = pre.transform(cov)
    assert x[:, 0].tolist() == [1, 0, 0, 1, 0, 0]  # F vs M: 1 for F, 0 for M
    assert x[:, 1].tolist() == [0, 0, 0, 0, 0, 1]  # missing is its own level
    assert np.all(x[1, :2] == 0) and np.all(x[0, 2:] == 0)  # a subject at the reference encodes as zeros
    units = pre.units_.set_index("feature")
    assert (units["kind"] == "contrast").all() and "reference level 'M'" in units.loc["sex[F vs M]", "unit"]


def test_user_reference_and_no_missing_contrast_without_missing_values():
    cov = table().dropna(subset=["sex"])
    pre = CovariatePreprocessor(numeric=[], categorical=["sex"], reference={"sex": "F"}).fit(cov)
    assert pre.feature_names_ == ["sex[M vs F]"]
    assert pre.transform(cov)[:, 0].tolist() == [0, 1, 1, 0, 1]
    with pytest.raises(ValueError, match="reference level 'X'"):
        CovariatePreprocessor(categorical=["sex"], numeric=[], reference={"sex": "X"}).fit(cov)
    with pytest.raises(ValueError, match="must be categorical"):
        CovariatePreprocessor(reference={"age": "1"}).fit(cov)


def test_collinearity_with_the_intercept_is_gone():
    cov = table().dropna(subset=["sex", "age"])[["subject_id", "age", "sex"]]  # sex: F, M, F, M
    x = CovariatePreprocessor().fit_transform(cov)
    assert x.shape[1] == 2  # age, sex[F vs M] (one-hot F and M columns summed to the intercept)
    assert np.linalg.matrix_rank(np.column_stack([np.ones(len(cov)), x])) == 1 + x.shape[1]


def test_numeric_centre_scale_recorded_and_stated_units():
    cov = table()
    pre = CovariatePreprocessor(categorical=["sex", "site"], log10=["marker"], scaling={"age": (50.0, 10.0)}).fit(cov)
    x = pre.transform(pd.DataFrame({"subject_id": [9], "age": [60.0], "marker": [100.0], "sex": ["M"], "site": ["a"]}))
    assert x[0, 0] == 1.0  # 60 years with scaling (50, 10): one unit of 10 years above 50
    units = pre.units_.set_index("feature")
    assert units.loc["age", ["center", "scale"]].tolist() == [50.0, 10.0]
    logs = np.log10(cov["marker"].to_numpy())
    assert np.isclose(units.loc["marker", "center"], logs.mean()) and np.isclose(units.loc["marker", "scale"], logs.std())
    assert np.isclose(x[0, 1], (2.0 - logs.mean()) / logs.std())
    assert units.loc["age", "unit"] == "per 10 units of age, centred at 50"
    assert units.loc["marker", "unit"].startswith("per 1 SD = ") and "log10 units of marker" in units.loc["marker", "unit"]
    assert units.loc["age_missing", "kind"] == "missing-indicator"
    with pytest.raises(ValueError, match="scale finite and > 0"):
        CovariatePreprocessor(scaling={"age": (50.0, 0.0)})
    with pytest.raises(ValueError, match="must be numeric"):
        CovariatePreprocessor(scaling={"sex": (0.0, 1.0)}).fit(cov)


def test_json_round_trip_transforms_and_reports_the_same():
    cov = table()
    pre = CovariatePreprocessor(log10=["marker"], scaling={"age": (50.0, 10.0)}, reference={"site": "c"}).fit(cov)
    loaded = CovariatePreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert loaded.column_transformer_ is None  # transforms from the JSON state, not from scikit-learn
    new = pd.DataFrame({"subject_id": [7, 8], "age": [np.nan, 81.0], "marker": [5.0, 50.0], "sex": [None, "F"],
                        "site": ["c", "b"]})
    for frame in (cov, new):
        assert np.array_equal(loaded.transform(frame), pre.transform(frame))
    assert loaded.feature_names_ == pre.feature_names_ and loaded.reference_ == pre.reference_
    pd.testing.assert_frame_equal(loaded.units_, pre.units_)
    assert loaded.to_dict() == pre.to_dict()


def test_legacy_one_hot_state_still_loads():
    old = {"kind": "CovariatePreprocessor", "version": 1, "numeric": ["age"], "categorical": ["sex"], "indicators": [],
           "log10": [], "median": [40.0], "mean": [40.0], "scale": [10.0], "categories": [["F", "M"]]}
    pre = CovariatePreprocessor.from_dict(old)
    assert pre.feature_names_ == ["age", "sex=F", "sex=M"]
    x = pre.transform(pd.DataFrame({"subject_id": [1], "age": [50.0], "sex": ["M"]}))
    assert x.tolist() == [[1.0, 0.0, 1.0]]


def test_unseen_category_warns_and_encodes_as_the_reference():
    pre = CovariatePreprocessor(numeric=[], categorical=["sex", "site"]).fit(table().dropna(subset=["sex"]))
    new = pd.DataFrame({"subject_id": [1, 2], "sex": ["X", None], "site": ["a", "b"]})
    with pytest.warns(UserWarning, match=r"'sex': \['X', 'missing'\] \(2 subject\(s\); encoded as the reference level 'M'\)"):
        x = pre.transform(new)
    assert np.all(x[:, 0] == 0)
    loaded = CovariatePreprocessor.from_dict(pre.to_dict())
    with pytest.warns(UserWarning, match="'sex'"):
        assert np.array_equal(loaded.transform(new), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pre.transform(table().dropna(subset=["sex"]))  # nothing unseen: no warning


# -- the cohort label of new patients ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    return make_virtual_cohort("vaccine_asc", n_subjects=8, n_cohorts=2, seed=0)


@pytest.fixture(scope="module")
def twin(data):
    return HybridTwin.from_data(TwinConfig(model="vaccine_asc"), data)


def _cohort_of(data):
    return data.observations.groupby("subject_id")["cohort"].first()


def test_observations_cohort_is_used_when_covariates_lack_it(twin, data):
    ds, ids = _tables(twin, data.covariates, data.observations, data.doses)
    expected = _cohort_of(data).reindex(ids).map({c: i for i, c in enumerate(twin.cohort_names)}).tolist()
    assert 1 in expected and ds.batch().cohort.tolist() == expected


def test_covariates_cohort_column_is_the_label_when_not_a_covariate(twin, data):
    cov = data.covariates.assign(cohort=data.covariates["subject_id"].map(_cohort_of(data)).to_numpy())
    obs = data.observations.drop(columns="cohort")
    ds, ids = _tables(twin, cov, obs, data.doses)
    expected = _cohort_of(data).reindex(ids).map({c: i for i, c in enumerate(twin.cohort_names)}).tolist()
    assert ds.batch().cohort.tolist() == expected and ds.covariate_names == twin.covariate_names


def test_unknown_conflicting_or_missing_cohort_raises_unless_reference_is_asked_for(twin, data):
    obs = data.observations.assign(cohort=np.where(data.observations["subject_id"] == "S0001", "elsewhere",
                                                   data.observations["cohort"]))
    with pytest.raises(ValueError, match=r"cohort\(s\) \['elsewhere'\] of subject\(s\) \['S0001'\].*cohort_1"):
        _tables(twin, data.covariates, obs, data.doses)
    cov = data.covariates.assign(cohort="cohort_1")
    with pytest.raises(ValueError, match="differs from the covariates"):
        _tables(twin, cov, data.observations, data.doses)
    unlabelled = data.observations.drop(columns="cohort")
    with pytest.raises(ValueError, match=r"8 subject\(s\) have no cohort label.*reference_cohort=True.*'cohort_1'"):
        _tables(twin, data.covariates, unlabelled, data.doses)
    with pytest.raises(ValueError, match="reference_cohort must be True or False"):
        _tables(twin, data.covariates, unlabelled, data.doses, reference_cohort="yes")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for explicitly: no warning
        ds, _ = _tables(twin, data.covariates, unlabelled, data.doses, reference_cohort=True)
    assert ds.batch().cohort.tolist() == [0] * 8
    with pytest.raises(ValueError, match="no cohort label"):  # the public entry points apply the same rule
        twin.predict(data.covariates, unlabelled, data.doses, times=[1.0, 2.0])
    traj, _ = twin.predict(data.covariates, unlabelled, data.doses, times=[1.0, 2.0], reference_cohort=True)
    assert traj["median"].notna().all()


def test_covariate_named_cohort_stays_a_covariate(data):
    birth = np.where(np.arange(len(data.covariates)) % 2 == 0, "boomer", "millennial")
    cov = data.covariates.assign(cohort=birth)
    trained = HybridTwin.from_data(TwinConfig(model="vaccine_asc"), replace(data, covariates=cov))
    assert "cohort[millennial vs boomer]" in trained.covariate_names
    ds, ids = _tables(trained, cov, data.observations, data.doses)
    batch = ds.batch()
    j = ds.covariate_names.index("cohort[millennial vs boomer]")
    assert batch.covariates[:, j].tolist() == (pd.Series(birth, index=cov["subject_id"]).reindex(ids) == "millennial").astype(float).tolist()
    expected = _cohort_of(data).reindex(ids).map({c: i for i, c in enumerate(trained.cohort_names)}).tolist()
    assert batch.cohort.tolist() == expected  # the label still comes from the observations
    with pytest.raises(ValueError, match=r"no 'cohort' column in the observations\)"):
        _tables(trained, cov, data.observations.drop(columns="cohort"), data.doses)
    ds, _ = _tables(trained, cov, data.observations.drop(columns="cohort"), data.doses, reference_cohort=True)
    assert ds.batch().cohort.tolist() == [0] * len(ids)
