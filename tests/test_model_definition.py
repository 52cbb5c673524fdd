"""User-defined models are validated when they are defined."""

import pytest
import torch

import hybridtwin as ht
from hybridtwin.models import ModelDefinitionError, log10_observable


def _params():
    return [ht.Parameter("beta", 3e-5, 1e-9, 1e-2), ht.Parameter("delta", 5.0, 0.1, 50),
            ht.Parameter("p", 0.05, 1e-6, 10), ht.Parameter("c", 5.0, 0.1, 50),
            ht.Parameter("T0", 4e8, 1e5, 1e11, role="fixed"), ht.Parameter("V0", 0.75, 1e-6, 1e6)]


def _rhs(t, s, p):
    return {"T": -p.beta * s.T * s.V, "I": p.beta * s.T * s.V - p.delta * s.I, "V": p.p * s.I - p.c * s.V}


def make(**over):
    kw = dict(name="tcl", states=["T", "I", "V"], parameters=_params(), rhs=_rhs,
              initial={"T": "T0", "I": 0.0, "V": "V0"}, observables={"log10_V": log10_observable("V")})
    kw.update(over)
    return ht.Model(**kw)


@pytest.mark.slow
def test_user_model_runs_and_matches_builtin_tcl_variant():
    mine = make()
    times = [0, 2, 4, 6]
    # the built-in also integrates its (empty) antiviral compartment, so step sequences differ: compare at
    # a tolerance well above the solver's
    builtin = ht.simulate("baccam2006_tcl", times, params={"beta": 3e-5, "delta": 5.0, "p": 0.05, "c": 5.0}, rtol=1e-11)
    ours = ht.simulate(mine, times, rtol=1e-11)
    assert torch.allclose(torch.tensor(ours["V"].to_numpy()), torch.tensor(builtin["V"].to_numpy()), rtol=1e-8)


@pytest.mark.parametrize(
    "over, message",
    [
        (dict(observables={"log10_W": log10_observable("W")}), "unknown state 'W'"),
        (dict(initial={"T": "T0", "V": "V0"}), r"no initial value for state\(s\) \['I'\]"),
        (dict(initial={"T": "T_zero", "I": 0.0, "V": "V0"}), "unknown parameter 'T_zero'"),
        (dict(rhs=lambda t, s, p: {"T": 0 * s.T, "I": 0 * s.I}), r"missing \['V'\]"),
        (dict(rhs=lambda t, s, p: {"T": p.gamma * s.T, "I": 0 * s.I, "V": 0 * s.V}), "unknown parameter 'gamma'"),
        (dict(states=["T", "I", "V", "V"]), "duplicate"),
        (dict(time_unit="weeks"), "time_unit"),
    ],
)
def test_bad_definitions_raise(over, message):
    with pytest.raises(ModelDefinitionError, match=message):
        make(**over)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="x", default=1.0, lower=2.0, upper=1.0), "lower < upper"),
        (dict(name="x", default=5.0, lower=0.0, upper=1.0), "outside its bounds"),
        (dict(name="x", default=0.0), "positive default"),
        (dict(name="x", default=0.5, transform="logit"), "finite bounds"),
        (dict(name="x", default=None), "must be a number"),
        (dict(name="x", default=1.0, role="random"), "role"),
    ],
)
def test_bad_parameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ht.Parameter(**kwargs)


def test_parameter_transforms_round_trip():
    space = ht.ParameterSpace([ht.Parameter("a", 2.0, 0.0, 10.0), ht.Parameter("f", 0.3, 0.0, 1.0, transform="logit"),
                               ht.Parameter("s", -1.0, transform="identity")])
    x = torch.tensor([[2.0, 0.3, -1.0], [0.01, 0.99, 4.0]], dtype=torch.float64)
    assert torch.allclose(space.constrain(space.to_unconstrained(x)), x, rtol=1e-12)


def test_register_makes_model_available_by_name():
    m = make(name="tcl_registered")
    ht.models.register(m)
    assert ht.models.get("tcl_registered") is m
    with pytest.raises(ValueError, match="already registered"):
        ht.models.register(m)
