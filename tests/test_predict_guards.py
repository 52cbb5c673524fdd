"""`predict` never answers silently wrong: extrapolated or unused covariates warn, failed solves are named,
an all-failed prediction is an error, and every pandas dtype a CSV can produce is accepted."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from hybridtwin.virtual.cohort import make_virtual_cohort
from hybridtwin.twin import HybridTwin, TwinConfig


@pytest.fixture(scope="module")
def setup():
    data = make_virtual_cohort("vaccine_asc", n_subjects=8, n_cohorts=2, seed=0)
    twin = HybridTwin.from_data(TwinConfig(model="vaccine_asc", encoder={"hidden": 8, "set_dim": 4}), data)
    cov = data.covariates.copy()
    cov["cohort"] = cov["subject_id"].map(data.observations.groupby("subject_id")["cohort"].first())
    return twin, data, cov


def _predict(twin, data, cov, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = twin.predict(cov, data.observations, data.doses, times=[0.0, 10.0, 30.0], n_samples=4, **kw)
    return out, [str(w.message) for w in caught]


def test_plain_prediction_is_quiet(setup):
    twin, data, cov = setup
    (traj, _), msgs = _predict(twin, data, cov)
    assert not traj["median"].isna().any()
    assert not [m for m in msgs if "outside the training range" in m or "NaN" in m or "not used" in m]


def test_far_outside_covariate_warns_with_subject_and_column(setup):
    twin, data, cov = setup
    odd = cov.assign(age=np.where(cov.index == 2, 1e4, cov["age"]))
    _, msgs = _predict(twin, data, odd)
    hit = [m for m in msgs if "outside the training range" in m]
    assert hit and "'age'" in hit[0] and str(cov["subject_id"].iloc[2]) in hit[0]
    # inside the allowed band (the training range widened by its width): no warning
    lo, hi = cov["age"].min(), cov["age"].max()
    near = cov.assign(age=np.where(cov.index == 2, hi + 0.5 * (hi - lo), cov["age"]))
    _, msgs = _predict(twin, data, near)
    assert not [m for m in msgs if "outside the training range" in m]


def test_unused_covariate_columns_warn_and_are_ignored(setup):
    twin, data, cov = setup
    (a, _), _ = _predict(twin, data, cov)
    (b, _), msgs = _predict(twin, data, cov.assign(extra=1.0, other="x"))
    assert any("['extra', 'other']" in m and "ignored" in m for m in msgs)
    pd.testing.assert_frame_equal(a, b)


def test_string_dtypes_from_csv_are_accepted(setup):
    twin, data, cov = setup
    (a, _), _ = _predict(twin, data, cov)
    typed = cov.astype({c: "string" for c in ("subject_id", "sex", "cohort")})
    (b, _), _ = _predict(twin, data, typed)
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False)


def test_failed_solves_warn_with_subjects_and_all_failed_is_an_error(setup, monkeypatch):
    twin, data, cov = setup
    original = twin.observables_at
    bad_subject = 1

    def failing(theta, batch, repeats=1):  # every draw of one subject fails to solve
        g, status = original(theta, batch, repeats)
        b = torch.arange(len(batch)).repeat(repeats)
        return g, torch.where(b == bad_subject, torch.ones_like(status), status)

    monkeypatch.setattr(twin, "observables_at", failing)
    (traj, _), msgs = _predict(twin, data, cov)
    sid = str(cov["subject_id"].iloc[bad_subject])
    assert traj.loc[traj["subject_id"] == sid, "median"].isna().all()
    assert any("NaN" in m and sid in m and "100% of draws failed" in m for m in msgs)

    def all_fail(theta, batch, repeats=1):
        g, status = original(theta, batch, repeats)
        return g, torch.ones_like(status)

    monkeypatch.setattr(twin, "observables_at", all_fail)
    with pytest.raises(ValueError, match="every row is NaN"):
        _predict(twin, data, cov)


def test_integer_ids_follow_the_string_rule_in_predict(setup):
    twin, data, cov = setup
    ids = {s: i + 1 for i, s in enumerate(cov["subject_id"])}
    obs = data.observations.assign(subject_id=data.observations["subject_id"].map(ids))
    doses = data.doses.assign(subject_id=data.doses["subject_id"].map(ids))
    (traj, _), _ = _predict(twin, data.__class__(obs, doses, data.covariates, dict(data.meta)),
                            cov.assign(subject_id=cov["subject_id"].map(ids)))
    assert sorted(traj["subject_id"].unique()) == sorted(str(v) for v in ids.values())
    mixed = cov.assign(subject_id=[1, "1", *range(2, len(cov))])
    with pytest.raises(ValueError, match="covariates"):
        _predict(twin, data, mixed)


def test_twin_without_covariates_ignores_extra_columns():
    data = make_virtual_cohort("vaccine_asc", n_subjects=6, n_cohorts=1, seed=0)
    bare = data.__class__(data.observations, data.doses, data.covariates[["subject_id"]], dict(data.meta))
    twin = HybridTwin.from_data(TwinConfig(model="vaccine_asc", encoder={"hidden": 8, "set_dim": 4}), bare)
    (a, _), _ = _predict(twin, bare, bare.covariates)
    (b, _), msgs = _predict(twin, bare, data.covariates)  # age, sex, ... were never seen by this twin
    assert any("ignored" in m for m in msgs)
    pd.testing.assert_frame_equal(a, b)


def test_negative_times_are_refused_naming_subjects_before_fitting(setup):
    twin, data, cov = setup
    sid = data.observations["subject_id"].iloc[0]
    obs = data.observations.copy()
    obs.loc[obs.index[0], "time"] = -1.0
    bad = data.__class__(obs, data.doses, data.covariates, dict(data.meta))
    with pytest.raises(ValueError, match=rf"min_time=0.*subject '{sid}': \[-1.0\]"):
        twin.dataset(bad)
    with pytest.raises(ValueError, match=rf"subject '{sid}'"):
        twin.predict(cov, obs, data.doses, times=[0.0, 10.0], n_samples=2)


def test_personalise_uses_only_public_names_of_other_modules():
    """personalise.py is a client of the library: it imports no underscored name from another module."""
    import ast
    from pathlib import Path

    import hybridtwin

    tree = ast.parse((Path(hybridtwin.__file__).parent / "personalise.py").read_text())
    private = [(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               for a in n.names if a.name.startswith("_")]
    assert not private, private
