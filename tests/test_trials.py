"""Virtual trials: populations, designs, the sanity checks a pharmacometrician runs first, power, optimisation."""

import numpy as np
import pandas as pd
import pytest

from hybridtwin.engine import ExactEngine
from hybridtwin.scenarios import ScenarioSpace
from hybridtwin.sweep import Endpoint
from hybridtwin.trials import (Arm, CovariateModel, TrialDesign, optimise_schedule, power_curve, run_trial, subgroup,
                               virtual_population)

SPACE = ScenarioSpace([{"name": "prime", "target": "Ag", "time": 0, "amount": 1},
                       {"name": "boost", "target": "Ag", "time": [30, 330], "amount": [0, 4]}])
PROTECTED = Endpoint("above", "log10_Ab", time=360, threshold=2.3, name="protected")
TITRE = Endpoint("value_at", "log10_Ab", time=360, name="titre")


def _population(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"subject_id": [f"p{i}" for i in range(n)],
                         "delta_Ab": 0.025 * np.exp(0.3 * rng.standard_normal(n)),
                         "beta_S": 4000 * np.exp(0.3 * rng.standard_normal(n)),
                         "age": rng.integers(20, 80, n)})


ENGINE = ExactEngine("vaccine_asc", rtol=1e-6)


def test_covariate_model_keeps_categories_ranges_and_correlation():
    rng = np.random.default_rng(1)
    age = rng.uniform(20, 80, 400)
    src = pd.DataFrame({"subject_id": range(400), "age": age.round(), "marker": np.exp(0.02 * age + 0.2 * rng.standard_normal(400)),
                        "sex": rng.choice(["F", "M"], 400, p=[0.7, 0.3])})
    new = CovariateModel("gmm", seed=0).fit(src).sample(4000)
    assert list(new.columns) == ["subject_id", "age", "marker", "sex"] and new["subject_id"].is_unique
    assert new["age"].between(20, 80).all() and (new["age"] == new["age"].round()).all()
    assert abs((new["sex"] == "F").mean() - (src["sex"] == "F").mean()) < 0.03
    assert abs(new["age"].mean() - src["age"].mean()) < 2.0
    r_src = np.corrcoef(src["age"], np.log(src["marker"]))[0, 1]
    r_new = np.corrcoef(new["age"], np.log(new["marker"]))[0, 1]
    assert abs(r_new - r_src) < 0.1, (r_src, r_new)
    boot = CovariateModel("bootstrap").fit(src).sample(50, seed=3)
    assert set(map(tuple, boot[["age", "marker", "sex"]].to_numpy())) <= set(map(tuple, src[["age", "marker", "sex"]].to_numpy()))
    with pytest.raises(ValueError, match="method"):
        CovariateModel("copula")
    with pytest.raises(RuntimeError, match="fit"):
        CovariateModel().sample(3)


def test_subgroup_filters_and_refuses_unknown_columns_and_empty_results():
    pop = _population()
    old = subgroup(pop, {"age": [65, None]})
    assert len(old) and old["age"].ge(65).all()
    assert len(subgroup(pop, "age < 30 and delta_Ab > 0.02")) > 0
    with pytest.raises(ValueError, match="not in the population"):
        subgroup(pop, {"sex": "F"})
    with pytest.raises(ValueError, match="selects no patient"):
        subgroup(pop, {"age": [200, 300]})


def _booster_design(**kw):
    arms = [Arm("none", SPACE.scenario([90, 0])), Arm("half", SPACE.scenario([90, 0.5])), Arm("one", SPACE.scenario([90, 1])),
            Arm("four", SPACE.scenario([90, 4]))]
    return TrialDesign(arms, [PROTECTED, TITRE], **{"n_per_arm": 40, "replicates": 10, "times": [180, 360], **kw})


def test_same_seed_same_result_and_a_higher_dose_never_lowers_protection():
    pop = _population()
    d = _booster_design(paired=True)
    a, b = run_trial(d, ENGINE, pop, progress=False), run_trial(d, ENGINE, pop, progress=False)
    pd.testing.assert_frame_equal(a.patients, b.patients)
    pd.testing.assert_frame_equal(a.summary(), b.summary())
    assert a.n_failed == 0 and len(a.patients) == 10 * 4 * 40
    # the same patients in every arm: per replicate the protection rate can only rise with the booster dose
    rates = a.per_replicate[a.per_replicate.endpoint == "protected"].pivot(index="replicate", columns="arm",
                                                                             values="estimate")
    assert (np.diff(rates[["none", "half", "one", "four"]].to_numpy(), axis=1) >= 0).all()
    assert rates["four"].mean() > rates["none"].mean() + 0.2  # and the booster matters for this population
    other = run_trial(d.with_(seed=1), ENGINE, pop, progress=False)
    assert not other.patients["subject_id"].equals(a.patients["subject_id"])
    # an extra booster never lowers protection either (prime + boost vs prime + boost + second boost)
    two = ScenarioSpace([{"name": "prime", "target": "Ag", "time": 0, "amount": 1},
                         {"name": "boost", "target": "Ag", "time": 90, "amount": 1},
                         {"name": "boost2", "target": "Ag", "time": [100, 350], "amount": [0, 1]}])
    high = Endpoint("above", "log10_Ab", time=360, threshold=3.0, name="protected")
    d2 = TrialDesign([Arm("one booster", two.scenario([200, 0])), Arm("two boosters", two.scenario([200, 1]))], [high],
                     n_per_arm=60, replicates=3, times=[360], paired=True)
    r2 = run_trial(d2, ENGINE, pop, progress=False).patients.pivot_table(index=["replicate", "subject_id"], columns="arm",
                                                                         values="protected")
    assert (r2["two boosters"] >= r2["one booster"]).all() and r2["two boosters"].mean() > r2["one booster"].mean()


def test_identical_arms_give_a_difference_whose_interval_covers_zero_at_the_nominal_rate():
    pop = _population(2000, seed=2)
    same = SPACE.scenario([90, 0])
    ep = Endpoint("above", "log10_Ab", time=360, threshold=2.23, name="protected")  # about half protected
    d = TrialDesign([Arm("A", same), Arm("B", same)], [ep, TITRE], n_per_arm=40, replicates=400, times=[360], seed=5)
    r = run_trial(d, ENGINE, pop, progress=False)
    assert 0.3 < r.summary().set_index(["endpoint", "arm"]).loc[("protected", "A"), "estimate"] < 0.7
    diff = r.differences().set_index("endpoint")
    for label in ("protected", "titre"):
        # 400 replicates: the share rejecting "no difference" has SE ~0.011 around alpha = 0.05
        assert 0.015 <= diff.loc[label, "power"] <= 0.09, (label, diff.loc[label, "power"])
    assert abs(diff.loc["titre", "difference"]) < 0.02


def test_summary_differences_subgroups_and_power():
    pop = _population(600)
    d = _booster_design(n_per_arm=30, replicates=20, subgroups={"65+": {"age": [65, None]}}, seed=3)
    r = run_trial(d, ENGINE, pop, progress=False)
    s = r.summary()
    assert set(s.columns) >= {"endpoint", "arm", "estimate", "ci_low", "ci_high", "spread_low", "spread_high"}
    assert (s["ci_low"] <= s["estimate"] + 1e-12).all() and (s["estimate"] <= s["ci_high"] + 1e-12).all()
    diff = r.differences().set_index(["endpoint", "arm"])
    assert diff.loc[("titre", "four"), "power"] == 1.0 and diff.loc[("titre", "four"), "difference"] > 0.3
    sub = r.subgroups()
    assert set(sub["subgroup"]) == {"65+"} and (sub["n"] < 30).all()
    curve = power_curve(r, [5, 20, 80], endpoint="protected", effect=0.3, replicates=200)
    four = curve[curve.arm == "four"].set_index("n_per_arm")
    assert four["simulated"].is_monotonic_increasing and four.loc[80, "simulated"] > 0.9
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    p0 = r.patients.loc[r.patients.arm == "none", "protected"].mean()
    es = proportion_effectsize(p0 + 0.3, p0)
    assert four.loc[20, "analytic"] == pytest.approx(NormalIndPower().power(abs(es), nobs1=20, alpha=0.05), rel=1e-9)
    with pytest.raises(ValueError, match="unknown endpoint"):
        power_curve(r, [10], endpoint="nope")


def test_design_validation():
    arm = Arm("a", SPACE.scenario([90, 1]))
    with pytest.raises(ValueError, match="unique"):
        TrialDesign([arm, arm], [TITRE], n_per_arm=5)
    with pytest.raises(ValueError, match="reference"):
        TrialDesign([arm], [TITRE], n_per_arm=5, reference="b")
    with pytest.raises(ValueError, match="n_per_arm"):
        TrialDesign([arm], [TITRE], n_per_arm=1)
    with pytest.raises(TypeError, match="label"):
        TrialDesign([arm], [object()], n_per_arm=5)
    with pytest.raises(ValueError, match="times"):
        run_trial(TrialDesign([arm], [TITRE], n_per_arm=5), ENGINE, _population())


@pytest.mark.slow  # 15-40 s on 2 cores: `make test-all` (keeps the default run near the ~3 min budget)
def test_optimiser_finds_the_exact_optimum_and_the_exact_engine_confirms_it():
    from hybridtwin.surrogate import Domain, fit_surrogate

    dom = Domain.from_dict({"model": "vaccine_asc", "parameters": {"delta_Ab": [0.015, 0.04]},
                            "scenarios": {"doses": [{"name": "prime", "target": "Ag", "time": 0, "amount": 1},
                                                    {"name": "boost", "target": "Ag", "time": [30, 330], "amount": 1}]},
                            "times": [180, 225, 270, 315, 360], "outputs": ["log10_Ab"]})
    s = fit_surrogate(dom, n_train=600, members=3, hidden=(32, 32), epochs=100, batch_size=64, progress=False, seed=0,
                      rank=8)
    pop = pd.DataFrame({"delta_Ab": np.linspace(0.016, 0.039, 15)})
    space = ScenarioSpace([{"name": "prime", "target": "Ag", "time": 0, "amount": 1},
                           {"name": "boost", "target": "Ag", "time": [30, 330], "amount": 1}])
    ep = Endpoint("auc", "log10_Ab")  # titre over days 180-360: best with a booster near day 200 (interior)
    res = optimise_schedule(s, pop, space, ep, method="optuna", n_trials=48, top_k=4, progress=False,
                            tolerance=7.0)  # 1 % of the objective
    assert res.confirmed and "exact" in res.top.columns
    # the exact optimum on a fine grid
    exact = optimise_schedule(ENGINE, pop, space, ep, grid={"boost.time": np.arange(30, 331, 5)}, times=dom.times,
                              exact=False, progress=False)
    assert 100 < exact.best["boost.time"] < 300  # an interior optimum
    assert abs(res.best["boost.time"] - exact.best["boost.time"]) <= 30
    assert res.top["exact"].iloc[0] >= 0.98 * exact.best["objective"]
    # constraints hold for every reported candidate; a space wider than the surrogate's is refused
    con = optimise_schedule(s, pop, space, ep, method="optuna", n_trials=32, constraints=["`boost.time` <= 120"],
                            exact=False, progress=False)
    assert con.top["boost.time"].le(120).all() and con.confirmed is None
    wide = ScenarioSpace([{"name": "prime", "target": "Ag", "time": 0, "amount": 1},
                          {"name": "boost", "target": "Ag", "time": [10, 400], "amount": 1}])
    with pytest.raises(ValueError, match="outside"):
        optimise_schedule(s, pop, wide, ep, n_trials=8, progress=False)


def test_virtual_population_from_a_twin_with_parameter_uncertainty():
    from test_surrogate import _twin_with_closure

    from hybridtwin.estimation.fisher import estimate_vector, population_columns

    twin, cohort = _twin_with_closure()
    pop = virtual_population(twin, 200, cohort.covariates, seed=1)
    assert len(pop) == 200 and set(twin.patient_names) <= set(pop.columns) and "age" in pop.columns
    with pytest.raises(ValueError, match="standard errors"):
        virtual_population(twin, 10, cohort.covariates, parameter_uncertainty=True, replicates=2)
    cols = population_columns(twin)
    twin.uncertainty = {"names": [c["name"] for c in cols], "estimate": estimate_vector(twin, cols).tolist(),
                        "cov": (np.eye(len(cols)) * 0.04).tolist()}
    rep = virtual_population(twin, 300, cohort.covariates, parameter_uncertainty=True, replicates=3, seed=1)
    assert sorted(rep["replicate"].unique()) == [0, 1, 2] and rep["subject_id"].is_unique
    med = rep.groupby("replicate")["beta_S"].median()
    assert med.max() / med.min() > 1.05  # each replicate has its own draw of the population estimates


def test_cli_trial_writes_the_report_and_refuses_bad_configs(tmp_path, capsys):
    import yaml

    from hybridtwin.cli import main

    cfg = {"engine": {"exact": "vaccine_asc"},
           "population": {"sample": 120, "parameters": {"delta_Ab": [0.015, 0.04]}, "seed": 1},
           "space": {"doses": [{"name": "prime", "target": "Ag", "time": 0, "amount": 1},
                               {"name": "boost", "target": "Ag", "time": [30, 330], "amount": [0, 4]}]},
           "arms": [{"name": "none", "factors": {"boost.time": 90, "boost.amount": 0}},
                    {"name": "boost", "factors": {"boost.time": 90, "boost.amount": 1}}],
           "endpoints": [{"kind": "above", "output": "log10_Ab", "time": 360, "threshold": 2.5, "name": "protected"},
                         {"kind": "value_at", "output": "log10_Ab", "time": 360, "name": "titre"}],
           "n_per_arm": 20, "replicates": 5, "times": [180, 360], "subgroups": {"slow decay": "delta_Ab < 0.025"},
           "power": {"sizes": [5, 20], "effect": 0.3, "replicates": 50},
           "optimise": {"endpoint": "titre", "grid": {"boost.time": [60, 180, 300], "boost.amount": [1]}, "patients": 20}, "out": "out"}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["trial", str(tmp_path / "t.yaml"), "--quiet"]) == 0
    out = tmp_path / "out"
    for name in ("report.md", "report.html", "endpoints.png", "power.png", "landscape.png", "patients.csv", "summary.csv"):
        assert (out / name).is_file(), name
    summary = pd.read_csv(out / "summary.csv").set_index(["endpoint", "arm"])
    assert summary.loc[("protected", "boost"), "estimate"] > summary.loc[("protected", "none"), "estimate"]
    assert "boost.time=300" in capsys.readouterr().out  # the latest booster: highest titre at day 360
    assert "Subgroups" in (out / "report.md").read_text() and "<table>" in (out / "report.html").read_text()
    cfg["arms"][0] = {"name": "none", "factors": {"boost.day": 90}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["trial", str(tmp_path / "bad.yaml"), "--quiet"]) == 2
    assert "boost.day" in capsys.readouterr().err
