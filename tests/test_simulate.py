"""hybridtwin.simulate: named inputs, cohorts, dose tables and clear errors."""

import numpy as np
import pandas as pd
import pytest

import hybridtwin as ht


def test_single_subject_table_layout_and_defaults():
    df = ht.simulate("baccam2006", np.linspace(0, 10, 41))
    assert list(df.columns) == ["time", "T", "I1", "I2", "V", "log10_V"]
    assert df["T"].iloc[0] == 4e8 and df["V"].iloc[0] == 0.75
    assert np.allclose(df["log10_V"], np.log10(df["V"]))
    assert df.attrs["status"] == {0: "ok"}


def test_params_dict_and_initial_state_override():
    base = ht.simulate("baccam2006", [0, 1])
    faster = ht.simulate("baccam2006", [0, 1], params={"beta": 6.4e-5}, initial_state={"V": 2.0})
    assert faster["V"].iloc[0] == 2.0
    assert faster["V"].iloc[1] > base["V"].iloc[1]


def test_cohort_frame_with_dose_table_matches_individual_runs():
    params = pd.DataFrame({"subject_id": ["a", "b", "c"], "p": [0.03, 0.046, 0.06]})
    doses = pd.DataFrame({"subject_id": ["a", "c"], "time": [1.0, 2.5], "amount": [5.0, 5.0],
                          "target": ["antiviral", "C_nai"], "duration": [0.0, 0.5]})
    times = np.linspace(0, 8, 17)
    cohort = ht.simulate("baccam2006", times, params=params, doses=doses, rtol=1e-10)
    assert list(cohort["subject_id"].unique()) == ["a", "b", "c"]
    assert "C_nai" in cohort.columns
    for sid, p, dose in (("a", 0.03, [ht.Dose(1.0, 5.0, "antiviral")]), ("b", 0.046, []),
                         ("c", 0.06, [ht.Dose(2.5, 5.0, "C_nai", duration=0.5)])):
        alone = ht.simulate("baccam2006", times, params={"p": p}, doses=dose, rtol=1e-10)
        rows = cohort[cohort.subject_id == sid]
        assert np.allclose(rows["V"].to_numpy(), alone["V"].to_numpy(), rtol=1e-12)
    # the antiviral lowers the viral peak relative to no treatment at the same p
    untreated = ht.simulate("baccam2006", times, params={"p": 0.03}, rtol=1e-10)
    assert cohort[cohort.subject_id == "a"]["V"].max() < untreated["V"].max()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(model="nope", times=[0, 1]), "unknown model 'nope'"),
        (dict(times=[0, 1], params={"bta": 1.0}), r"unknown parameter\(s\) \['bta'\]"),
        (dict(times=[0, 1], params={"beta": float("nan")}), "must be finite"),
        (dict(times=[0, -1]), ">= 0"),
        (dict(times=[0, 2, 1]), "strictly increasing"),
        (dict(times=[0, float("inf")]), "finite"),
        (dict(times=[0, 1], initial_state={"W": 1.0}), "unknown state 'W'"),
        (dict(times=[0, 1], doses=[ht.Dose(0.5, 1.0, "Z")]), r"dose target\(s\) \['Z'\]"),
        (dict(times=[0, 1], params=pd.DataFrame({"subject_id": [1, 1], "beta": [1e-5, 2e-5]})), "duplicate subject_id"),
        (dict(times=[0, 1], params=pd.DataFrame({"beta": [1e-5, 2e-5]}),
              doses=pd.DataFrame({"time": [0.0], "amount": [1.0], "target": ["V"]})), "needs a subject_id column"),
    ],
)
def test_bad_input_gets_a_clear_error(kwargs, message):
    kwargs.setdefault("model", "baccam2006")
    with pytest.raises(ValueError, match=message):
        ht.simulate(**kwargs)


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(time=-1.0, amount=1.0, target="V"), "time must be >= 0"),
        (dict(time=1.0, amount=-1.0, target="V"), "amount must be >= 0"),
        (dict(time=1.0, amount=1.0, target="V", additional=2), "need an interval"),
        (dict(time=1.0, amount=float("nan"), target="V"), "amount must be finite"),
        (dict(time=1.0, amount=1.0, target="V", duration=3.0, interval=2.0, additional=1), "cannot repeat"),
    ],
)
def test_bad_doses_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        ht.Dose(**args)


def test_failed_subject_is_reported_not_hidden():
    # dy/dt = k y^2 blows up at t = 1/(k y0): the second subject diverges before t = 2
    blowup = ht.Model("blowup", ["y"], [ht.Parameter("k", 0.1, 0.0, 10.0), ht.Parameter("y0", 1.0, 0.0, 10.0)],
                      rhs=lambda t, s, p: {"y": p.k * s.y ** 2}, initial={"y": "y0"})
    params = pd.DataFrame({"subject_id": ["fine", "explodes"], "k": [0.1, 1.0]})
    with pytest.warns(RuntimeWarning, match="explodes"):
        df = ht.simulate(blowup, [0.5, 2.0], params=params)
    assert df.attrs["status"]["fine"] == "ok" and df.attrs["status"]["explodes"] != "ok"
    fine = df[df.subject_id == "fine"]["y"].to_numpy()
    assert np.allclose(fine, 1.0 / (1.0 - 0.1 * np.array([0.5, 2.0])), rtol=1e-7)
    assert np.isnan(df[df.subject_id == "explodes"]["y"].iloc[1])
