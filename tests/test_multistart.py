"""SAEM from several starts (``multistart``): start 0 is the plain fit, the others start elsewhere, the best by
marginal likelihood is returned, the caller's twin is untouched, and on a well-informed design every start ends
at the same estimate."""

from __future__ import annotations

import math

import pytest
import torch

from hybridtwin.estimation import SAEMConfig, fit_saem, multistart
from test_estimation import decay_cohort, decay_twin

CONFIG = SAEMConfig(n_explore=25, n_smooth=15, n_fisher=0, init_steps=0, progress=False)


def _run(n, config, n_draws):
    data, _ = decay_cohort(n=n)
    twin = decay_twin(data, fixed=("unused",), covariate_effects=False)
    before = {k: v.clone() for k, v in twin.state_dict().items()}
    result = multistart(twin, data, config, n_starts=2, spread=1.0, n_draws=n_draws)
    for k, v in twin.state_dict().items():  # the caller's twin is not moved
        assert torch.equal(v, before[k]), k
    t = result.table
    assert list(t["start"]) == [0, 1] and t["shift"].iloc[0] == 0.0 and t["shift"].iloc[1] > 0.3
    assert t["best"].sum() == 1 and t.loc[t["best"], "loglik"].item() == t["loglik"].max()
    assert result.twin is result.twins[int(t.index[t["best"]][0])]
    # start 0 is exactly the fit fit_saem gives from the same twin and settings
    plain = decay_twin(data, fixed=("unused",), covariate_effects=False)
    plain.load_state_dict(before)
    fit_saem(plain, data, config)
    assert torch.equal(plain.mu, result.twins[0].mu)
    return t


def test_multistart_runs_from_the_twin_and_elsewhere_and_returns_the_best():
    _run(16, SAEMConfig(n_explore=4, n_smooth=2, n_fisher=0, init_steps=0, progress=False), 20)


@pytest.mark.slow  # ~30 s
def test_well_informed_starts_agree():
    t = _run(60, CONFIG, 60)
    # 60 patients, 4 samples each, noise 0.2: the likelihood has one maximum, and every start finds it
    assert t["loglik"].max() - t["loglik"].min() < 3 * t["se"].max() + 1.0
    for name, truth in (("k", 0.5), ("sigma_additive(log10_V)", 0.2)):
        assert (abs(t[name] / truth - 1) < 0.2).all(), (name, t[name].tolist())


def test_multistart_settings_are_validated():
    data, _ = decay_cohort(n=8)
    twin = decay_twin(data, fixed=("unused",))
    for bad in (dict(n_starts=0), dict(n_starts=1.5), dict(spread=-1.0), dict(spread=math.nan)):
        with pytest.raises(ValueError):
            multistart(twin, data, CONFIG, **bad)
