"""hybridtwin.simulate: named inputs, cohorts, dose tables and clear errors."""

import re

import numpy as np
import pandas as pd
import pytest
import torch

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


@pytest.mark.slow
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


# -- parameter bounds --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, name, value",
    [({"beta": -1e-5}, "beta", "-1e-05"), ({"T0": -4e8}, "T0", "-4e+08"), ({"c": 0.0}, "c", "0"),
     ({"beta": 0.5}, "beta", "0.5")],
)
def test_out_of_bounds_parameters_are_refused(params, name, value):
    with pytest.raises(ValueError, match=rf"{name} must lie in \[.*\], got {re.escape(value)} for subject 0.*check_bounds=False"):
        ht.simulate("baccam2006", [0, 1], params=params)


def test_bounds_error_names_the_offending_subjects_only():
    params = pd.DataFrame({"subject_id": ["a", "b", "c"], "beta": [3e-5, -1e-5, 3e-5], "delta": [5.0, 5.0, 1e3]})
    with pytest.raises(ValueError) as err:
        ht.simulate("baccam2006", [0, 1], params=params)
    msg = str(err.value)
    assert "-1e-05 for subject 'b'" in msg and "1000 for subject 'c'" in msg and "'a'" not in msg
    assert "[1e-09, 0.01]" in msg and "[0.01, 100]" in msg


def test_check_bounds_false_is_an_explicit_escape_hatch():
    with pytest.warns(RuntimeWarning, match="negative_state"):
        df = ht.simulate("baccam2006", np.linspace(0, 10, 11), params={"beta": -1e-5}, check_bounds=False)
    assert (df["I1"] < 0).any()  # what the check protects against
    with pytest.raises(TypeError, match="check_bounds"):
        ht.simulate("baccam2006", [0, 1], check_bounds="no")


def test_parameter_space_check_bounds_transforms():
    space = ht.ParameterSpace([ht.Parameter("k", 1.0, 0.0, 10.0),  # log, lower bound 0 itself excluded
                               ht.Parameter("f", 0.5, 0.0, 1.0, transform="logit"),
                               ht.Parameter("x", 0.0, -1.0, 1.0, transform="identity"),
                               ht.Parameter("u", 0.0, None, None, transform="identity")])
    space.check_bounds(torch.tensor([[10.0, 0.999, -1.0, -1e300], [1e-300, 1e-9, 1.0, 1e300]], dtype=torch.float64))
    for row, what in (([0.0, 0.5, 0.0, 0.0], r"k must lie in \(0, 10\] \('log' transform: > 0\), got 0 for subject 'p'"),
                      ([1.0, 1.0, 0.0, 0.0], r"f must lie strictly inside \(0, 1\) \('logit' transform\), got 1"),
                      ([1.0, 0.0, 0.0, 0.0], r"f must lie strictly inside \(0, 1\)"),
                      ([1.0, 0.5, 1.5, 0.0], r"x must lie in \[-1, 1\], got 1.5"),
                      ([1.0, 0.5, 0.0, float("nan")], r"u must lie in \(-inf, inf\) and finite, got nan"),
                      ([float("inf"), 0.5, 0.0, 0.0], r"k must lie .* got inf")):
        with pytest.raises(ValueError, match=what):
            space.check_bounds(torch.tensor([row], dtype=torch.float64), ["p"], context=" here")
    # a float32 value at a float64 bound is accepted (compared in the values' precision)
    space.check_bounds(torch.tensor([[10.0, 0.5, -1.0, 0.0]], dtype=torch.float32))
    with pytest.raises(ValueError, match="2 subject ids for 1 rows"):
        space.check_bounds(np.zeros((1, 4)) + 0.5, ["a", "b"])


# -- negative states under a log10 observable ----------------------------------------------------------------------
def _declining():
    """y' = -r: crosses zero at t = y0 / r, observed on the log10 scale."""
    return ht.Model("declining", ["y"], [ht.Parameter("r", 1.0, 0.0, 10.0, transform="identity")],
                    rhs=lambda t, s, p: {"y": -p.r + 0.0 * s.y}, initial={"y": 1.0},
                    observables={"log10_y": ht.models.log10_observable("y")})


def test_negative_state_gives_nan_log10_and_a_status():
    m = _declining()
    params = pd.DataFrame({"subject_id": ["stays", "crosses"], "r": [0.1, 1.0]})
    with pytest.warns(RuntimeWarning, match=r"negative_state.*'crosses'"):
        df = ht.simulate(m, [0.5, 2.0], params=params)
    assert df.attrs["status"] == {"stays": "ok", "crosses": "negative_state"}
    crosses = df[df.subject_id == "crosses"]
    assert crosses["y"].iloc[1] == pytest.approx(-1.0)
    assert crosses["log10_y"].iloc[0] == pytest.approx(np.log10(0.5)) and np.isnan(crosses["log10_y"].iloc[1])
    assert np.allclose(df[df.subject_id == "stays"]["log10_y"], np.log10([0.95, 0.8]))
    # the training path (Model.observe) keeps its clip at LOG10_FLOOR
    y = torch.tensor([[[-1.0]]], dtype=torch.float64)
    assert float(m.observe(y, m.parameter_space.default_tensor()[:, None, :])["log10_y"]) == -30.0


def test_numerical_noise_around_zero_is_still_clipped(recwarn):
    m = _declining()
    # default atol for this state is 1e-12: a value a few atol below zero is noise, not a negative state
    for y0 in (0.0, -1e-14, -5e-12):
        df = ht.simulate(m, [0.0, 1.0], params={"r": 0.0}, initial_state={"y": y0})
        assert df.attrs["status"] == {0: "ok"} and (df["log10_y"] == -30.0).all()
    assert not [w for w in recwarn if "negative" in str(w.message)]
    with pytest.warns(RuntimeWarning, match="negative_state"):
        df = ht.simulate(m, [0.0, 1.0], params={"r": 0.0}, initial_state={"y": -1e-6})
    assert df["log10_y"].isna().all()
    # an explicit atol is the one compared against
    df = ht.simulate(m, [0.0, 1.0], params={"r": 0.0}, initial_state={"y": -1e-6}, atol=1e-6)
    assert df.attrs["status"] == {0: "ok"}


def test_log10_observable_knows_its_state():
    m = ht.models.get("baccam2006")
    assert m.observables["log10_V"].log10_of == "V"


# -- max_steps -------------------------------------------------------------------------------------------------------
def test_max_steps_is_passed_to_the_solver():
    with pytest.warns(RuntimeWarning, match="max_steps"):
        df = ht.simulate("baccam2006", np.linspace(0, 10, 11), max_steps=3)
    assert df.attrs["status"] == {0: "max_steps"} and df["V"].isna().any()
    df = ht.simulate("baccam2006", np.linspace(0, 10, 11), max_steps=np.int64(10_000))
    assert df.attrs["status"] == {0: "ok"}


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "100", None])
def test_bad_max_steps_is_refused(bad):
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        ht.simulate("baccam2006", [0, 1], max_steps=bad)
