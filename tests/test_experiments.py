"""Every experiment runs end to end with tiny settings (the real runs are recorded in experiments/results)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))


def test_personalisation_tiny(tmp_path):
    import personalisation

    r = personalisation.main(n_subjects=45, n_cohorts=3, max_epochs=1, batch_size=15, n_new=12, n_samples=10,
                             out_dir=tmp_path, tag="tiny")
    saved = json.loads((tmp_path / "tiny.json").read_text())
    assert set(saved["params"]) == {"beta_S", "beta_L", "delta_S", "delta_Ab"}
    for key in ("error_ratio_twin_over_oracle", "coverage_90", "train_seconds", "peak_rss_mb"):
        assert key in saved
    assert r["speed"]["encoder_seconds"] < r["speed"]["map_seconds"]
    assert (tmp_path / "tiny.png").exists() and (tmp_path / "tiny.md").exists()


def test_missing_mechanism_tiny(tmp_path):
    import missing_mechanism

    r = missing_mechanism.main(n_train=24, n_test=4, max_epochs=1, batch_size=12, n_samples=8, out_dir=tmp_path,
                               tag="tiny")
    assert set(r["variants"]) == {"mechanistic", "hybrid", "black_box"}
    assert "hybrid_over_mechanistic" in r and (tmp_path / "tiny_closure.png").exists()


def test_benchmarks_tiny(tmp_path):
    import bench_data
    import bench_solve

    t = bench_solve.main(sizes=(20,), n_scipy=5, out_dir=tmp_path, repeats=1)
    assert (t["max_rel_diff"] < 1e-3).all() and (tmp_path / "bench_solve.csv").exists()
    d = bench_data.main(n_subjects=50, obs_per_subject=4, out_dir=tmp_path, repeats=1)
    assert int(d["solver_failed"].iloc[0]) == 0
