"""Declared parameter bounds are hard limits everywhere: conversions, twin parameters, reported intervals."""

import math

import torch

import hybridtwin as ht
from hybridtwin.twin import HybridTwin, TwinConfig
from hybridtwin.virtual import make_virtual_cohort


def test_constrain_holds_values_at_the_declared_bounds_and_is_exact_inside():
    p = ht.Parameter("p", 3.0, 1.0, 10.0)
    z = torch.tensor([math.log(0.5), math.log(3.0), math.log(11.4)], dtype=torch.float64)
    out = p.constrain(z)
    assert out[0] == 1.0 and out[2] == 10.0 and out[1] == torch.exp(z[1])  # inside: the plain exp, bit for bit
    assert p.unconstrained_bounds() == (0.0, math.log(10.0))
    free = ht.Parameter("q", 3.0, 0.0, None)  # log transform with lower 0: positive, no clamp needed
    assert float(free.constrain(torch.tensor(50.0, dtype=torch.float64))) == math.exp(50.0)
    ident = ht.Parameter("r", 0.0, -1.0, 1.0, transform="identity")
    assert ident.constrain(torch.tensor([-3.0, 0.25, 3.0])).tolist() == [-1.0, 0.25, 1.0]
    assert ident.unconstrained_bounds() == (-1.0, 1.0)


def test_predicted_parameter_intervals_stay_inside_the_bounds():
    data = make_virtual_cohort("sarscov2_cd8", n_subjects=4, n_cohorts=1, seed=0)
    twin = HybridTwin.from_data(TwinConfig(model="sarscov2_cd8", covariate_effects=False), data)
    space = twin.model.parameter_space
    with torch.no_grad():
        twin.log_omega.fill_(math.log(5.0))  # a very wide population: raw log-normal draws leave the bounds
    traj, par = twin.predict(data.covariates, None, None, times=[1.0, 5.0], n_samples=400, seed=1)
    for name, rows in par.groupby("parameter"):
        lo, hi = space[name].lower, space[name].upper
        assert (rows["lower"] >= lo).all() and (rows["upper"] <= hi).all(), (name, rows)
    assert (par["upper"] == par["parameter"].map(lambda n: space[n].upper)).any()  # the wide draws hit a bound
