"""Scenario spaces and grids; the exact engine's paired solves."""

import numpy as np
import pandas as pd
import pytest

import hybridtwin as ht
from hybridtwin.engine import ExactEngine, Scenario
from hybridtwin.scenarios import ScenarioGrid, ScenarioSpace

PRIME_BOOST = [{"name": "prime", "target": "Ag", "time": 0, "amount": 1},
               {"name": "boost", "target": "Ag", "time": [14, 365], "amount": [0.25, 4]}]


def test_scenario_space_round_trips_factor_values_and_builds_the_doses():
    space = ScenarioSpace(PRIME_BOOST)
    assert space.factors == ["boost.time", "boost.amount"]
    sc = space.scenario({"boost.time": 90, "boost.amount": 2})
    assert sc.doses == (ht.Dose(0.0, 1.0, "Ag"), ht.Dose(90.0, 2.0, "Ag"))
    X, inside = space.encode([sc, space.scenario([400, 2])])
    assert X.tolist() == [[90.0, 2.0], [400.0, 2.0]] and inside.tolist() == [True, False]
    again = ScenarioSpace.from_dict(space.to_dict())
    assert again.factors == space.factors and np.array_equal(again.bounds, space.bounds)


def test_scenario_space_refuses_scenarios_of_another_shape():
    space = ScenarioSpace(PRIME_BOOST)
    with pytest.raises(ValueError, match="has 1 dose"):
        space.encode([Scenario("prime only", (ht.Dose(0, 1, "Ag"),))])
    with pytest.raises(ValueError, match="fixed at 1.0"):
        space.encode([Scenario("double prime", (ht.Dose(0, 2, "Ag"), ht.Dose(30, 1, "Ag")))])
    assert not space.contains(Scenario("other", (ht.Dose(0, 1, "M"), ht.Dose(30, 1, "Ag"))))
    with pytest.raises(ValueError, match=r"low < high"):
        ScenarioSpace([{"name": "b", "target": "Ag", "time": [30, 10]}])
    with pytest.raises(ValueError, match="unknown key"):
        ScenarioSpace([{"name": "b", "target": "Ag", "tme": 3}])


def test_grid_is_the_product_sized_indexable_and_named_uniquely():
    space = ScenarioSpace(PRIME_BOOST, overrides={"delta_Ab": [0.01, 0.05]})
    grid = space.grid({"boost.time": [30, 60, 90], "boost.amount": [0.5, 1.0], "override.delta_Ab": [0.02, 0.03]})
    assert isinstance(grid, ScenarioGrid) and len(grid) == 12
    scenarios = list(grid)
    assert len({s.name for s in scenarios}) == 12 and grid[5] == scenarios[5] and grid[-1] == scenarios[-1]
    X, inside = space.encode(scenarios)
    assert inside.all() and {tuple(x) for x in X} == {(t, a, d) for t in (30, 60, 90) for a in (0.5, 1) for d in (0.02, 0.03)}
    assert grid.frame().shape == (12, 4)
    with pytest.raises(ValueError, match="missing"):
        space.grid({"boost.time": [30]})


def test_space_filling_sample_covers_the_ranges():
    space = ScenarioSpace(PRIME_BOOST)
    X, inside = space.encode(space.sample(256, seed=3))
    assert inside.all()
    # a scrambled Sobol design: every quarter of each range holds about a quarter of the points
    for j, (lo, hi) in enumerate(space.bounds):
        counts = np.histogram(X[:, j], bins=4, range=(lo, hi))[0]
        assert counts.min() >= 56, counts


def test_exact_engine_pairs_equal_one_simulation_per_pair():
    space = ScenarioSpace(PRIME_BOOST)
    pop = pd.DataFrame({"delta_Ab": [0.02, 0.04, 0.03]})
    scen = [space.scenario([30, 1]), space.scenario([120, 0.5]), space.scenario([200, 4])]
    engine = ExactEngine("vaccine_asc")
    values, status = engine.simulate_pairs(pop, scen, [10, 100, 250], ["log10_Ab"])
    assert values.shape == (3, 1, 3) and status == ["ok"] * 3
    for i in range(3):
        direct = ht.simulate("vaccine_asc", [10, 100, 250], params=pop.iloc[i].to_dict(), doses=list(scen[i].doses),
                             rtol=1e-6)
        np.testing.assert_allclose(values[i, 0], direct["log10_Ab"], rtol=1e-9)
