"""Every experiment runs end to end with tiny settings (the real runs are recorded in experiments/results)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))


@pytest.mark.slow  # experiment scripts run in `make test-all` (default suite time)
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


@pytest.mark.slow  # experiment scripts run in `make test-all` (default suite time)
def test_missing_mechanism_tiny(tmp_path):
    import missing_mechanism

    r = missing_mechanism.main(n_train=24, n_test=4, max_epochs=1, batch_size=12, n_samples=8, out_dir=tmp_path,
                               tag="tiny")
    assert set(r["variants"]) == {"mechanistic", "hybrid", "black_box"}
    assert "hybrid_over_mechanistic" in r and (tmp_path / "tiny_closure.png").exists()


@pytest.mark.slow  # experiment scripts run in `make test-all` (default suite time)
def test_benchmarks_tiny(tmp_path):
    import bench_data
    import bench_solve

    t = bench_solve.main(sizes=(20,), n_scipy=5, out_dir=tmp_path, repeats=1)
    assert (t["max_rel_diff"] < 1e-3).all() and (tmp_path / "bench_solve.csv").exists()
    d = bench_data.main(n_subjects=50, obs_per_subject=4, out_dir=tmp_path, repeats=1)
    assert int(d["solver_failed"].iloc[0]) == 0


@pytest.mark.slow  # ~30 s: a 40-subject SAEM fit, forecasts and the report
def test_estimation_tiny(tmp_path):
    import estimation

    r = estimation.main(models=("baccam2006",), seeds=(0,), n_train=40, n_test=10, ks=(1,), out=tmp_path,
                        saem=dict(n_explore=3, n_smooth=2, n_fisher=4, init_steps=2),
                        amortise=dict(n_simulations=80, epochs=1, batch_size=40))
    res = r["results"][0]
    names = {e["quantity"] for e in res["estimates"]}
    assert {"log_sigma_add[log10_V]", "cohort_shift[V0, cohort_2]", "beta[p, sex[F vs M]]"} <= names
    truth = {e["quantity"]: e["truth"] for e in res["estimates"]}
    assert truth["beta[p, sex[F vs M]]"] == -0.2 and abs(truth["cohort_shift[V0, cohort_3]"] - 0.98083) < 1e-4
    assert {f["method"] for f in res["forecast"]} == {"twin MAP", "twin encoder", "truth MAP"}
    assert (tmp_path / "estimation.md").exists() and (tmp_path / "estimation" / "baccam2006_seed0_convergence.png").exists()
    again = estimation.main(models=("baccam2006",), seeds=(0,), n_train=40, n_test=10, ks=(1,), out=tmp_path)
    assert again["results"][0]["fit_seconds"] == res["fit_seconds"]  # resumed from the cache, not refitted


@pytest.mark.slow  # ~20 s: SAEM on 30 challenger2022 patients
def test_estimation_real_tiny(tmp_path, shared_data):
    import estimation_real

    r = estimation_real.main(n_subjects=30, path=shared_data / "challenger2022_covid_vl_combined", out=tmp_path,
                             saem=dict(n_explore=3, n_smooth=2, n_fisher=4, init_steps=2),
                             amortise=dict(n_simulations=60, epochs=1, batch_size=30))["result"]
    assert r["n_subjects"] == 30 and r["noise_sd"] > 0 and set(r["omega"]) == {"p", "c_T", "t_offset"}
    assert (tmp_path / "estimation_challenger.png").exists()
