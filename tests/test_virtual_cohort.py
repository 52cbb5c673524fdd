"""Virtual cohorts: determinism, ground truth recovery, agreement with a direct simulation, CLI, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import hybridtwin as ht
from hybridtwin.cli import main
from hybridtwin.data import SubjectDataset, validate
from hybridtwin.virtual import make_virtual_cohort
from hybridtwin.virtual.cohort import read_ground_truth, write_cohort_tables
from hybridtwin.virtual.config import VirtualCohortConfig

TABLES = ("observations", "doses", "covariates", "true_parameters", "trajectories")


@pytest.fixture(scope="module")
def vaccine():
    return make_virtual_cohort("vaccine_asc", n_subjects=600, n_cohorts=3, seed=0)


def _features(cov: pd.DataFrame) -> pd.DataFrame:
    """The covariate terms, recomputed independently from the covariate table."""
    return pd.DataFrame({"age_decade": (cov["age"] - 50) / 10, "female": (cov["sex"] == "F").astype(float),
                         "log_marker": np.log10(cov["baseline_marker"]) - 2,
                         "age_over_60": np.maximum(cov["age"] - 60, 0) / 10,
                         **{c: cov[c] for c in cov.columns if c.startswith("noise_")}})


@pytest.mark.slow
def test_same_seed_identical_other_seed_differs():
    first = make_virtual_cohort("vaccine_asc", n_subjects=120, n_cohorts=3, seed=0)
    again = make_virtual_cohort("vaccine_asc", n_subjects=120, n_cohorts=3, seed=0)
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(first, name), getattr(again, name))
    for key in ("features", "random_effects", "observation_noise"):
        pd.testing.assert_frame_equal(first.meta["ground_truth"][key], again.meta["ground_truth"][key])
    other = make_virtual_cohort("vaccine_asc", n_subjects=120, n_cohorts=3, seed=1)
    for name in ("observations", "covariates", "true_parameters"):
        assert not getattr(first, name).equals(getattr(other, name))


def test_counts_cohorts_and_design(vaccine):
    gt = vaccine.meta["ground_truth"]
    assert vaccine.report["n_subjects"] == 600 and len(vaccine.covariates) == 600
    assert len(vaccine.true_parameters) == 600 and vaccine.true_parameters["subject_id"].is_unique
    assert vaccine.report["subjects_per_cohort"] == {"cohort_1": 200, "cohort_2": 200, "cohort_3": 200}
    assert len(vaccine.trajectories) == len(vaccine.observations)
    # regimen: prime at 0 and a cohort-specific boost
    cohort = vaccine.observations.groupby("subject_id")["cohort"].first()
    boost = vaccine.doses[vaccine.doses["time"] > 0].set_index("subject_id")["time"]
    assert boost.groupby(cohort).unique().map(list).to_dict() == {"cohort_1": [21.0], "cohort_2": [28.0],
                                                                 "cohort_3": [35.0]}
    assert (vaccine.doses.groupby("subject_id")["time"].min() == 0).all()
    # sampling density, declared per cohort
    per_subject = vaccine.observations.groupby("subject_id").size().groupby(cohort)
    for _, row in gt["sampling"].iterrows():
        sizes = per_subject.get_group(row["cohort"])
        assert sizes.min() >= row["obs_min"] - 1 and sizes.max() <= row["obs_max"]
    assert per_subject.mean()["cohort_1"] > per_subject.mean()["cohort_2"] > per_subject.mean()["cohort_3"]
    # covariate distribution differs: age ranges
    age = vaccine.covariates.set_index("subject_id")["age"].groupby(cohort)
    for _, row in gt["covariate_distributions"].iterrows():
        a = age.get_group(row["cohort"])
        assert a.min() >= row["age_min"] and a.max() <= row["age_max"]
    # irregular times: subjects do not share one grid
    assert vaccine.observations.groupby("subject_id")["time"].apply(tuple).nunique() > 500


def test_covariate_effects_recoverable(vaccine):
    gt = vaccine.meta["ground_truth"]
    X = _features(vaccine.covariates)
    pd.testing.assert_frame_equal(X.reset_index(drop=True), gt["features"][X.columns].reset_index(drop=True),
                                  check_names=False)
    design = np.column_stack([np.ones(len(X)), X.to_numpy()])
    effects = gt["effects"]
    for param, omega in gt["omega"].items():
        y = np.log(vaccine.true_parameters[param].to_numpy())
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        resid = y - design @ coef
        sigma = resid.std(ddof=design.shape[1])
        se = sigma * np.sqrt(np.diag(np.linalg.inv(design.T @ design)))
        declared = np.zeros(design.shape[1])
        declared[0] = np.log(gt["population"][param])
        for _, e in effects[effects["parameter"] == param].iterrows():
            declared[1 + list(X.columns).index(e["term"])] = e["coefficient"]
        z = (coef - declared) / se
        assert np.all(np.abs(z) < 4.5), (param, dict(zip(["intercept", *X.columns], np.round(z, 2))))
        assert abs(sigma - omega) < 0.15 * omega, (param, sigma, omega)
    # the random effects are what is left over
    eta = gt["random_effects"].set_index("subject_id")
    np.testing.assert_allclose(eta.std().to_numpy(), [gt["omega"][c] for c in eta.columns], rtol=0.1)


def test_trajectories_match_direct_simulation(vaccine):
    traj, tp, doses = vaccine.trajectories, vaccine.true_parameters, vaccine.doses
    for sid in ["S0001", "S0250", "S0600"]:
        rows = traj[traj["subject_id"] == sid]
        direct = ht.simulate("vaccine_asc", rows["time"].to_numpy().copy(), params=tp[tp["subject_id"] == sid],
                             doses=doses[doses["subject_id"] == sid])
        np.testing.assert_allclose(direct["log10_Ab"].to_numpy(), rows["value"].to_numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, options", [("vaccine_asc", {}), ("baccam2006", {"treated_cohort": 1}),
                                           ("kuznetsov1994", {})])
def test_round_trip_dataset_batch_solver(name, options):
    """validate -> SubjectDataset -> Batch -> solve with the true parameters reproduces the trajectories."""
    data = make_virtual_cohort(name, n_subjects=10, n_cohorts=2, seed=5, **options)
    m = ht.models.get(name)
    batch = SubjectDataset(data, model=m, dtype=torch.float64).batch()
    theta = torch.tensor(data.true_parameters.set_index("subject_id").loc[batch.subject_ids, m.parameter_names]
                         .to_numpy(), dtype=torch.float64)
    sol = ht.solve(m.vector_field, m.initial_state(theta), batch.times, theta, schedule=batch.schedule,
                   mask=batch.mask, config=ht.SolverConfig(rtol=1e-9, atol=1e-12))
    outputs = m.observe(sol.ys, theta[:, None, :])
    pred = torch.full(batch.times.shape, float("nan"), dtype=torch.float64)
    for j, o in enumerate(batch.observable_names):
        sel = (batch.observable == j) & batch.mask
        pred[sel] = (outputs[o] if o in outputs else sol.ys[..., m.all_state_names.index(o)])[sel]
    traj = data.trajectories.set_index("subject_id")
    want = np.concatenate([traj.loc[[s], "value"].to_numpy() for s in batch.subject_ids])
    np.testing.assert_allclose(pred[batch.mask].numpy(), want, rtol=1e-5, atol=1e-4)


def test_noise_sd_recovered_and_censoring_exact(vaccine):
    gt = vaccine.meta["ground_truth"]
    obs, traj, noise = vaccine.observations, vaccine.trajectories, gt["observation_noise"]
    assert (obs[["subject_id", "time", "observable"]].equals(traj[["subject_id", "time", "observable"]])
            and obs[["subject_id", "time"]].equals(noise[["subject_id", "time"]]))
    assay = gt["assay"].set_index("cohort")
    scale, offset = obs["cohort"].map(assay["scale"]), obs["cohort"].map(assay["offset"])
    resid = (obs["value"] - offset) / scale - traj["value"]
    ok = ~obs["censored"]
    np.testing.assert_allclose(resid[ok], noise["epsilon"][ok], atol=1e-9)
    sd = gt["noise"]["sd"]["log10_Ab"]
    high = ok & (traj["value"] > (obs["lloq"] - offset) / scale + 4 * sd)  # far above the LLOQ: no truncation
    assert high.sum() > 2000
    assert abs(resid[high].std() - sd) < 0.05 * sd
    # censored exactly where the noisy value is below the LLOQ, and then reported at the LLOQ
    np.testing.assert_array_equal(obs["censored"].to_numpy(), (noise["noisy_value"] < obs["lloq"]).to_numpy())
    assert (obs.loc[obs["censored"], "value"] == obs.loc[obs["censored"], "lloq"]).all()
    assert (obs.loc[ok, "value"] >= obs.loc[ok, "lloq"]).all()
    assert 0 < obs["censored"].mean() < 0.5


def test_output_passes_validate_unchanged(vaccine):
    again = validate(vaccine.observations, vaccine.doses, vaccine.covariates, model="vaccine_asc")
    for name in ("observations", "doses", "covariates"):
        pd.testing.assert_frame_equal(getattr(again, name), getattr(vaccine, name))


@pytest.mark.parametrize("name", ht.models.available())
def test_every_builtin_model_tiny(name):
    data = make_virtual_cohort(name, n_subjects=6, n_cohorts=2, seed=3)
    m = ht.models.get(name)
    assert data.report["n_subjects"] == 6 and len(data.cohorts) == 2
    assert len(data.true_parameters) == 6 and set(data.true_parameters.columns) == {"subject_id", *m.parameter_names}
    assert np.isfinite(data.trajectories["value"]).all() and np.isfinite(data.observations["value"]).all()
    assert set(data.observables) <= set(m.observable_names) | set(m.state_names)
    gt = data.meta["ground_truth"]
    assert gt["n_clipped"] == 0 and not gt["failed_subjects"] and len(gt["effects"]) > 0
    validate(data.observations, data.doses, data.covariates, model=name)


def test_baccam_treated_cohort_and_linear_observables():
    data = make_virtual_cohort("baccam2006", n_subjects=8, n_cohorts=2, seed=0, treated_cohort=1)
    treated = set(data.doses["subject_id"])
    cohort = data.observations.groupby("subject_id")["cohort"].first()
    assert treated == set(cohort[cohort == "cohort_2"].index)
    assert (data.doses["additional"] == 9).all() and (data.doses["target"] == "antiviral").all()
    # a state as a (linear-scale, log-normal noise) observable next to the model's log10 observable
    data = make_virtual_cohort("vaccine_asc", n_subjects=6, n_cohorts=1, seed=0, observables=("log10_Ab", "S"),
                               lloq={"log10_Ab": 1.0, "S": 1e-3}, noise_sd={"log10_Ab": 0.1, "S": 0.0})
    obs, traj = data.observations, data.trajectories
    s = (obs["observable"] == "S") & ~obs["censored"]
    np.testing.assert_allclose(obs.loc[s, "value"], traj.loc[s, "value"], rtol=1e-12)


CHALLENGE = dict(n_subjects=12, n_cohorts=3, seed=2, cohort_names=("A", "B", "C"),
                 cohort_parameters={"V0": (0.75, 0.25, 2.0)}, omega={"beta": 0.3, "p": 0.3, "delta": 0.2})


@pytest.fixture(scope="module")
def challenge():
    """An influenza challenge: the inoculum V0 differs by cohort; c has no omega (and so no effect)."""
    return make_virtual_cohort("baccam2006", **CHALLENGE)


def test_cohort_parameters_reach_true_parameters_and_simulation(challenge):
    m = ht.models.get("baccam2006")
    tp = challenge.true_parameters.set_index("subject_id")
    cohort = challenge.observations.groupby("subject_id")["cohort"].first()
    assert tp["V0"].groupby(cohort).unique().map(list).to_dict() == {"A": [0.75], "B": [0.25], "C": [2.0]}
    # parameters without omega or effect take their typical value (here the model default) exactly
    for name in ("c", "k", "T0"):
        assert (tp[name] == m.parameter_space[name].default).all(), name
    assert all(tp[name].nunique() == 12 for name in ("beta", "p", "delta"))
    gt = challenge.meta["ground_truth"]
    assert gt["cohort_parameters"] == {"V0": {"A": 0.75, "B": 0.25, "C": 2.0}}
    assert gt["omega"] == {"beta": 0.3, "p": 0.3, "delta": 0.2} and set(gt["population"]) == {"beta", "p", "delta"}
    assert gt["config"]["cohort_parameters"] == {"V0": (0.75, 0.25, 2.0)}
    traj = challenge.trajectories
    for sid in ["S0001", "S0006", "S0012"]:  # one subject of each cohort
        rows = traj[traj["subject_id"] == sid]
        direct = ht.simulate("baccam2006", rows["time"].to_numpy().copy(), params=tp.loc[[sid]].reset_index())
        np.testing.assert_allclose(direct["log10_V"].to_numpy(), rows["value"].to_numpy(), rtol=0, atol=1e-5)
        # the cohort's inoculum is the initial viral load
        start = ht.simulate("baccam2006", np.array([0.0]), params=tp.loc[[sid]].reset_index())
        assert start["log10_V"].item() == pytest.approx(np.log10(tp.loc[sid, "V0"]), abs=1e-12)


def test_varied_cohort_parameter_is_the_cohort_typical_value():
    """A parameter with a random effect and covariate effects: log p_i = log(cohort value) + effects + eta."""
    values = (2e-5, 4e-5, 8e-5)
    data = make_virtual_cohort("baccam2006", n_subjects=9, n_cohorts=3, seed=1, cohort_parameters={"beta": values},
                               treated_cohort=2)
    gt = data.meta["ground_truth"]
    assert "beta" not in gt["population"] and gt["omega"]["beta"] == 0.3
    k = np.repeat([0, 1, 2], 3)
    log_typical = np.log(np.asarray(values))[k]
    effects = gt["effects"][gt["effects"]["parameter"] == "beta"]
    assert len(effects) > 0
    x = sum(e["coefficient"] * gt["features"][e["term"]].to_numpy() for _, e in effects.iterrows())
    eta = gt["random_effects"]["beta"].to_numpy()
    assert np.abs(eta).max() > 0
    np.testing.assert_allclose(np.log(data.true_parameters["beta"].to_numpy()), log_typical + x + eta, rtol=0,
                               atol=1e-12)


def test_cohort_parameters_deterministic_and_round_trip_through_files(challenge, tmp_path):
    again = make_virtual_cohort("baccam2006", **CHALLENGE)
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(challenge, name), getattr(again, name))
    write_cohort_tables(challenge, tmp_path, parquet=False)
    gt = read_ground_truth(tmp_path / "ground_truth.json")
    assert gt["cohort_parameters"] == challenge.meta["ground_truth"]["cohort_parameters"]
    pd.testing.assert_frame_equal(gt["effects"], challenge.meta["ground_truth"]["effects"])
    back = pd.read_csv(tmp_path / "true_parameters.csv")
    pd.testing.assert_frame_equal(back, challenge.true_parameters, check_exact=True)
    # the written config regenerates the very same cohort
    cfg = VirtualCohortConfig.from_dict(gt["config"])
    assert cfg == VirtualCohortConfig.default("baccam2006", **CHALLENGE)
    rebuilt = make_virtual_cohort(cfg)
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(rebuilt, name), getattr(challenge, name))


@pytest.mark.slow
def test_missing_covariates_and_options():
    data = make_virtual_cohort("sarscov2_cd8", n_subjects=40, n_cohorts=2, seed=0, missing_covariate_fraction=0.3,
                               nonlinear=False, cohort_fractions=(3, 1), obs_per_subject=((2, 3), (6, 6)))
    assert data.covariates["baseline_marker"].isna().sum() > 0
    assert data.report["subjects_per_cohort"] == {"cohort_1": 30, "cohort_2": 10}
    assert "age_over_60" not in set(data.meta["ground_truth"]["effects"]["term"])
    data = make_virtual_cohort("vaccine_asc", n_subjects=6, effects={"beta_S": {"female": 0.3}}, omega={"beta_S": 0.1})
    assert data.meta["ground_truth"]["effects"].values.tolist() == [["beta_S", "female", 0.3]]
    assert data.meta["ground_truth"]["omega"] == {"beta_S": 0.1}
    cfg = VirtualCohortConfig.default("vaccine_asc", n_subjects=9, n_cohorts=3, seed=2)
    pd.testing.assert_frame_equal(make_virtual_cohort(cfg).observations,
                                  make_virtual_cohort("vaccine_asc", n_subjects=9, n_cohorts=3, seed=2).observations)


@pytest.mark.parametrize("options, message", [
    (dict(bogus=1), "unknown key(s) ['bogus'] in the virtual-cohort options"),
    (dict(n_subjects=2), "smaller than n_cohorts"),
    (dict(n_subjects=0), "n_subjects must be an integer >= 1"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(age_ranges=((18, 40), (40, 60))), "age_ranges has 2 entries but n_cohorts=3"),
    (dict(age_ranges=((60, 40),) * 3), "age_ranges entries must be"),
    (dict(omega={"nope": 0.2}), "unknown parameter(s) ['nope']"),
    (dict(omega={"beta_S": -0.1}), "omega['beta_S'] must be a finite number >= 0"),
    (dict(effects=(("beta_S", "height", 0.1),)), "unknown covariate term 'height'"),
    (dict(effects=(("beta_S", "female", 0.1), ("beta_S", "female", 0.2))), "more than once"),
    (dict(population={"beta_S": 1e9}), "outside the parameter's bounds"),
    (dict(noise_sd={"log10_Ab": float("nan")}), "noise_sd['log10_Ab'] must be a finite number"),
    (dict(lloq={"log10_V": 0.5}), "not among the observables"),
    (dict(observables=("V",)), "unknown or repeated"),
    (dict(treated_cohort=0), "has no default treatment"),
    (dict(obs_per_subject=((3, 2),) * 3), "1 <= min <= max"),
    (dict(assay_scale=(1.0, 0.0, 1.0)), "assay_scale must be a finite number > 0"),
    (dict(horizon=-5.0), "horizon must be a finite number > 0"),
    (dict(regimens=((ht.Dose(0, 1, "drug"),),) * 3), "dose target 'drug' is not known"),
    (dict(missing_covariate_fraction=1.0), "missing_covariate_fraction must be in [0, 1)"),
    (dict(cohort_parameters=[("beta_S", (1, 2, 3))]), "cohort_parameters must be a mapping"),
    (dict(cohort_parameters={"beta_S": (1.0, 2.0)}), "cohort_parameters['beta_S'] has 2 entries but n_cohorts=3"),
    (dict(cohort_parameters={"beta_S": 1.0}), "cohort_parameters['beta_S'] must give one entry per cohort"),
    (dict(cohort_parameters={"nope": (1, 1, 1)}), "unknown parameter(s) ['nope'] in cohort_parameters"),
    (dict(cohort_parameters={"beta_S": (1, 1e9, 1)}),
     "cohort_parameters['beta_S'][1] = 1e+09 (cohort 'cohort_2') lies outside the parameter's bounds"),
    (dict(cohort_parameters={"Ag0": (0, -1, 0)}), "cohort_parameters['Ag0'][1] = -1 (cohort 'cohort_2') lies outside"),
    (dict(cohort_parameters={"beta_S": (1, float("nan"), 1)}), "cohort_parameters['beta_S'][1] must be a finite"),
    (dict(cohort_parameters={"beta_S": (1, 0, 1)}), "cohort_parameters['beta_S'][1] must be a finite number > 0"),
    (dict(cohort_parameters={"beta_S": (1, "x", 1)}), "cohort_parameters['beta_S'][1] must be a finite number"),
    (dict(population={"beta_S": 10.0}, cohort_parameters={"beta_S": (1, 2, 3)}),
     "population and cohort_parameters both give ['beta_S']"),
    (dict(omega={"beta_S": 0.1}, population={"beta_L": 5.0}), "population gives 'beta_L', which has no omega"),
])
def test_bad_options_raise(options, message):
    kwargs = dict(n_subjects=12, n_cohorts=3, seed=0)
    kwargs.update({k: options.pop(k) for k in list(options) if k in kwargs})
    with pytest.raises(ValueError) as err:
        make_virtual_cohort("vaccine_asc", **kwargs, **options)
    assert message in str(err.value)


def test_bad_model_and_config_misuse():
    with pytest.raises(ValueError, match="unknown model"):
        make_virtual_cohort("nope", n_subjects=3)
    with pytest.raises(ValueError, match="needs n_subjects"):
        make_virtual_cohort("vaccine_asc")
    cfg = VirtualCohortConfig.default("vaccine_asc", n_subjects=3)
    with pytest.raises(ValueError, match="takes no other arguments"):
        make_virtual_cohort(cfg, n_subjects=5)
    with pytest.raises(ValueError, match="treated_cohort=4 is out of range"):
        make_virtual_cohort("baccam2006", n_subjects=6, treated_cohort=4)


def test_cli_writes_tables(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert main(["cohort", "baccam2006", "--subjects", "9", "--cohorts", "3", "--seed", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in TABLES:
        assert (out / f"{name}.csv").exists() and str(out / f"{name}.csv") in printed
    assert (out / "ground_truth.json").exists() and "cohort_3" in printed
    data = make_virtual_cohort("baccam2006", n_subjects=9, n_cohorts=3, seed=4)
    back = pd.read_csv(out / "observations.csv")
    pd.testing.assert_frame_equal(back, data.observations, check_dtype=False)
    assert main(["cohort", "baccam2006", "--subjects", "2", "--out", str(out)]) == 2
    assert "smaller than n_cohorts" in capsys.readouterr().err
