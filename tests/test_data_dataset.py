"""SubjectDataset -> Batch -> solver, splits and covariate preprocessing."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

import hybridtwin as ht
from hybridtwin.data import (CovariatePreprocessor, SubjectDataset, kfold_subjects, leave_cohort_out, split_subjects,
                             validate)


def small_cohort():
    """Three subjects with irregular times, two observables, censoring and per-subject doses."""
    obs = pd.DataFrame({
        "subject_id": ["s1"] * 4 + ["s2"] * 2 + ["s3"] * 3,
        "time": [0.5, 1.0, 1.0, 4.0, 2.0, 3.5, 1.0, 2.5, 6.0],
        "observable": ["log10_V", "log10_V", "V", "log10_V", "log10_V", "V", "log10_V", "log10_V", "log10_V"],
        "value": [1.0, 2.0, 100.0, 3.0, 0.5, 7.0, 1.5, 2.5, 0.5],
        "lloq": 0.5, "censored": [False, False, False, False, True, False, False, False, True],
        "cohort": ["A"] * 6 + ["B"] * 3,
    })
    doses = pd.DataFrame({"subject_id": ["s1", "s3"], "time": [1.0, 0.0], "amount": [5.0, 2.0],
                          "target": ["antiviral", "C_nai"], "duration": [0.0, 1.0], "interval": [np.nan, 2.0],
                          "additional": [0, 1]})
    cov = pd.DataFrame({"subject_id": ["s1", "s2", "s3"], "age": [30.0, np.nan, 60.0], "sex": ["F", "M", None]})
    return validate(obs, doses, cov, model="baccam2006")


def test_batch_layout_padding_and_masks():
    ds = SubjectDataset(small_cohort(), model="baccam2006", dtype=torch.float64)
    batch = ds.batch()
    assert batch.subject_ids == ["s1", "s2", "s3"] and batch.times.shape == (3, 4)
    assert batch.mask.sum(1).tolist() == [4, 2, 3]
    assert batch.observable_names == ["V", "log10_V"] and batch.cohort.tolist() == [0, 0, 1]
    assert batch.times[0].tolist() == [0.5, 1.0, 1.0, 4.0]  # two observables at t = 1: two entries
    assert batch.censored[1].tolist() == [True, False, False, False]
    assert batch.values[1, 2:].tolist() == [0.0, 0.0]  # padding is not imputed data, just masked
    assert batch.covariates.shape == (3, 1)  # no preprocessor: numeric columns only
    loader = DataLoader(ds, batch_size=2, shuffle=False, collate_fn=ds.collate)
    assert [len(b) for b in loader] == [2, 1]


@pytest.mark.slow
def test_batch_feeds_the_solver_and_matches_simulate():
    data = small_cohort()
    model = ht.models.get("baccam2006")
    ds = SubjectDataset(data, model=model, dtype=torch.float64)
    batch = ds.batch()
    theta = model.parameter_space.default_tensor(len(batch))
    sol = ht.solve(model, model.initial_state(theta), batch.times, theta, schedule=batch.schedule, mask=batch.mask,
                   config=ht.SolverConfig(rtol=1e-10, atol=1e-8))
    assert sol.ok.all()
    for b, sid in enumerate(batch.subject_ids):
        n = int(batch.mask[b].sum())
        times = np.unique(batch.times[b, :n].numpy())
        ref = ht.simulate(model, times, doses=data.doses[data.doses.subject_id == sid].drop(columns="subject_id").assign(subject_id=0),
                          rtol=1e-10, atol=1e-8)
        got = sol.ys[b, :n, model.all_state_names.index("V")].numpy()
        want = ref.set_index("time").loc[batch.times[b, :n].numpy(), "V"].to_numpy()
        assert np.allclose(got, want, rtol=1e-7), sid


def test_splits_are_disjoint_complete_seeded_and_cohort_aware():
    obs = pd.DataFrame({"subject_id": np.arange(40), "time": 1.0, "observable": "y", "value": 0.0,
                        "cohort": ["a"] * 30 + ["b"] * 10})
    data = validate(obs)
    train, val, test = split_subjects(data, (0.5, 0.25, 0.25), seed=3)
    assert sorted(train + val + test) == sorted(map(str, range(40))) and not set(train) & set(val) | set(train) & set(test)
    assert split_subjects(data, (0.5, 0.25, 0.25), seed=3) == (train, val, test)
    assert split_subjects(data, (0.5, 0.25, 0.25), seed=4) != (train, val, test)
    assert sum(int(s) >= 30 for s in test) == 2  # cohort b (10 subjects) split proportionally: 5 / 3 / 2
    folds = kfold_subjects(data, k=4, seed=0)
    tests = [t for _, t in folds]
    assert sorted(s for t in tests for s in t) == sorted(map(str, range(40)))
    assert all(not set(tr) & set(te) for tr, te in folds)
    lco = list(leave_cohort_out(data))
    assert [c for c, _, _ in lco] == ["a", "b"] and sorted(lco[1][2]) == sorted(map(str, range(30, 40)))
    with pytest.raises(ValueError, match="summing to 1"):
        split_subjects(data, (0.5, 0.6))


def test_preprocessor_fits_on_training_only_and_round_trips_without_pickle():
    train = pd.DataFrame({"subject_id": [1, 2, 3, 4], "age": [20.0, np.nan, 40.0, 60.0], "wt": [60.0, 70.0, 80.0, 90.0],
                          "sex": ["F", "M", None, "F"]})
    new = pd.DataFrame({"subject_id": [9, 10], "age": [np.nan, 100.0], "wt": [75.0, 50.0], "sex": ["X", "M"]})
    pre = CovariatePreprocessor().fit(train)
    with pytest.warns(UserWarning, match=r"'sex': \['X'\]"):
        x = pre.transform(new)
    # reference coding against the most frequent level (F); missing is its own level
    assert pre.feature_names_ == ["age", "wt", "age_missing", "sex[M vs F]", "sex[missing vs F]"]
    # imputation with the training median (40), scaling with training mean/sd, unseen category -> the reference
    mean_age, sd_age = np.mean([20.0, 40.0, 40.0, 60.0]), np.std([20.0, 40.0, 40.0, 60.0])
    assert np.isclose(x[0, 0], (40.0 - mean_age) / sd_age) and x[0, 2] == 1.0 and x[1, 2] == 0.0
    assert x[0, 3:].tolist() == [0.0, 0.0] and x[1, 3:].tolist() == [1.0, 0.0]
    loaded = CovariatePreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    with pytest.warns(UserWarning, match=r"'sex': \['X'\]"):
        assert np.array_equal(loaded.transform(new), x) and loaded.feature_names_ == pre.feature_names_
    assert np.array_equal(loaded.transform(train), pre.transform(train)) and loaded.to_dict() == pre.to_dict()
    with pytest.raises(ValueError, match="not fitted"):
        CovariatePreprocessor().transform(new)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['wt'\]"):
        pre.transform(new.drop(columns="wt"))


def test_dataset_with_preprocessor_and_errors():
    data = small_cohort()
    pre = CovariatePreprocessor().fit(data.covariates)
    ds = SubjectDataset(data, model="baccam2006", preprocessor=pre)
    assert ds.batch().covariates.shape == (3, len(pre.feature_names_))
    with pytest.raises(ValueError, match="pass model="):
        SubjectDataset(data)
    with pytest.raises(ValueError, match="not in the given list"):
        SubjectDataset(data, model="baccam2006", observables=["log10_V"])


def test_vectorised_batch_equals_item_by_item_collate():
    from hybridtwin.data import collate

    ds = SubjectDataset(small_cohort(), model="baccam2006", dtype=torch.float64)
    fast, slow = ds.batch([2, 0]), collate([ds[2], ds[0]], ds)
    for name in ("times", "values", "observable", "censored", "mask", "covariates", "cohort"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    assert torch.equal(torch.nan_to_num(fast.lloq), torch.nan_to_num(slow.lloq))
    for name in ("bolus_time", "bolus_amount", "inf_start", "inf_end", "inf_rate", "inf_target"):
        assert torch.equal(getattr(fast.schedule, name), getattr(slow.schedule, name)), name
    assert fast.subject_ids == ["s3", "s1"]


def test_preprocessor_log10_columns():
    train = pd.DataFrame({"subject_id": [1, 2, 3], "marker": [10.0, 100.0, 1000.0]})
    pre = CovariatePreprocessor(log10=["marker"]).fit(train)
    x = pre.transform(train)[:, 0]
    assert np.allclose(x, (np.array([1.0, 2.0, 3.0]) - 2.0) / np.std([1.0, 2.0, 3.0]))
    loaded = CovariatePreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert np.allclose(loaded.transform(train)[:, 0], x)
    with pytest.raises(ValueError, match="values <= 0"):
        pre.transform(pd.DataFrame({"subject_id": [4], "marker": [0.0]}))
