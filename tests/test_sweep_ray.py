"""A sweep on a local 2-worker Ray instance gives exactly the single-process result (slow: Ray starts in seconds)."""

import pandas as pd
import pytest

from hybridtwin.engine import ExactEngine
from hybridtwin.scenarios import ScenarioSpace
from hybridtwin.sweep import merge_shards, sweep


@pytest.mark.slow
def test_ray_sweep_equals_the_single_process_sweep(tmp_path):
    ray = pytest.importorskip("ray")
    space = ScenarioSpace([{"name": "prime", "target": "Ag", "time": 0, "amount": 1},
                           {"name": "boost", "target": "Ag", "time": [14, 365], "amount": [0.25, 4]}])
    grid = list(space.grid({"boost.time": [30, 90, 180, 270], "boost.amount": [0.5, 2.0]}))
    pop = pd.DataFrame({"subject_id": [f"p{i}" for i in range(5)], "delta_Ab": [0.015, 0.02, 0.025, 0.03, 0.035]})
    engine = ExactEngine("vaccine_asc")
    local = sweep(engine, pop, grid, times=[60, 200, 365], progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        distributed = sweep(engine, pop, grid, times=[60, 200, 365], max_pairs=10, backend="ray",
                            shard_dir=tmp_path / "shards", progress=False)
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(local.frame, distributed.frame)
    pd.testing.assert_frame_equal(local.status, distributed.status)
    assert len(list((tmp_path / "shards").glob("shard_*.csv"))) == 4  # 8 scenarios, 2 per 10-pair shard
    merged = merge_shards(tmp_path / "shards", grid)
    pd.testing.assert_frame_equal(local.frame, merged.frame, check_exact=False, rtol=1e-12)
