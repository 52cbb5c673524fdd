"""Population estimation: SAEM recovers known truth, score-based standard errors match an analytic linear
mixed model, degeneracy and identifiability checks fire when they should, the amortised encoder reproduces
the exact posterior, and the new design features (cohort effects, fixed values, offset-only calibration)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import hybridtwin as ht
from hybridtwin.data import validate
from hybridtwin.estimation import (AmortiseConfig, DegeneracyWarning, SAEMConfig, amortise, correlation_table,
                                   degeneracy_checks, estimate, fit_saem, identifiability, set_uncertainty)
from hybridtwin.estimation.fisher import estimate_vector, population_columns
from hybridtwin.models import log10_observable
from hybridtwin.twin import HybridTwin, TwinConfig

LN10 = math.log(10.0)


def _decay_model(name="test_decay_estimation", rhs=lambda t, s, p: {"V": -p.k * s.V}):
    if name not in ht.models.available():
        ht.models.register(ht.Model(
            name=name, states=["V"],
            parameters=[ht.Parameter("V0", 1e4, 1.0, 1e9), ht.Parameter("k", 0.5, 1e-3, 10.0),
                        ht.Parameter("unused", 1.0, 0.1, 10.0, role="population")],
            initial={"V": "V0"}, rhs=rhs,
            observables={"log10_V": log10_observable("V")}, time_unit="day", default_t_end=4.0))
    return name


def decay_cohort(n=160, seed=0, times=(0.0, 1.0, 2.0, 3.0), omega=(0.5, 0.3), sigma=0.2, age_effect=0.3,
                 n_cohorts=1, v0_by_cohort=(1.0,), offset_by_cohort=(0.0,)):
    """Analytic data: log V0_i = log(1e4 * v0[c]) + omega_V eta; log k_i = log 0.5 + age_effect * age_sd + omega_k eta."""
    rng = np.random.default_rng(seed)
    age = rng.normal(50, 10, n)
    noise = rng.normal(0, 1, n)
    cohort = rng.integers(0, n_cohorts, n)
    logv0 = np.log(1e4 * np.asarray(v0_by_cohort)[cohort]) + omega[0] * rng.normal(size=n)
    logk = np.log(0.5) + age_effect * (age - 50) / 10 + omega[1] * rng.normal(size=n)
    rows = []
    for i in range(n):
        for t in times:
            y = (logv0[i] - np.exp(logk[i]) * t) / LN10 + offset_by_cohort[cohort[i]] + sigma * rng.normal()
            rows.append((f"s{i:03d}", t, "log10_V", y, f"c{cohort[i]}"))
    obs = pd.DataFrame(rows, columns=["subject_id", "time", "observable", "value", "cohort"])
    cov = pd.DataFrame({"subject_id": [f"s{i:03d}" for i in range(n)], "age": age, "noise": noise})
    return validate(obs, None, cov, model=_decay_model()), dict(logv0=logv0, logk=logk)


def decay_twin(data, **config):
    base = dict(model=_decay_model(), covariate_scaling={"age": (50.0, 10.0)}, solver={"rtol": 1e-7, "atol": 1e-9})
    return HybridTwin.from_data(TwinConfig(**{**base, **config}), data)


FAST = dict(n_explore=60, n_smooth=40, n_fisher=30, init_steps=10, progress=False)


@pytest.fixture(scope="module")
def decay_fit():
    data, _ = decay_cohort()
    twin = decay_twin(data, fixed=("unused",))
    fit = fit_saem(twin, data, SAEMConfig(**FAST))
    set_uncertainty(twin, fit)
    return twin, fit, data


def test_saem_recovers_the_truth(decay_fit):
    twin, fit, _ = decay_fit
    est = dict(zip(twin.uncertainty["names"], twin.uncertainty["estimate"]))
    se = dict(zip(twin.uncertainty["names"], np.sqrt(np.diag(np.asarray(twin.uncertainty["cov"])))))
    assert abs(math.exp(est["log_sigma_add[log10_V]"]) / 0.2 - 1) < 0.15
    assert abs(math.exp(est["log_omega[V0]"]) / 0.5 - 1) < 0.25
    assert abs(math.exp(est["log_omega[k]"]) / 0.3 - 1) < 0.3  # 160 patients: its SE is ~0.1 on the log scale
    assert abs(est["beta[k, age]"] - 0.3) < 0.1 and abs(est["beta[k, noise]"]) < 0.1
    for name, truth in (("mu[V0]", math.log(1e4)), ("mu[k]", math.log(0.5)), ("log_omega[k]", math.log(0.3)),
                        ("log_omega[V0]", math.log(0.5)), ("beta[k, age]", 0.3), ("beta[k, noise]", 0.0)):
        assert abs(est[name] - truth) < 3.5 * se[name], (name, est[name], truth, se[name])
    assert all(np.isfinite(list(se.values())))
    assert fit.failed == [] and len(fit.history) == FAST["n_explore"] + FAST["n_smooth"]


def test_conditional_means_track_the_true_individual_parameters(decay_fit):
    twin, fit, data = decay_fit
    _, truth = decay_cohort()
    order = [int(s[1:]) for s in fit.subject_ids]
    for j, key in enumerate(("logv0", "logk")):
        true = truth[key][order]
        r2 = np.corrcoef(fit.posterior_mean[:, j].numpy(), true)[0, 1] ** 2
        # calibrated conditional distributions: E[corr(E[z|y], z)^2] = 1 - E[Var(z|y)] / Var(z); the conditional SDs
        # come from the fitted omegas (omega of k has an SE of ~0.1 on the log scale with 160 patients), hence 0.12
        expected = 1 - float((fit.posterior_sd[:, j] ** 2).mean()) / float(np.var(true))
        assert r2 > 0.5 and abs(r2 - expected) < 0.12, (key, r2, expected)


def test_standard_errors_match_an_analytic_linear_mixed_model():
    """k fixed: y_ij = (z_i - k t_j)/ln10 + eps is a linear mixed model; Var(mu_hat) = (omega^2 + ln10^2 sigma^2 / n) / N."""
    n, times, omega, sigma = 300, (0.0, 1.0), 0.5, 0.3
    data, _ = decay_cohort(n=n, seed=3, times=times, omega=(omega, 0.0), sigma=sigma, age_effect=0.0)
    twin = decay_twin(data, fixed=("k", "unused"), covariate_effects=False)
    fit = fit_saem(twin, data, SAEMConfig(**{**FAST, "n_fisher": 60}))
    set_uncertainty(twin, fit)
    se = dict(zip(twin.uncertainty["names"], np.sqrt(np.diag(np.asarray(twin.uncertainty["cov"])))))
    om = math.exp(dict(zip(twin.uncertainty["names"], twin.uncertainty["estimate"]))["log_omega[V0]"])
    sig = float(twin.observation.log_sigma_add[0].detach().exp())
    analytic = math.sqrt((om**2 + LN10**2 * sig**2 / len(times)) / n)
    assert abs(se["mu[V0]"] / analytic - 1) < 0.2, (se["mu[V0]"], analytic)


def test_population_table_reports_se_ci_within_bounds_and_round_trips(decay_fit, tmp_path):
    twin, _, _ = decay_fit
    table = twin.population_table()
    est = table[table.kind.isin(["typical", "omega", "effect", "noise"])]
    assert est["se"].notna().all() and (est["lower"] < est["estimate"]).all() and (est["estimate"] < est["upper"]).all()
    typ = table[table.kind == "typical"].set_index("parameter")
    assert typ.loc["k", "lower"] >= 1e-3 and typ.loc["k", "upper"] <= 10.0
    eff = table[(table.kind == "effect") & (table.covariate == "age")].iloc[0]
    assert "10" in eff["unit"]  # a stated unit: per 10 years
    wider = twin.population_table(level=0.99)
    assert (wider.loc[est.index, "upper"] - wider.loc[est.index, "lower"] > est["upper"] - est["lower"]).all()
    from hybridtwin.checkpoint import save

    again = ht.load(save(twin, tmp_path / "fit"))
    pd.testing.assert_frame_equal(again.population_table(), table)


@pytest.mark.slow  # ~12 s: gradients through the solver every iteration
def test_cohort_effects_and_fixed_values_are_estimated():
    data, _ = decay_cohort(n=90, seed=5, n_cohorts=3, v0_by_cohort=(1.0, 0.2, 3.0), offset_by_cohort=(0.0, 0.0, 0.0),
                           age_effect=0.0, omega=(0.0, 0.3))  # V0: one value per cohort, no between-patient spread
    twin = decay_twin(data, fixed_values={"unused": 2.5}, population=("V0",), cohort_effects=("V0",),
                      covariate_effects=False)
    assert float(twin.theta(twin.mu[None])[0, twin.model.parameter_names.index("unused")]) == pytest.approx(2.5)
    fit = fit_saem(twin, data, SAEMConfig(**{**FAST, "n_explore": 40, "n_smooth": 30, "n_fisher": 20}))
    set_uncertainty(twin, fit)
    est = dict(zip(twin.uncertainty["names"], twin.uncertainty["estimate"]))
    se = dict(zip(twin.uncertainty["names"], np.sqrt(np.diag(np.asarray(twin.uncertainty["cov"])))))
    for name, truth in (("mu_population[V0]", math.log(1e4)), ("cohort_shift[V0, c1]", math.log(0.2)),
                        ("cohort_shift[V0, c2]", math.log(3.0))):
        assert se[name] < 0.3 and abs(est[name] - truth) < 3 * se[name], (name, est[name], truth, se[name])
    table = twin.population_table()
    v0 = table[(table.kind == "cohort")].set_index("cohort")
    assert v0.loc["c2", "estimate"] / v0.loc["c1", "estimate"] == pytest.approx(15.0, rel=0.4)
    assert (v0["lower"] < v0["estimate"]).all() and (v0["estimate"] < v0["upper"]).all()
    assert table.set_index("quantity").loc["unused", "estimate"] == pytest.approx(2.5)


@pytest.mark.slow  # ~18 s: two fits
def test_offset_calibration_is_estimated_and_confounding_is_reported():
    data, _ = decay_cohort(n=100, seed=6, n_cohorts=2, v0_by_cohort=(1.0, 1.0), offset_by_cohort=(0.0, 0.5),
                           age_effect=0.0)
    twin = decay_twin(data, cohort_calibration=("log10_V",), calibration="offset", covariate_effects=False,
                      fixed=("unused",))
    assert not twin.observation.log_scale.requires_grad and twin.observation.offset.requires_grad
    fit = fit_saem(twin, data, SAEMConfig(**FAST))
    set_uncertainty(twin, fit)
    est = dict(zip(twin.uncertainty["names"], twin.uncertainty["estimate"]))
    assert abs(est["offset[log10_V, c1]"] - 0.5) < 0.1
    # a per-cohort V0 as well: in this model a V0 shift and an additive log10 offset are the same thing
    both = decay_twin(data, cohort_calibration=("log10_V",), calibration="offset", covariate_effects=False,
                      fixed=("unused",), population=("V0",), cohort_effects=("V0",))
    fit = fit_saem(both, data, SAEMConfig(**{**FAST, "n_explore": 10, "n_smooth": 6, "n_fisher": 10}))
    set_uncertainty(both, fit)
    pairs = correlation_table(both, threshold=0.95)
    confounded = {tuple(sorted(p)) for p in zip(pairs["first"], pairs["second"])}
    se = dict(zip(both.uncertainty["names"], np.sqrt(np.diag(np.asarray(both.uncertainty["cov"])))))
    assert ("cohort_shift[V0, c1]", "offset[log10_V, c1]") in confounded or not np.isfinite(se["offset[log10_V, c1]"]) \
        or se["offset[log10_V, c1]"] > 1.0
    for _, row in pairs.iterrows():  # the informed combination: far better determined than either alone
        assert row["se"] < 0.5 * min(row["se_first"], row["se_second"]) and row["lower"] < row["estimate"] < row["upper"]
    if ("cohort_shift[V0, c1]", "offset[log10_V, c1]") in confounded:
        # the data see log10 of the shifted V0 plus the offset (= 0.5 here, the true log10 offset of cohort c1)
        row = pairs[pairs["combination"].str.contains("V0") & pairs["combination"].str.contains("offset")].iloc[0]
        named = dict(zip(both.uncertainty["names"], both.uncertainty["estimate"]))
        shift, offset = named["cohort_shift[V0, c1]"], named["offset[log10_V, c1]"]
        seen = shift / math.log(10) + offset if row["first"].startswith("cohort_shift") else offset + shift / math.log(10)
        assert abs(seen - 0.5) < 0.1


def test_correlation_table_reports_the_informed_combination():
    """Known covariance: the combination a + w b with w = -cov/var(b) has SE se(a) sqrt(1 - rho^2); an
    independent pair is not listed; the interval has the asked level."""
    import types

    cov = np.array([[0.04, -0.036, 0.0], [-0.036, 0.0625, 0.0], [0.0, 0.0, 1.0]])  # rho = -0.72
    twin = types.SimpleNamespace(uncertainty={"names": ["a", "b", "c"], "estimate": [0.3, -0.1, 2.0], "cov": cov.tolist()})
    assert correlation_table(twin, threshold=0.8).empty
    row = correlation_table(twin, threshold=0.7, level=0.95).iloc[0]
    w = 0.036 / 0.0625
    assert row["combination"] == "a + 0.58 * b" and math.isclose(row["weight"], w)
    assert math.isclose(row["estimate"], 0.3 - 0.1 * w)
    direct = math.sqrt(0.04 + w**2 * 0.0625 - 2 * w * 0.036)  # var(a + w b) written out
    assert math.isclose(row["se"], direct, rel_tol=1e-9) and direct < 0.7 * 0.2
    assert math.isclose(row["upper"] - row["estimate"], 1.959964 * direct, rel_tol=1e-5)
    with pytest.raises(ValueError, match="level"):
        correlation_table(twin, level=1.5)


def test_theta_applies_cohort_shifts_only_where_declared():
    data, _ = decay_cohort(n=12, n_cohorts=2, v0_by_cohort=(1.0, 2.0), offset_by_cohort=(0.0, 0.0))
    twin = decay_twin(data, cohort_effects=("V0",))
    with torch.no_grad():
        twin.cohort_shift[1] = 0.7  # every column; only V0's is declared
        twin.cohort_shift[0] = 0.3  # the reference cohort never shifts
    z = twin.mu.detach()[None].expand(2, -1)
    th = twin.theta(z, torch.tensor([0, 1]))
    names = twin.model.parameter_names
    assert float(th[1, names.index("V0")] / th[0, names.index("V0")]) == pytest.approx(math.exp(0.7))
    assert float(th[1, names.index("k")]) == pytest.approx(float(th[0, names.index("k")]))
    assert torch.equal(twin.theta(z), twin.theta(z, torch.tensor([0, 0])))


@pytest.mark.parametrize("config, message", [
    (dict(fixed_values={"k": 50.0}), "within"),
    (dict(fixed_values={"nope": 1.0}), "unknown parameter"),
    (dict(cohort_effects=("nope",)), "unknown parameter"),
    (dict(cohort_effects=("k",), fixed=("k",)), "fixed"),
    (dict(noise_sd_init={"log10_V": -1.0}), "positive"),
    (dict(calibration="both"), "calibration"),
])
def test_bad_design_settings_raise(config, message):
    data, _ = decay_cohort(n=6)
    with pytest.raises(ValueError, match=message):
        decay_twin(data, **config)


@pytest.mark.parametrize("settings, message", [
    (dict(n_explore=-1), "n_explore"), (dict(kernels=(0, 0, 0)), "kernels"), (dict(anneal=0.0), "anneal"),
    (dict(lr=0.0), "lr"), (dict(n_explore=0, n_smooth=0), "at least one"),
])
def test_bad_saem_settings_raise(settings, message):
    with pytest.raises(ValueError, match=message):
        SAEMConfig(**settings)


def test_degeneracy_checks_fire_with_numbers(decay_fit):
    twin, fit, data = decay_fit
    assert degeneracy_checks(twin, data, fit, emit=False) == []  # a good fit raises nothing
    def copy():
        bad = HybridTwin.from_card(twin.card())
        bad.load_state_dict(twin.state_dict())
        return bad

    k = twin.patient_names.index("k")
    noisy = copy()
    with torch.no_grad():
        noisy.observation.log_sigma_add.fill_(math.log(3.0))  # noise larger than the data's spread
        noisy.log_omega[k] = math.log(1e-4)  # collapsed random effect
    with pytest.warns(DegeneracyWarning):
        found = degeneracy_checks(noisy, data)
    assert {f["check"] for f in found} == {"noise_vs_spread", "omega_collapsed"}
    noise = next(f for f in found if f["check"] == "noise_vs_spread")
    assert noise["noise_sd"] == pytest.approx(3.0) and "3" in noise["message"]
    flat = copy()
    with torch.no_grad():
        flat.mu[k] = math.log(1e-3)  # k at its lower bound: a flat curve where the data decay
    found = degeneracy_checks(flat, data, emit=False)
    assert {"at_bound", "flat_population_curve"} <= {f["check"] for f in found}


def test_identifiability_lists_what_the_design_cannot_inform(decay_fit):
    twin, _, data = decay_fit
    table = identifiability(twin, data).set_index("parameter")
    assert table.loc["k", "informed"] and table.loc["V0", "informed"]
    assert not table.loc["unused", "informed"] and math.isinf(table.loc["unused", "se_log"])
    # with a single sampling time, k and V0 cannot be told apart
    one, _ = decay_cohort(n=20, times=(1.0,))
    t1 = identifiability(decay_twin(one, fixed=("unused",)), one).set_index("parameter")
    assert not (t1.loc["k", "informed"] and t1.loc["V0", "informed"])


@pytest.mark.slow
def test_amortised_encoder_matches_the_exact_posterior():
    """k fixed, one parameter z = log V0 observed linearly: the exact posterior is Gaussian and known."""
    times, omega, sigma = (0.0, 1.0, 2.0), 0.6, 0.3
    data, _ = decay_cohort(n=200, seed=11, times=times, omega=(omega, 0.0), sigma=sigma, age_effect=0.0)
    twin = decay_twin(data, fixed=("k", "unused"), covariate_effects=False, encoder={"hidden": 32, "set_dim": 16})
    with torch.no_grad():
        twin.observation.log_sigma_add.fill_(math.log(sigma))
        twin.log_omega.fill_(math.log(omega))
        twin.mu.fill_(math.log(1e4))
    hist = amortise(twin, data, AmortiseConfig(n_simulations=6000, epochs=25, batch_size=128, full_context=1.0,
                                               progress=False))
    assert hist["val_nll"].iloc[-1] < hist["val_nll"].iloc[0]
    batch = twin.dataset(data).batch()
    with torch.no_grad():
        mean, sd = twin.posterior(batch)
    # exact: z | y ~ N with precision 1/omega^2 + n/(ln10 sigma)^2, mean from y_j ln10 + k t_j
    n = len(times)
    prec = 1 / omega**2 + n / (LN10 * sigma) ** 2
    y = batch.values.double() * LN10 + 0.5 * batch.times.double()
    exact_mean = (math.log(1e4) / omega**2 + y.sum(1) / (LN10 * sigma) ** 2) / prec
    assert float((mean[:, 0] - exact_mean).abs().mean()) < 0.05
    assert float(sd[:, 0].mean()) == pytest.approx(prec**-0.5, rel=0.15)


def test_estimate_runs_everything_and_stores_it(tmp_path):
    # plumbing only (what `estimate` stores), so a small cohort and few iterations
    data, _ = decay_cohort(n=24, seed=2)
    twin = decay_twin(data, fixed=("unused",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegeneracyWarning)
        fit = estimate(twin, data, SAEMConfig(**{**FAST, "n_explore": 6, "n_smooth": 4, "n_fisher": 10, "init_steps": 2}),
                       AmortiseConfig(n_simulations=96, epochs=2, batch_size=32, progress=False))
    assert twin.uncertainty is not None and fit.amortisation is not None and isinstance(twin.diagnostics, list)
    assert [c["name"] for c in population_columns(twin)] == twin.uncertainty["names"]
    assert torch.allclose(estimate_vector(twin), torch.tensor(twin.uncertainty["estimate"], dtype=torch.float64))


@pytest.mark.slow  # several seconds of Lightning/solver work: `make test-all` (default suite time)
def test_training_by_saem_writes_a_checked_checkpoint(tmp_path):
    from training.config import RunConfig
    from training.train import train

    cfg = RunConfig.from_dict({
        "name": "saem", "out": str(tmp_path),
        "data": {"model": "vaccine_asc", "n_subjects": 24, "n_cohorts": 2, "fractions": [0.75, 0.25]},
        "twin": {"model": "vaccine_asc", "fixed": ["delta_Ag", "K_Ag", "rho_M", "M_max", "alpha_S", "alpha_L", "delta_L"],
                 "covariate_effects": False},
        "trainer": {"progress_bar": False, "batch_size": 8},
        "estimation": {"saem": {"n_explore": 4, "n_smooth": 3, "n_fisher": 4, "init_steps": 2},
                       "amortise": {"n_simulations": 64, "epochs": 2, "batch_size": 16}}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegeneracyWarning)
        twin, run_dir = train(cfg)
    assert (run_dir / "saem_history.csv").is_file() and (run_dir / "amortisation.csv").is_file()
    again = ht.load(run_dir)
    assert again.uncertainty["names"] == twin.uncertainty["names"]
    import json

    card = json.loads((run_dir / "card.json").read_text())
    assert card["metrics"]["method"] == "saem" and card["metrics"]["saem_iterations"] == 7
    assert any(r["kind"] == "omega" and r["se"] is not None for r in card["population"])
    with pytest.raises(ValueError, match="cannot be resumed"):
        train(cfg, resume=True)


@pytest.mark.parametrize("estimation, message", [
    ({"method": "em"}, "estimation.method"), ({"saem": {"n_iter": 3}}, "unknown key"),
    ({"saem": {"n_explore": -2}}, "n_explore"), ({"amortise": "yes"}, "estimation.amortise"),
])
def test_estimation_settings_are_validated(estimation, message):
    from training.config import RunConfig

    with pytest.raises(ValueError, match=message):
        RunConfig.from_dict({"name": "x", "data": {"model": "vaccine_asc"}, "twin": {"model": "vaccine_asc"},
                             "estimation": estimation})


def test_marginal_loglik_matches_the_exact_gaussian_marginal():
    from scipy.stats import multivariate_normal

    from hybridtwin.estimation.marginal import marginal_loglik

    times, omega, sigma = (0.0, 1.0, 2.0), 0.6, 0.3
    data, _ = decay_cohort(n=40, seed=12, times=times, omega=(omega, 0.0), sigma=sigma, age_effect=0.0)
    twin = decay_twin(data, fixed=("k", "unused"), covariate_effects=False)
    with torch.no_grad():
        twin.observation.log_sigma_add.fill_(math.log(sigma))
        twin.log_omega.fill_(math.log(omega))
        twin.mu.fill_(math.log(1e4))
    out = marginal_loglik(twin, data, n_draws=300, n_mcmc=20)
    t = np.asarray(times)
    cov = (omega / LN10) ** 2 * np.ones((3, 3)) + sigma**2 * np.eye(3)
    mean = (math.log(1e4) - 0.5 * t) / LN10
    obs = data.observations.sort_values(["subject_id", "time"])
    exact = sum(multivariate_normal(mean, cov).logpdf(g["value"].to_numpy()) for _, g in obs.groupby("subject_id"))
    assert abs(out["loglik"] - exact) < 0.2 + 3 * out["se"], (out["loglik"], exact, out["se"])
    assert out["aic"] == pytest.approx(-2 * out["loglik"] + 2 * len(population_columns(twin)))


def test_shipped_saem_config_parses_and_builds_its_twin():
    from pathlib import Path

    from training.config import RunConfig
    from training.train import load_data

    cfg = RunConfig.from_yaml(Path(__file__).resolve().parents[1] / "training" / "configs" / "baccam_challenge.yaml")
    assert cfg.estimation.method == "saem" and cfg.twin.cohort_effects == ("V0",)
    spec = cfg.data.__class__(**{**cfg.data.__dict__, "n_subjects": 9})
    data = load_data(spec, cfg.twin.model)
    gt = data.meta["ground_truth"]
    assert gt["cohort_parameters"]["V0"] == {"cohort_1": 0.75, "cohort_2": 0.25, "cohort_3": 2.0}
    twin = HybridTwin.from_data(cfg.twin, data)
    assert "sex[F vs M]" in twin.covariate_names and twin.population_names == ["V0"]


def test_information_removes_monte_carlo_noise_along_a_weak_direction():
    """Per-subject scores are Monte Carlo means: their noise inflates the information most where the data are
    weak (a ridge). With the noise known by construction, the batch-mean correction must bring the standard
    error along the weak direction back to the truth, where the raw matrix understates it by a factor ~3."""
    from hybridtwin.estimation.fisher import information

    gen = torch.Generator().manual_seed(0)
    B, nb = 4000, 4
    true_cov = torch.tensor([[1.0, 0.0], [0.0, 0.01]], dtype=torch.float64)  # second direction: 100x weaker
    s_true = torch.randn(B, 2, generator=gen, dtype=torch.float64) @ torch.sqrt(true_cov)
    noise_sd = 0.3  # per batch mean and coordinate
    batches = [s_true + noise_sd * torch.randn(B, 2, generator=gen, dtype=torch.float64) for _ in range(nb)]
    scores = sum(batches) / nb
    raw, raw_flag = information(scores)
    corrected, flag = information(scores, tuple(batches))
    assert flag and not raw_flag
    truth_se = 1.0 / math.sqrt(B * 0.01)
    se = lambda m: float(torch.sqrt(torch.linalg.inv(m)[1, 1]))  # noqa: E731
    assert se(raw) < 0.6 * truth_se  # what the uncorrected matrix reports
    assert abs(se(corrected) / truth_se - 1) < 0.15, (se(corrected), truth_se)
    assert abs(float(torch.linalg.inv(corrected)[0, 0]) * B - 1) < 0.15  # the strong direction is left alone
    # the correction never removes more than 1 - keep of the information along any direction
    floor, _ = information(scores, tuple(s_true * 0 + 100 * torch.randn(B, 2, generator=gen, dtype=torch.float64)
                                         for _ in range(nb)), keep=0.1)
    assert bool(torch.linalg.eigvalsh(floor).min() > 0)


@pytest.mark.parametrize("cohort_terms", [False, True])
def test_pooled_start_leaves_cohort_terms_neutral_unless_asked(cohort_terms):
    """The pooled start has no covariate effects: by default it must not let per-cohort offsets and shifts
    absorb differences between cohorts (they stay at 0 while the typical values move); on request it fits them."""
    from hybridtwin.estimation.saem import _pooled_start

    data, _ = decay_cohort(n=40, seed=7, n_cohorts=2, v0_by_cohort=(1.0, 1.0), offset_by_cohort=(0.0, 0.8),
                           age_effect=0.0)
    twin = decay_twin(data, cohort_calibration=("log10_V",), calibration="offset", covariate_effects=False,
                      fixed=("unused",), population=("V0",), cohort_effects=("V0",))
    mu0 = twin.mu.detach().clone()
    _pooled_start(twin, twin.dataset(data).batch(), steps=15, progress=False, cohort_terms=cohort_terms)
    moved = float(twin.observation.offset.detach().abs().max()) + float(twin.cohort_shift.detach().abs().max())
    assert not torch.equal(twin.mu.detach(), mu0)
    if cohort_terms:
        assert moved > 0.1
    else:
        assert moved == 0.0
    with pytest.raises(ValueError, match="init_cohort_terms"):
        SAEMConfig(init_cohort_terms="yes")


def _nan_above_5_model():
    """The decay model, except that the vector field is NaN for k > 5 (a subject there fails its solve, and the
    derivatives through it are NaN)."""
    return _decay_model("test_decay_nan_above_5", lambda t, s, p: {"V": -p.k * s.V * (5 - p.k).sqrt() / (5 - p.k).sqrt()})


def test_a_failed_solve_gives_zero_scores_not_nan():
    """One subject whose solve fails (NaN derivatives inside) must not make any score NaN: its own scores are 0
    and the others' are what they are without it. (NaN * 0 = NaN: a multiplied mask let one failure turn the
    Fisher step NaN and every later solve into a failure.)"""
    from hybridtwin.estimation.fisher import ScoreAccumulator
    from hybridtwin.estimation.likelihood import design_matrix, solve_observables

    data, _ = decay_cohort(n=6)
    twin = HybridTwin.from_data(TwinConfig(model=_nan_above_5_model(), fixed=("unused",), population=("V0",),
                                           covariate_scaling={"age": (50.0, 10.0)}), data)
    batch = twin.dataset(data).batch()
    acc = ScoreAccumulator(twin, batch, design_matrix(batch).to(twin.dtype))
    z = twin.prior(batch.covariates)[0].detach().clone()
    good, _, _ = acc.scores(z, *solve_observables(twin, z, batch))
    z[0, twin.patient_names.index("k")] = 2.0  # k = e^2 > 5
    g, ok = solve_observables(twin, z, batch)
    assert ok.tolist() == [False] + [True] * 5
    s, _, ok2 = acc.scores(z, g, ok)
    assert torch.isfinite(s).all() and (s[0] == 0).all() and not ok2[0]
    assert torch.equal(s[1:], good[1:]) and (good[1:, [c["kind"] == "population" for c in acc.cols]] != 0).all()


def test_saem_skips_a_closure_step_whose_gradient_is_not_finite(monkeypatch):
    """A non-finite gradient for the closure networks is not applied (Adam would make every weight NaN and every
    later solve fail): the weights stay finite and the skipped steps are counted in the history."""
    import hybridtwin.estimation.saem as saem

    data, _ = decay_cohort(n=8)
    twin = decay_twin(data, fixed=("unused",), covariate_effects=False,
                      closures=[{"target": "k", "mode": "replace", "inputs": ["t"], "hidden": [4]}])
    real = saem.solve_observables

    def poisoned(twin_, z, batch, grad=False):
        g, ok = real(twin_, z, batch, grad=grad)
        return (g * torch.nan if grad else g), ok  # the networks' gradient pass only

    monkeypatch.setattr(saem, "solve_observables", poisoned)
    fit = fit_saem(twin, data, SAEMConfig(n_explore=3, n_smooth=2, n_fisher=0, init_steps=0, progress=False))
    weights = [p for _, p in twin.dynamics.named_parameters()]
    assert weights and all(torch.isfinite(p).all() for p in weights)
    assert fit.history["closure_steps_skipped"].tolist() == [1, 2, 3, 4, 5]


def test_saem_history_records_the_solver_effort_and_a_stiffening_fit_is_flagged():
    """Every SAEM iteration records the ODE solver's steps per subject solve and its wall time; a closure that
    multiplies the decay rate by e^8 makes the same solves take more steps (the tally measures stiffness, not
    a constant); a history whose steps grow 6-fold to hundreds raises ``solver_effort_grew``, a flat one or one
    that stays small does not."""
    from hybridtwin.estimation.checks import EFFORT_FLOOR, _solver_effort
    from hybridtwin.estimation.likelihood import solve_observables

    data, _ = decay_cohort(n=8, times=(0.0, 1.0, 2.0, 3.0, 6.0))
    twin = decay_twin(data, fixed=("unused",), covariate_effects=False, solver={"rtol": 1e-5, "atol": 1e-6},
                      closures=[{"target": "k", "mode": "replace", "inputs": ["t"], "hidden": [4]}])
    fit = fit_saem(twin, data, SAEMConfig(n_explore=2, n_smooth=1, n_fisher=0, init_steps=0, progress=False))
    h = fit.history
    assert (h["solver_steps_per_solve"] > 0).all() and (h["solver_steps_max"] >= h["solver_steps_per_solve"]).all()
    assert (h["seconds"] > 0).all()
    batch = twin.dataset(data).batch()
    z = twin.prior(batch.covariates)[0].detach()
    counts = []
    with torch.no_grad(), twin.count_solver_steps() as outer:
        for bias in (0.0, 8.0):
            twin.dynamics.closures[0].net.net[-1].bias.fill_(bias)
            with twin.count_solver_steps() as inner:
                solve_observables(twin, z, batch)
            counts.append(inner)
    assert counts[0]["solves"] == len(batch) and counts[1]["steps"] > 2 * counts[0]["steps"]
    assert outer["steps"] == counts[0]["steps"] + counts[1]["steps"] and outer["solves"] == 2 * len(batch)
    grow = pd.DataFrame({"solver_steps_per_solve": [100.0, 110, 105, 300, 500, 600, 640, 620],
                         "seconds": [8.0, 8, 9, 15, 20, 24, 26, 25]})
    found = _solver_effort(grow)
    assert found["check"] == "solver_effort_grew" and found["steps_first"] == 105 and found["steps_last"] == 620
    assert "5.9x" in found["message"] and "closure" not in found["message"]  # no closure, no closure advice
    from hybridtwin.config import ClosureConfig

    signed = ClosureConfig(target="k", inputs=("t",), mode="replace")
    bounded = ClosureConfig(target="k", inputs=("t",), mode="replace", constraint="bounded", bounds=(-2.0, 2.0))
    assert "constraint='bounded'" in _solver_effort(grow, closures=(signed,))["message"]
    assert "bounded already" in _solver_effort(grow, closures=(bounded,))["message"]
    assert _solver_effort(grow.assign(solver_steps_per_solve=[100.0, 110, 105, 120, 130, 150, 140, 150])) is None
    small = [5.0, 5, 5, 30, 30, 40, 40, 40]  # 8x, but a few dozen steps is no stiffness
    assert max(small) < EFFORT_FLOOR and _solver_effort(grow.assign(solver_steps_per_solve=small)) is None


def test_map_patients_are_not_stopped_short_by_another_at_a_wall():
    """A patient whose data want k > 5, where the NaN-branch model's solves fail, sits at that wall. The joint
    L-BFGS line search then moved everyone by tiny steps and left the ordinary patient far from their mode (k 4.0
    instead of 1.9). Each such patient is now refitted alone: the ordinary one's MAP equals the
    plain decay model's (the two models agree below k = 5), and the one at the wall is named in a warning."""
    from hybridtwin.personalise import fit_map

    rng = np.random.default_rng(0)
    ks = [0.5, 8.0]
    rows = [(f"s{i}", t, "log10_V", (np.log(1e4) - k * t) / LN10 + 0.05 * rng.normal(), "c")
            for i, k in enumerate(ks) for t in (0.0, 0.5, 1.0, 2.0)]
    obs = pd.DataFrame(rows, columns=["subject_id", "time", "observable", "value", "cohort"])
    cov = pd.DataFrame({"subject_id": ["s0", "s1"], "age": 50.0, "noise": 0.0})
    fits = {}
    for model in (_nan_above_5_model(), _decay_model()):
        data = validate(obs, None, cov, model=model)
        twin = HybridTwin.from_data(TwinConfig(model=model, fixed=("unused",), covariate_scaling={"age": (50.0, 10.0)}),
                                    data)
        with torch.no_grad():
            twin.mu[twin.patient_names.index("k")] = math.log(4.5)  # the prior's typical k near the wall
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fits[model] = fit_map(twin, twin.dataset(data).batch(), max_iter=30)
        if model == _nan_above_5_model():
            assert any("s1" in str(w.message) for w in caught)
    walled, plain = fits[_nan_above_5_model()], fits[_decay_model()]
    assert torch.allclose(walled.mean[:1], plain.mean[:1], atol=1e-4)
    assert torch.allclose(walled.sd[:1], plain.sd[:1], rtol=1e-3)
    assert walled.mean[1, 1] <= math.log(5.0) + 1e-6  # k stays at the wall, not beyond
