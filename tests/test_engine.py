"""The engine protocol: the exact engine equals direct simulation per scenario, failures are kept and
named, scenarios are frozen and hashable."""

import math

import numpy as np
import pandas as pd
import pytest

import hybridtwin as ht
from hybridtwin.engine import Engine, ExactEngine, Scenario


def test_exact_engine_equals_direct_simulation_per_scenario():
    pop = pd.DataFrame({"subject_id": ["a", "b", "c"], "beta": [5e-5, 2e-5, 8e-5]})
    plain = Scenario("untreated")
    treated = Scenario("antiviral", doses=(ht.Dose(1.0, 10.0, "antiviral"),), overrides={"Emax": 0.9})
    engine = ExactEngine("baccam2006")
    sims = engine.run(pop, [plain, treated], [0, 1, 2, 4, 6], outputs=["log10_V"])
    assert isinstance(engine, Engine) and sims.n_failed == 0
    for sc in (plain, treated):
        direct = ht.simulate("baccam2006", [0, 1, 2, 4, 6], params=pop.assign(**dict(sc.overrides)),
                             doses=list(sc.doses) or None, rtol=1e-6)
        got = sims.frame[sims.frame.scenario == sc.name].pivot(index=["subject_id", "time"], columns="output",
                                                               values="value")
        np.testing.assert_allclose(got["log10_V"].to_numpy(), direct.set_index(["subject_id", "time"])["log10_V"]
                                   .loc[got.index].to_numpy(), rtol=1e-12)
    wide = sims.frame.pivot_table(index=["subject_id", "time"], columns="scenario", values="value")
    assert (wide["antiviral"] - wide["untreated"]).abs().max() > 0.1  # the dose and override were applied


def test_failed_simulations_keep_status_and_are_excluded_only_explicitly():
    pop = pd.DataFrame({"subject_id": ["ok", "stiff"], "beta": [5e-5, 1e-2]})  # the second: 200x faster infection
    engine = ExactEngine("baccam2006", rtol=1e-8, max_steps=1000)
    with pytest.warns(RuntimeWarning, match="simulations failed"):
        sims = engine.run(pop, [Scenario("s")], np.linspace(0, 10, 11))
    assert sims.failed()["subject_id"].tolist() == ["stiff"]
    assert sims.failed()["status"].tolist() == ["max_steps"]
    assert sims.frame.loc[(sims.frame.subject_id == "stiff") & (sims.frame.time > 1), "value"].isna().all()
    assert set(sims.ok_frame()["subject_id"]) == {"ok"}


def test_scenarios_are_frozen_hashable_and_validated():
    a = Scenario("x", doses=[ht.Dose(0, 1.0, "Ag")], overrides={"b": 2, "a": 1})
    b = Scenario("x", doses=(ht.Dose(0, 1.0, "Ag"),), overrides=(("a", 1.0), ("b", 2.0)))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    with pytest.raises(ValueError, match="name"):
        Scenario("")
    with pytest.raises(TypeError, match="Dose"):
        Scenario("x", doses=[(0, 1.0, "Ag")])
    with pytest.raises(ValueError, match="finite"):
        Scenario("x", overrides={"a": math.inf})
    engine = ExactEngine("vaccine_asc")
    with pytest.raises(ValueError, match="unique"):
        engine.run(pd.DataFrame({"delta_Ab": [0.02]}), [Scenario("x"), Scenario("x")], [0, 1])
    with pytest.raises(ValueError, match="outputs"):
        engine.run(pd.DataFrame({"delta_Ab": [0.02]}), [Scenario("x")], [0, 1], outputs=["nope"])


def test_exact_engine_fused_option_is_validated_and_read_from_configs(tmp_path):
    from hybridtwin.cli_surrogate import engine_from_config

    with pytest.raises(ValueError, match="fused must be True or False"):
        ExactEngine("baccam2006", fused="yes")
    engine, exact, surrogate = engine_from_config({"exact": "baccam2006", "fused": True}, tmp_path, "sweep")
    assert engine is exact and engine.fused and surrogate is None
    assert not engine_from_config({"exact": "baccam2006"}, tmp_path, "sweep")[0].fused


@pytest.mark.slow  # ~30 s: compiles the baccam2006 step
def test_exact_engine_fused_equals_unfused():
    pop = pd.DataFrame({"subject_id": list("abcdef"), "beta": [5e-5, 2e-5, 8e-5, 3e-5, 4e-5, 6e-5]})
    scen = [Scenario("untreated"), Scenario("antiviral", doses=(ht.Dose(1.0, 10.0, "antiviral"),))]
    a = ExactEngine("baccam2006").run(pop, scen, [0, 1, 2, 4, 6], outputs=["log10_V"]).frame
    b = ExactEngine("baccam2006", fused=True).run(pop, scen, [0, 1, 2, 4, 6], outputs=["log10_V"]).frame
    # the fused steps end on output times (other steps than unfused): equal to the tolerance (rtol 1e-6)
    np.testing.assert_allclose(b["value"].to_numpy(), a["value"].to_numpy(), rtol=1e-6)
