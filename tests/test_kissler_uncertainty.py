"""Per-person forecast scores and the people bootstrap of experiments/kissler_uncertainty.py."""

import doctest
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import challenger_folds as cf  # noqa: E402
import kissler_uncertainty as ku  # noqa: E402


def _forecast(rng, n_people=8):
    rows, preds = [], []
    for i in range(n_people):
        for t in range(6):
            cens = bool(rng.random() < 0.5)
            value = np.nan if cens else 3 + 2 * rng.random()
            rows.append(dict(subject_id=f"p{i}", time=float(t), observable="log10_V", censored=cens, lloq=2.66,
                             value=value))
            med = 2 + 3 * rng.random()
            preds.append(dict(subject_id=f"p{i}", time=float(t), observable="log10_V", median=med, lower=med - 1,
                              upper=med + 1, lower50=med - 0.4, upper50=med + 0.4))
    return pd.DataFrame(preds), pd.DataFrame(rows)


def test_person_scores_pool_to_the_scores():
    rng = np.random.default_rng(3)
    pred, late = _forecast(rng)
    per = cf.person_scores(pred, late)
    s = cf.score(pred, late)
    assert len(per) == 8 and per["n_rows"].sum() == len(late)
    assert np.sqrt(per["sse_reported"].sum() / per["n_rows"].sum()) == pytest.approx(s["rmse_reported"], rel=1e-12)
    assert np.sqrt(per["sse_quantified"].sum() / per["n_quantified"].sum()) == pytest.approx(s["rmse"], rel=1e-12)
    assert per["in90_reported"].sum() / len(late) == pytest.approx(s["coverage90_reported"], rel=1e-12)
    # a person's own sums: recomputed by hand for one of them
    m = late.merge(pred, on=["subject_id", "time", "observable"])
    one = m[m["subject_id"] == "p2"]
    obs = np.where(one["censored"], one["lloq"], one["value"])
    sse = np.sum((np.maximum(one["median"], one["lloq"]) - obs) ** 2)
    assert per.set_index("subject_id").loc["p2", "sse_reported"] == pytest.approx(sse, rel=1e-12)
    with pytest.raises(RuntimeError, match="without a prediction"):
        cf.person_scores(pred.iloc[1:], late)


def _people(sse_a, sse_b, n=10):
    ids = [f"x{i}" for i in range(len(sse_a))]
    return pd.DataFrame({"k": 1, "method": ["a"] * len(ids) + ["b"] * len(ids), "subject_id": ids * 2,
                         "n_rows": n, "sse_reported": list(sse_a) + list(sse_b)})


def test_bootstrap_recovers_known_ratio_and_its_spread():
    rng = np.random.default_rng(0)
    # 200 people, a's errors half of b's in squared terms: ratio sqrt(0.5) = 0.707 for every sample of people
    b = rng.gamma(2.0, 1.0, 200)
    r = ku.bootstrap(_people(0.5 * b, b), ["a"], ["b"], k=1, n_boot=2000, seed=1)
    q = r["ratio"]["a"]
    assert q["observed"] == pytest.approx(np.sqrt(0.5), rel=1e-12)
    assert q["p05"] == pytest.approx(np.sqrt(0.5), rel=1e-9) and q["p95"] == pytest.approx(np.sqrt(0.5), rel=1e-9)
    assert q["share_meeting_target"] == 1.0
    # independent errors: the interval of the ratio widens as people get fewer, and it contains the observed ratio
    a = rng.gamma(2.0, 1.0, 200)
    wide = ku.bootstrap(_people(a[:15], b[:15]), ["a"], ["b"], k=1, n_boot=2000, seed=1)["ratio"]["a"]
    narrow = ku.bootstrap(_people(a, b), ["a"], ["b"], k=1, n_boot=2000, seed=1)["ratio"]["a"]
    assert wide["p95"] - wide["p05"] > 2 * (narrow["p95"] - narrow["p05"])
    for w in (wide, narrow):
        assert w["p05"] < w["observed"] < w["p95"]
    # the RMSE interval of one method against the textbook normal approximation of its mean squared error
    e = ku.bootstrap(_people(a, b), ["a"], ["b"], k=1, n_boot=4000, seed=2)["rmse"]["a"]
    mse, se = a.mean() / 10, a.std() / 10 / np.sqrt(len(a))
    assert e["p05"] == pytest.approx(np.sqrt(mse - 1.645 * se), rel=0.03)
    assert e["p95"] == pytest.approx(np.sqrt(mse + 1.645 * se), rel=0.03)


def test_bootstrap_picks_the_best_baseline_in_each_replicate():
    rng = np.random.default_rng(4)
    b1, b2 = rng.gamma(2.0, 1.0, 40), rng.gamma(2.0, 1.0, 40)
    t = 0.3 * (b1 + b2)
    people = pd.concat([_people(t, b1), _people(t, b2).query("method == 'b'").assign(method="c")])
    r = ku.bootstrap(people, ["a"], ["b", "c"], k=1, n_boot=500, seed=0, learner="b")
    best = min(np.sqrt(b1.sum() / 400), np.sqrt(b2.sum() / 400))
    assert r["ratio"]["a"]["observed"] == pytest.approx(np.sqrt(t.sum() / 400) / best, rel=1e-12)
    assert sum(r["best_baseline_share"].values()) == pytest.approx(1.0)
    assert r["minus_learner"]["a"]["observed"] == pytest.approx(np.sqrt(t.sum() / 400) - np.sqrt(b1.sum() / 400))
    # the ratio to the best of two baselines is never above the ratio to either one alone
    alone = ku.bootstrap(people, ["a"], ["b"], k=1, n_boot=500, seed=0)["ratio"]["a"]
    assert r["ratio"]["a"]["p95"] >= alone["p95"] - 1e-12


def test_bootstrap_refuses_unequal_people_and_bad_settings():
    people = _people([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="same people"):
        ku.bootstrap(people.iloc[:-1], ["a"], ["b"], k=1, n_boot=200)
    with pytest.raises(ValueError, match="no rows"):
        ku.bootstrap(people, ["a"], ["z"], k=1, n_boot=200)
    with pytest.raises(ValueError, match="n_boot"):
        ku.bootstrap(people, ["a"], ["b"], k=1, n_boot=10)


def test_run_writes_tables(tmp_path):
    rng = np.random.default_rng(5)
    frames = []
    for m in (*ku.TWIN[:1], *ku.LISTED[:2], ku.LEARNER):
        frames.append(pd.DataFrame({"fold": 0, "k": 1, "method": m, "subject_id": [f"s{i}" for i in range(12)],
                                    "n_rows": 20, "sse_reported": rng.gamma(2.0, 1.0, 12)}))
    pd.concat(frames).to_csv(tmp_path / "p.csv", index=False)
    res = ku.run([str(tmp_path / "p.csv")], out=tmp_path, n_boot=300)
    assert res[0]["n_people"] == 12 and set(res[0]["ratio"]) == {ku.TWIN[0], ku.LEARNER}
    text = (tmp_path / "kissler_uncertainty.md").read_text()
    assert "## k = 1 (12 people" in text and ku.TWIN[0] in text
    # a tagged file: the same methods as a variant, side by side with the untagged ones
    frames[0].assign(sse_reported=frames[0]["sse_reported"] / 4).to_csv(tmp_path / "v.csv", index=False)
    res = ku.run([str(tmp_path / "p.csv"), str(tmp_path / "v.csv") + "@half"], out=tmp_path, n_boot=300)
    tagged = res[0]["rmse"][ku.TWIN[0] + " [half]"]["observed"]
    assert tagged == pytest.approx(res[0]["rmse"][ku.TWIN[0]]["observed"] / 2, rel=1e-12)
    pd.concat(frames + frames[:1]).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(ValueError, match="appear twice"):
        ku.run([str(tmp_path / "dup.csv")], out=tmp_path, n_boot=300)


def test_docstring_example():
    assert doctest.testmod(ku, verbose=False).failed == 0
