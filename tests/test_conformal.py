"""Split-conformal band calibration (hybridtwin.conformal): coverage on new exchangeable rows, the finite-sample
rank, per-observable factors, and refusals of bad input."""

import numpy as np
import pandas as pd
import pytest

from hybridtwin.conformal import ConformalBands, conformal_bands


def _rows(rng, n, observable="y", sd=1.0, lo=3.0, hi=3.0, prefix="p"):
    """n rows whose values scatter N(0, sd) about a median of 0; the band is (-lo, +hi)."""
    pred = pd.DataFrame({"subject_id": [f"{prefix}{i}" for i in range(n)], "time": 1.0, "observable": observable,
                         "median": 0.0, "lower": -lo, "upper": hi})
    obs = pred[["subject_id", "time", "observable"]].assign(value=rng.normal(0.0, sd, n), censored=False)
    return pred, obs


def _coverage(pred, obs):
    m = obs.merge(pred, on=["subject_id", "time", "observable"])
    return float(np.mean((m["value"] >= m["lower"]) & (m["value"] <= m["upper"])))


@pytest.mark.parametrize("lo,hi", [(3.0, 3.0), (0.2, 0.2), (0.5, 2.5)])
def test_rescaled_bands_cover_the_level_on_new_rows(lo, hi):
    """Bands far too wide, far too narrow, or lopsided: calibrated on 2,000 rows, they cover 90 % (and, fitted at
    0.5, 50 %) of 20,000 new rows, where the raw bands do not."""
    rng = np.random.default_rng(0)
    cal_pred, cal_obs = _rows(rng, 2000, lo=lo, hi=hi, prefix="c")
    new_pred, new_obs = _rows(rng, 20000, lo=lo, hi=hi, prefix="n")
    raw = _coverage(new_pred, new_obs)
    assert abs(raw - 0.9) > 0.09
    for level, tol in ((0.9, 0.015), (0.5, 0.02)):
        bands = conformal_bands(cal_pred, cal_obs, level=level)
        out = bands.apply(new_pred)
        assert abs(_coverage(out, new_obs) - level) < tol
        assert np.array_equal(out["median"], new_pred["median"])
        assert out.attrs["conformal"]["level"] == level and bands.n_calibration == {"y": 2000}


def test_finite_sample_rank_gives_exact_marginal_coverage():
    """With n = 19 calibration rows at level 0.9 the factor is the 18th smallest score, so a new exchangeable row
    is covered with probability exactly 18/20 = 0.90 (an off-by-one rank would give 0.85 or 0.95)."""
    rng = np.random.default_rng(1)
    hits = []
    for rep in range(800):
        sd = rng.uniform(0.5, 2.0)
        cal_pred, cal_obs = _rows(rng, 19, sd=sd)
        scale = conformal_bands(cal_pred, cal_obs, level=0.9).factors["y"]
        hits.append(abs(rng.normal(0.0, sd)) <= 3.0 * scale)
    assert abs(np.mean(hits) - 0.90) < 0.025, np.mean(hits)  # SE 0.011; off by one rank is 0.05 away


def test_factors_are_per_observable_and_censored_rows_do_not_score():
    rng = np.random.default_rng(2)
    p1, o1 = _rows(rng, 500, observable="a", sd=0.5, prefix="x")
    p2, o2 = _rows(rng, 500, observable="b", sd=2.0, prefix="x")
    pred, obs = pd.concat([p1, p2]), pd.concat([o1, o2])
    # censored rows with absurd values must be ignored
    obs = pd.concat([obs, obs.iloc[:50].assign(time=2.0, value=1e6, censored=True)])
    pred = pd.concat([pred, pred.iloc[:50].assign(time=2.0)])
    bands = conformal_bands(pred, obs, level=0.9)
    assert bands.n_calibration == {"a": 500, "b": 500}
    # 1.645 SD is the 90 % half-width of a normal: factor * 3 should be close to it
    assert bands.factors["a"] * 3 == pytest.approx(1.645 * 0.5, rel=0.12)
    assert bands.factors["b"] * 3 == pytest.approx(1.645 * 2.0, rel=0.12)
    out = bands.apply(pd.concat([p1, p2]))
    assert out.loc[out["observable"] == "b", "upper"].iloc[0] == pytest.approx(3 * bands.factors["b"])


def test_bad_input_is_refused_with_a_clear_message():
    rng = np.random.default_rng(3)
    pred, obs = _rows(rng, 30)
    with pytest.raises(ValueError, match="level must be in"):
        conformal_bands(pred, obs, level=1.0)
    with pytest.raises(ValueError, match="missing required column"):
        conformal_bands(pred.drop(columns="median"), obs)
    with pytest.raises(ValueError, match="DataFrame"):
        conformal_bands(pred.to_dict(), obs)
    with pytest.raises(ValueError, match=r"too few for level 0.9 \(need at least 9\)"):
        conformal_bands(pred.iloc[:8], obs)
    with pytest.raises(ValueError, match=r"need at least 19"):
        conformal_bands(pred.iloc[:18], obs, level=0.95)
    with pytest.raises(ValueError, match="duplicated"):
        conformal_bands(pd.concat([pred, pred.iloc[:1]]), obs)
    with pytest.raises(ValueError, match="no quantified calibration rows"):
        conformal_bands(pred, obs.assign(censored=True))
    with pytest.raises(ValueError, match="does not contain its median"):
        conformal_bands(pred.assign(upper=-1.0), obs)
    bands = conformal_bands(pred, obs)
    with pytest.raises(ValueError, match=r"no conformal factor for observable\(s\) \['z'\]"):
        bands.apply(pred.assign(observable="z"))
    assert isinstance(bands, ConformalBands)
