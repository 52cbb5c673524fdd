"""A per-patient time offset (infection -> data day 0): data on any day axis, negative days included."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

import hybridtwin as ht
from hybridtwin.data import validate
from hybridtwin.models.time_offset import TIME_OFFSET, with_time_offset
from hybridtwin.twin import HybridTwin, TwinConfig


def _onset_data(offsets=(4.0, 6.5), times=(-2.0, 0.0, 3.0, 8.0)):
    """Viral loads on a 'days from symptom onset' axis (negative days before onset)."""
    rows = [(f"p{i}", t, "log10_V", 5.0, "study_a") for i in range(len(offsets)) for t in times]
    obs = pd.DataFrame(rows, columns=["subject_id", "time", "observable", "value", "cohort"])
    cov = pd.DataFrame({"subject_id": [f"p{i}" for i in range(len(offsets))], "age": [40.0, 60.0]})
    return validate(obs, None, cov)


def test_twin_reads_each_patient_at_its_own_shifted_time():
    data = _onset_data()
    cfg = TwinConfig(model="sarscov2_cd8", time_offset={}, covariate_effects=False,
                     solver={"rtol": 1e-10, "atol": 1e-12})
    twin = HybridTwin.from_data(cfg, data)
    assert TIME_OFFSET in twin.patient_names and twin.min_data_time == -30.0
    omega = dict(zip(twin.patient_names, twin.log_omega.detach().exp().tolist()))
    assert omega[TIME_OFFSET] == pytest.approx(0.418)  # the incubation-period SD starts the estimation
    batch = twin.dataset(data).batch()
    names = twin.model.parameter_names
    with torch.no_grad():
        z = twin.prior(batch.covariates)[0].clone()
    z[:, twin.patient_names.index(TIME_OFFSET)] = torch.log(torch.tensor([4.0, 6.5], dtype=z.dtype))
    with torch.no_grad():
        theta = twin.theta(z, batch.cohort)
        g, status = twin.observables_at(theta, batch)
    assert (status == 0).all()
    base = ht.models.get("sarscov2_cd8")
    for b, off in enumerate((4.0, 6.5)):
        params = {n: float(theta[b, names.index(n)]) for n in base.parameter_names}
        times = np.array([-2.0, 0.0, 3.0, 8.0]) + off
        ref = ht.simulate("sarscov2_cd8", times, params=params, rtol=1e-10)["log10_V"].to_numpy()
        np.testing.assert_allclose(g[b].numpy(), ref, rtol=1e-6, atol=1e-6)


def test_negative_days_need_a_time_offset_and_bounds_are_checked():
    data = _onset_data()
    plain = HybridTwin.from_data(TwinConfig(model="sarscov2_cd8", covariate_effects=False), data)
    with pytest.raises(ValueError, match=r"negative|before|>= 0"):
        plain.dataset(data)
    with pytest.raises(ValueError, match="time_offset needs 0 < lower < typical < upper"):
        TwinConfig(model="sarscov2_cd8", time_offset={"typical": 40.0})
    with pytest.raises(ValueError, match=r"did you mean 'typical'"):
        TwinConfig(model="sarscov2_cd8", time_offset={"typicl": 4.0})
    cfg = TwinConfig(model="sarscov2_cd8", time_offset={"upper": 20.0}, cohort_effects=[TIME_OFFSET])
    assert TwinConfig.from_dict(cfg.to_dict()) == cfg and cfg.resolved_model().name == "sarscov2_cd8+t_offset"
    twin = HybridTwin.from_data(cfg, data)
    assert twin.min_data_time == -20.0
    early = _onset_data(times=(-25.0, 1.0))
    with pytest.raises(ValueError, match="-20"):
        twin.dataset(early)


def test_a_dose_on_the_data_clock_enters_at_offset_plus_its_day():
    base = with_time_offset("baccam2006")
    assert base.parameter_names[-1] == TIME_OFFSET and "antiviral" in base.interventions
    obs = pd.DataFrame({"subject_id": "p0", "time": [-1.0, 1.0, 2.0, 4.0], "observable": "log10_V", "value": 3.0})
    doses = pd.DataFrame({"subject_id": ["p0"], "time": [0.5], "amount": [1.0], "target": ["antiviral"]})
    data = validate(obs, doses, pd.DataFrame({"subject_id": ["p0"]}))
    twin = HybridTwin.from_data(TwinConfig(model="baccam2006", time_offset={"typical": 2.0, "upper": 10.0},
                                           covariate_effects=False, solver={"rtol": 1e-10, "atol": 1e-12}), data)
    batch = twin.dataset(data).batch()
    with torch.no_grad():
        theta = twin.theta(twin.prior(batch.covariates)[0], batch.cohort)
        g, status = twin.observables_at(theta, batch)
    names = twin.model.parameter_names
    off = float(theta[0, names.index(TIME_OFFSET)])
    assert off == pytest.approx(2.0)
    params = {n: float(theta[0, names.index(n)]) for n in ht.models.get("baccam2006").parameter_names}
    ref = ht.simulate("baccam2006", np.array([-1.0, 1.0, 2.0, 4.0]) + off, params=params, rtol=1e-10,
                      doses=[ht.Dose(time=0.5 + off, amount=1.0, target="antiviral")])["log10_V"].to_numpy()
    np.testing.assert_allclose(g[0].numpy(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_known_offset_distribution_stays_put_under_saem_and_gradients_unless_estimated():
    from hybridtwin.estimation import SAEMConfig
    from hybridtwin.estimation.fisher import set_uncertainty
    from hybridtwin.estimation.saem import fit_saem
    from hybridtwin.virtual import make_virtual_cohort

    data = make_virtual_cohort("sarscov2_cd8", n_subjects=10, n_cohorts=1, seed=0)
    # a loose tolerance: what is checked is which estimates move, not their values (a third of the solver work)
    cfg = dict(model="sarscov2_cd8", time_offset={}, fixed=("K_V", "k_T", "delta_T", "r", "V0", "c_T"),
               population=("c",), solver={"rtol": 1e-3, "atol": 1e-4, "max_steps": 4000})
    twin = HybridTwin.from_data(TwinConfig(**cfg), data)
    j = twin.patient_names.index(TIME_OFFSET)
    fit = fit_saem(twin, data, SAEMConfig(n_explore=1, n_smooth=1, n_fisher=2, init_steps=1, progress=False))
    assert float(twin.mu[j].exp()) == pytest.approx(5.1) and float(twin.log_omega[j].exp()) == pytest.approx(0.418)
    assert float(twin.beta[j].abs().sum()) == 0.0
    assert float(twin.mu[1 - j]) != pytest.approx(math.log(6.0))  # the other patient parameter (p) moved
    set_uncertainty(twin, fit)
    assert not any(TIME_OFFSET in n for n in twin.uncertainty["names"] if n.startswith(("mu[", "log_omega[", "beta[")))
    # gradient training (the Lightning ELBO, the pooled start) cannot move it either
    loss = (twin.mu**2).sum() + (twin.log_omega**2).sum() + (twin.beta**2).sum()
    loss.backward()
    assert float(twin.mu.grad[j]) == 0.0 and float(twin.log_omega.grad[j]) == 0.0
    estimated = HybridTwin.from_data(TwinConfig(**{**cfg, "time_offset": {"estimate_population": True}}), data)
    assert estimated.known_population == {}
    with pytest.raises(ValueError, match="estimate_population"):
        TwinConfig(**{**cfg, "time_offset": {"estimate_population": "yes"}})


def test_predict_accepts_the_data_day_axis_negative_days_included():
    data = _onset_data()
    twin = HybridTwin.from_data(TwinConfig(model="sarscov2_cd8", time_offset={}, covariate_effects=False), data)
    traj, par = twin.predict(data.covariates, data.observations, None, times=[-2.0, 0.0, 5.0], n_samples=20)
    assert sorted(traj["time"].unique().tolist()) == [-2.0, 0.0, 5.0] and traj["median"].notna().all()
    assert TIME_OFFSET in set(par["parameter"])
    with pytest.raises(ValueError, match=r">= -30"):
        twin.predict(data.covariates, None, None, times=[-40.0, 0.0], n_samples=5)
    plain = HybridTwin.from_data(TwinConfig(model="sarscov2_cd8", covariate_effects=False), data)
    with pytest.raises(ValueError, match=r">= 0"):
        plain.predict(data.covariates, None, None, times=[-2.0, 0.0], n_samples=5)


def test_a_twin_with_a_known_offset_distribution_saves_and_loads(tmp_path):
    """The checkpoint round trip (weights_only load, shapes checked on a meta-device skeleton) keeps the known
    incubation-period distribution and gives the same predictions."""
    data = _onset_data()
    twin = HybridTwin.from_data(TwinConfig(model="sarscov2_cd8", time_offset={}, covariate_effects=False), data)
    ht.checkpoint.save(twin, tmp_path / "twin")
    back = ht.load(tmp_path / "twin")
    j = back.patient_names.index(TIME_OFFSET)
    assert back.known_population[j] == pytest.approx((math.log(5.1), math.log(0.418)))
    a, _ = twin.predict(data.covariates, data.observations, None, times=[-2.0, 5.0], method="encoder", n_samples=20)
    b, _ = back.predict(data.covariates, data.observations, None, times=[-2.0, 5.0], method="encoder", n_samples=20)
    np.testing.assert_allclose(a["median"], b["median"])


def test_library_route_reads_rows_before_day_zero_exactly():
    """The library route interpolates each member's curve on a time grid; with a time offset the data clock reaches
    before day 0, and a grid that started at 0 extrapolated those rows from its first segment (weights off by up to
    0.1 for a patient sampled at days -3 and -1). Its weights must equal the exactly evaluated importance weights."""
    from pathlib import Path

    from hybridtwin.checkpoint import load
    from hybridtwin.losses import normal_log_prob
    from hybridtwin.personalise import _tables, library_posterior

    twin = load(Path(__file__).resolve().parents[1] / "checkpoints" / "sarscov2_challenger")
    obs = pd.DataFrame({"subject_id": "a", "time": [-3.0, -1.0, 2.0, 6.0], "observable": "log10_V",
                        "value": [4.0, 6.5, 7.0, 5.0]})
    ds, _ = _tables(twin, pd.DataFrame({"subject_id": ["a"], "age": [40.0]}), obs, None)
    b = ds.batch()
    L = 300
    post = library_posterior(twin, b, size=L, grid_points=400)
    lib = post.samples[0]
    with torch.no_grad():
        g, status = twin.observables_at(twin.theta(lib, b.cohort.repeat(L)), b, repeats=L)
        ll = twin.observation.log_likelihood(g, b.values.repeat(L, 1), b.observable.repeat(L, 1), b.cohort.repeat(L),
                                             b.censored.repeat(L, 1), b.lloq.repeat(L, 1), b.mask.repeat(L, 1)).sum(1)
        pm, ps = twin.prior(b.covariates)
        centre, spread = pm.mean(0), torch.sqrt(ps.mean(0) ** 2 + pm.var(0, unbiased=False)) * 1.5  # its proposal
        exact = torch.softmax(ll + normal_log_prob(lib, pm, ps) - normal_log_prob(lib, centre, spread), 0)
    assert bool((status == 0).all())
    assert float((post.weights[0] - exact).abs().max()) < 1e-4
