"""Missed samples (``TwinConfig.miss``): a probability that a sample reads "not detected" whatever the load.

The likelihood matches the mixture written out by hand, reduces to Beal's M3 when the probability goes to 0,
simulated misses come at the stated rate, SAEM recovers a known miss rate and noise SD from a virtual cohort
(where a fit without the term inflates the noise), and the setting is validated and survives a card."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from hybridtwin.data import validate
from hybridtwin.estimation import SAEMConfig, fit_saem, set_uncertainty
from hybridtwin.observation import ObservationModel
from hybridtwin.twin import HybridTwin, TwinConfig
from test_estimation import LN10, _decay_model, decay_twin


def _rows(values, censored, lloq):
    n = len(values)
    return dict(values=torch.tensor([values], dtype=torch.float64), observable=torch.zeros(1, n, dtype=torch.long),
                cohort=torch.zeros(1, dtype=torch.long), censored=torch.tensor([censored]),
                lloq=torch.tensor([lloq], dtype=torch.float64), mask=torch.ones(1, n, dtype=torch.bool))


def test_the_likelihood_is_the_mixture_written_out_and_m3_without_misses():
    mu = torch.tensor([[3.0, 3.0, 1.0]], dtype=torch.float64)
    rows = _rows([3.4, 2.0, 2.0], [False, True, True], [2.0, 2.0, 2.0])
    pi, sd = 0.3, 0.5
    om = ObservationModel(["log10_V"], sigma={"log10_V": sd}, miss={"log10_V": pi}).double()
    ll = om.log_likelihood(mu, **rows)[0].tolist()
    expected = [math.log(1 - pi) + norm.logpdf(3.4, 3.0, sd),
                math.log(pi + (1 - pi) * norm.cdf((2.0 - 3.0) / sd)),
                math.log(pi + (1 - pi) * norm.cdf((2.0 - 1.0) / sd))]
    assert ll == pytest.approx(expected, rel=1e-6)  # the initial values are made in float32
    plain = ObservationModel(["log10_V"], sigma={"log10_V": sd}).double()
    tiny = ObservationModel(["log10_V"], sigma={"log10_V": sd}, miss={"log10_V": 1e-9}).double()
    assert tiny.log_likelihood(mu, **rows)[0].tolist() == pytest.approx(plain.log_likelihood(mu, **rows)[0].tolist(),
                                                                       abs=1e-6)
    assert not hasattr(plain, "logit_miss") and "logit_miss" not in plain.state_dict()
    # an observable without a miss term is untouched by another one's
    two = ObservationModel(["a", "b"], sigma={"a": sd, "b": sd}, miss={"a": pi}).double()
    r = _rows([2.0, 2.0], [True, True], [2.0, 2.0])
    r["observable"] = torch.tensor([[0, 1]])
    lla, llb = two.log_likelihood(torch.tensor([[3.0, 3.0]], dtype=torch.float64), **r)[0].tolist()
    assert lla == pytest.approx(math.log(pi + (1 - pi) * norm.cdf(-2.0)))
    assert llb == pytest.approx(norm.logcdf(-2.0))


def test_simulated_misses_come_at_the_stated_rate_and_only_where_a_limit_exists():
    om = ObservationModel(["log10_V"], sigma={"log10_V": 0.1}, miss={"log10_V": 0.25}).double()
    g = torch.full((1, 20000), 5.0, dtype=torch.float64)
    obs = torch.zeros(1, 20000, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        y = om.sample(g, obs, torch.zeros(1, dtype=torch.long), generator=gen)
    rate = float(torch.isneginf(y).double().mean())
    assert abs(rate - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 20000)
    assert float(y[torch.isfinite(y)].std()) == pytest.approx(0.1, rel=0.05)
    no_limit = om.sample(g, obs, torch.zeros(1, dtype=torch.long), generator=gen,
                         lloq=torch.full_like(g, float("nan")))
    assert torch.isfinite(no_limit).all()


def missed_cohort(n=160, seed=1, pi=0.25, sigma=0.2, lloq=2.5, times=(0.0, 1.0, 2.0, 3.0)):
    """log10 V = (log V0_i - k_i t) / ln 10 + noise, each sample missed (reported below ``lloq``) with ``pi``."""
    rng = np.random.default_rng(seed)
    logv0 = math.log(1e4) + 0.5 * rng.normal(size=n)
    logk = math.log(0.5) + 0.3 * rng.normal(size=n)
    rows = []
    for i in range(n):
        for t in times:
            y = (logv0[i] - math.exp(logk[i]) * t) / LN10 + sigma * rng.normal()
            missed = rng.random() < pi
            cens = missed or y < lloq
            rows.append((f"s{i:03d}", t, "log10_V", lloq if cens else y, cens, lloq))
    obs = pd.DataFrame(rows, columns=["subject_id", "time", "observable", "value", "censored", "lloq"])
    cov = pd.DataFrame({"subject_id": [f"s{i:03d}" for i in range(n)], "age": rng.normal(50, 10, n)})
    return validate(obs, None, cov, model=_decay_model())


def test_saem_recovers_a_known_miss_rate_and_the_noise_that_ignoring_it_inflates():
    data = missed_cohort()
    settings = SAEMConfig(n_explore=25, n_smooth=20, n_fisher=20, init_steps=10, progress=False)
    twin = decay_twin(data, fixed=("unused",), covariate_effects=False, miss={"log10_V": 0.1})
    fit = fit_saem(twin, data, settings)
    set_uncertainty(twin, fit)
    d = twin.observation.describe()["log10_V"]
    # 640 rows: the SE of the rate is ~0.02
    assert d["miss_probability"] == pytest.approx(0.25, abs=0.06)
    assert d["sigma_additive"] == pytest.approx(0.2, rel=0.2)
    table = twin.population_table()
    row = table[table["kind"] == "miss"].iloc[0]
    assert row["quantity"] == "miss_probability(log10_V)" and row["lower"] < 0.25 < row["upper"]
    assert 0 < row["lower"] < row["estimate"] < row["upper"] < 1
    plain = decay_twin(data, fixed=("unused",), covariate_effects=False)
    fit_saem(plain, data, dataclasses.replace(settings, n_fisher=0))  # its uncertainty is not asked for
    inflated = plain.observation.describe()["log10_V"]["sigma_additive"]
    assert inflated > 2 * d["sigma_additive"], inflated


def test_the_miss_setting_is_validated_and_survives_a_card():
    data = missed_cohort(n=8)
    with pytest.raises(ValueError, match="miss"):
        decay_twin(data, miss={"log10_V": 1.0})
    with pytest.raises(ValueError, match="miss"):
        decay_twin(data, miss={"nope": 0.1})
    with pytest.raises(ValueError, match="learn_miss"):
        decay_twin(data, miss={"log10_V": 0.1}, learn_miss="yes")
    with pytest.raises(ValueError, match="probability"):
        ObservationModel(["a"], miss={"a": 0.0})
    twin = decay_twin(data, miss={"log10_V": 0.2}, learn_miss=False)
    assert not twin.observation.logit_miss.requires_grad
    again = HybridTwin.from_card(twin.card())
    assert again.config == twin.config and again.config.miss == {"log10_V": 0.2}
    again.load_state_dict(twin.state_dict(), strict=True)
    assert TwinConfig.from_dict(twin.config.to_dict()) == twin.config
    assert twin.population_table().query("kind == 'miss'")["role"].tolist() == ["fixed"]


def test_predicted_measurements_count_missed_samples_as_not_detected():
    data = missed_cohort(n=8)
    twin = decay_twin(data, fixed=("unused",), miss={"log10_V": 0.3}, learn_miss=False).eval()
    first = data.observations[data.observations["time"] == 0.0]
    traj, _ = twin.predict(data.covariates, first, None, times=[1.0, 2.0], method="map", n_samples=400, level=0.9)
    # 30 % of measurements are missed: the 5 % quantile is "not detected", the median a detected value
    assert np.isneginf(traj["lower"]).all() and np.isfinite(traj["median"]).all()
    assert (traj["upper"] > traj["median"]).all()
    traj50, _ = twin.predict(data.covariates, first, None, times=[1.0], method="map", n_samples=400, level=0.2)
    assert np.isfinite(traj50["lower"]).all()  # the 40 % quantile is above the 30 % of misses


def test_the_credibility_report_simulates_missed_samples_below_the_limit(tmp_path):
    """The VPC's simulated share below the limit counts the misses: about pi where the curve is far above it."""
    from hybridtwin.diagnostics.credibility import credibility_report

    data = missed_cohort(n=20, pi=0.4, lloq=1.0)  # no value comes near a limit of 1 log10: every negative is a miss
    shares = {}
    for pi in (None, 0.4):
        twin = decay_twin(data, fixed=("unused",), covariate_effects=False,
                          **({"miss": {"log10_V": pi}, "learn_miss": False} if pi else {})).eval()
        credibility_report(twin, data, tmp_path / str(pi), n_samples=50, n_replicates=40)
        shares[pi] = pd.read_csv(tmp_path / str(pi) / "vpc.csv")["sim_blq"].to_numpy()
    assert (shares[None] < 0.02).all()
    assert np.abs(shares[0.4] - 0.4).max() < 0.1, shares[0.4]
