"""Every experiment runs end to end with tiny settings (the real runs are recorded in experiments/results)."""

import json
import math
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
    assert {"ours", "ours fused", "ours (solve)", "ours fused (solve)", "torchdiffeq", "scipy LSODA loop"} <= set(t["engine"])
    d = bench_data.main(n_subjects=50, obs_per_subject=4, out_dir=tmp_path, repeats=1)
    assert int(d["solver_failed"].iloc[0]) == 0


@pytest.mark.slow  # ~2 min: the GPU benchmark's own check on the CPU (small sizes, compiles fused graphs)
def test_bench_gpu_script_on_cpu(tmp_path):
    import bench_gpu

    t = bench_gpu.main(device="cpu", small=True, budget_s=600, out=tmp_path)
    assert "error" not in t.columns
    solves = t[t["table"] == "solve"]
    assert len(solves) == 5 and (solves["max_rel_diff"] < 1e-3).all() and (solves["failed"] == 0).all()
    assert set(t.loc[t["table"] == "train", "batch_size"]) == {64, 2048}
    assert (tmp_path / "bench_gpu.md").exists() and (tmp_path / "bench_gpu.csv").exists()


@pytest.mark.slow  # ~1 min: two tiny trainings, each in its own process
def test_bench_train_tiny(tmp_path):
    import bench_train

    rows = bench_train.main(subjects=100, epochs=2, out=tmp_path, variants=("unfused", "torchdiffeq"))
    assert [r["variant"] for r in rows] == ["unfused", "torchdiffeq"]
    assert all(r["s_per_epoch"] > 0 and r["peak_rss_mb"] > 100 for r in rows)
    # the two solvers train the same twin to the same validation ELBO within their tolerance
    assert rows[1]["val_elbo_rel_diff"] < 0.01
    assert (tmp_path / "bench_train.md").exists()


@pytest.mark.slow  # ~90 s: two forked workers compile the fused step
def test_bench_train_data_parallel(tmp_path):
    import bench_train

    rows = bench_train.main(subjects=100, epochs=2, out=tmp_path, variants=("unfused", "fused ddp2"))
    ddp = rows[1]
    assert ddp["processes"] == 2 and ddp["threads_per_process"] == 1 and ddp["epochs"] == 2
    # the workers' trained weights came back to the benchmark's process, and they describe the data about as well
    assert ddp["parameter_tensors_trained"] > 0 and math.isfinite(ddp["val_elbo"])
    assert ddp["val_elbo_rel_diff"] < 0.25


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
    assert {f["method"] for f in res["forecast"]} == {"twin MAP", "twin encoder", "twin encoder+IS", "truth MAP"}
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


@pytest.mark.slow  # minutes: three tiny SAEM fits on challenger2022 patients, four methods each
def test_challenger_folds_tiny(tmp_path, shared_data):
    import challenger_folds as cf
    import numpy as np

    data = cf._pooled_cohort(cf.challenger_data(shared_data / "challenger2022_covid_vl_combined"))
    folds = cf.study_folds(data, 5)  # every study in exactly one fold
    studies = sorted(data.observations["study"].unique())
    assert sorted(s for f in folds for s in f) == studies and all(folds)
    early, late = cf.split_early(data.observations, 1)
    assert early.groupby("subject_id").size().max() == 1 and len(early) + len(late) == len(data.observations)
    # LOCF: the median is the last early value plus the training patients' median change for that gap
    pred = cf.locf(data.observations, early, late, 1)
    last = early.set_index("subject_id")["value"]
    m = late.merge(pred, on=["subject_id", "time", "observable"])
    assert np.all(m["lower"] <= m["median"]) and np.all(m["median"] <= m["upper"])
    first_time = early.set_index("subject_id")["time"]
    change = m["value"] - m["subject_id"].map(last)
    gap = np.digitize(m["time"] - m["subject_id"].map(first_time), cf.GAP_EDGES)
    expected = m["subject_id"].map(last) + change.groupby(gap).median().reindex(gap).to_numpy()
    assert np.allclose(m["median"], expected)
    res = cf.main(n_folds=3, ks=(1,), n_subjects=60, path=shared_data / "challenger2022_covid_vl_combined",
                  saem=dict(n_explore=2, n_smooth=1, init_steps=1), out=tmp_path)
    rows = [r for r in res["rows"] if r["method"] != "_fit"]
    assert {r["method"] for r in rows} == {"hybrid twin", "hybrid twin, MAP", "encoder without closure", "mechanistic MAP",
                                           "population only", "gradient boosting", "LOCF"}
    for r in rows:
        assert r["rmse"] > 0 and 0 <= r["coverage50"] <= r["coverage90"] + 1e-12 <= 1 + 1e-12
    assert (tmp_path / "challenger_folds.md").exists()


@pytest.mark.slow  # minutes: a 30-subject fit, continued runs and marginal likelihoods
def test_saem_starts_tiny(tmp_path, monkeypatch):
    import saem_starts

    monkeypatch.setattr(saem_starts, "RESULTS", tmp_path)
    out = saem_starts.main(n_draws=6, n_train=30, saem=dict(n_explore=2, n_smooth=1, n_fisher=3, init_steps=1),
                           amortise=dict(n_simulations=30, epochs=1, batch_size=30),
                           cont=dict(n_explore=1, n_smooth=1, n_burn=1))
    assert set(out["points"]) == {"true model", "fresh fit", "continued from the fit", "continued from the truth"}
    truth = out["truth"]
    assert out["points"]["true model"]["values"]["beta[beta, age]"] == pytest.approx(truth["beta[beta, age]"])
    assert all(abs(p["loglik"]) < 1e6 and p["se"] >= 0 for p in out["points"].values())
    assert (tmp_path / "saem_starts_baccam2006_seed0.md").exists()


@pytest.mark.slow  # ~1 min: six volunteers, two starts, few L-BFGS iterations
def test_baccam_volunteers_tiny(tmp_path, shared_data):
    import math

    import baccam_volunteers as bv

    r = bv.main(path=shared_data / "baccam2006_influenza_6pt", out=tmp_path, n_starts=2, max_iter=5)
    t = r["table"]
    assert len(t) == 6 and (t["solver_status"] == 0).all() and t["rmse"].between(0, 10).all()
    row = t.iloc[0]
    assert math.isclose(row["R0"], row["beta"] * row["p"] * bv.T0 / (row["c"] * row["delta"]))
    assert (tmp_path / "baccam_volunteers.md").exists() and (tmp_path / "baccam_volunteers.png").exists()


@pytest.mark.slow  # ~6 min: two tiny fine-tuning fits on ten kissler2021 people, nine methods
def test_kissler_forecast_tiny(tmp_path, shared_data):
    import kissler_forecast as kf

    data = kf.kissler_data(shared_data / "kissler2021_nba_ct")
    obs = data.observations
    assert obs["time"].min() == 0.0 and data.covariates["age"].isna().all()
    first = obs[~obs["censored"]].groupby("subject_id")["time"].min()
    assert (first == 0.0).all()  # every person's axis starts at their first positive test
    early, late = kf.split_quantified(obs, 2)
    assert (early.groupby("subject_id").size() == 2).all() and not early["censored"].any()
    last = early.groupby("subject_id")["time"].max()
    assert (late["time"] > late["subject_id"].map(last)).all()
    r = kf.main(path=shared_data / "kissler2021_nba_ct", out=tmp_path, n_people=10, n_folds=2, ks=(1,),
                saem=dict(n_explore=2, n_smooth=1))
    methods = {row["method"] for row in r["rows"]}
    assert methods == set(kf.METHODS)
    assert all(0 <= row["coverage90"] <= 1 and row["rmse"] > 0 for row in r["rows"])
    # conformal bands rescale the fine-tuned twin's bands around the same median
    by = {(row["fold"], row["method"]): row for row in r["rows"]}
    for f in (0, 1):
        assert by[(f, "twin fine-tuned (MAP + conformal bands)")]["rmse"] == pytest.approx(
            by[(f, "twin fine-tuned (MAP)")]["rmse"])
    assert (tmp_path / "kissler_forecast.md").exists()
    # re-running one method with merge keeps the others' rows and replaces that method's
    again = kf.main(path=shared_data / "kissler2021_nba_ct", out=tmp_path, n_people=10, n_folds=2, ks=(1,),
                    only=["LOCF"], merge=True)
    assert len(again["rows"]) == len(r["rows"])
    key = lambda row: (row["fold"], row["k"], row["method"])  # noqa: E731
    assert sorted(map(key, again["rows"])) == sorted(map(key, r["rows"]))
    assert {k: v for k, v in again["rows"][0].items() if k != "seconds"} == \
        {k: v for k, v in r["rows"][0].items() if k != "seconds"}


def test_reported_scores_count_negatives_at_their_limit():
    import numpy as np
    import pandas as pd
    from challenger_folds import reported_scores

    # rows: a quantified 5.0; a negative (limit 2.0); another negative
    m = pd.DataFrame({"value": [5.0, 2.0, 2.0], "censored": [False, True, True], "lloq": [2.0, 2.0, 2.0]})
    # a forecast that predicts clearance (latent median far below the limit) on the two negatives
    clear = m.assign(median=[4.0, -3.0, -8.0], lower=[3.0, -6.0, -9.0], upper=[6.0, 1.0, 2.5],
                     lower50=[3.5, -4.0, -8.5], upper50=[4.5, -2.0, -7.0])
    r = reported_scores(clear)
    assert r["rmse_reported"] == pytest.approx(np.sqrt(1.0 / 3))  # only the quantified row is off, by 1
    assert r["coverage90_reported"] == 1.0  # negatives covered: the clipped interval reaches the limit
    assert r["coverage50_reported"] == pytest.approx(2 / 3)  # 5.0 is outside [3.5, 4.5]
    # carrying 5.0 forward into the negatives is charged 3.0 on each
    carried = m.assign(median=5.0, lower=4.0, upper=6.0, lower50=4.5, upper50=5.5)
    r = reported_scores(carried)
    assert r["rmse_reported"] == pytest.approx(np.sqrt(18.0 / 3))
    assert r["coverage90_reported"] == pytest.approx(1 / 3)


@pytest.mark.slow  # ~2 min: a tiny SAEM fit on tsang2016's households
def test_tsang_households_tiny(tmp_path, shared_data):
    import tsang_households as th

    data = th.tsang_data(shared_data / "tsang2016_flu_households")
    # own-onset clock (onset_time already applied, not kept): contacts are sampled before their onset
    assert "onset_time" not in data.covariates.columns and data.observations["time"].min() < 0
    train, test = th.household_split(data, seed=0)
    people = lambda d: set(d.subject_ids)  # noqa: E731
    assert not people(train) & people(test) and len(people(train)) + len(people(test)) == len(data.subject_ids)
    split_homes = {s.split("-")[0] for s in test.subject_ids} & {s.split("-")[0] for s in train.subject_ids}
    assert not split_homes  # a household is never split
    r = th.main(path=shared_data / "tsang2016_flu_households", out=tmp_path, stem="tiny",
                saem=dict(n_explore=2, n_smooth=1, n_fisher=3, init_steps=1))
    assert set(r["scores"]) == {"twin MAP", "population only", "LOCF"} and r["noise_sd"] > 0
    effects = [q for q in r["population_table"] if q["kind"] == "effect" and q["covariate"] == "antiviral"]
    assert {q["parameter"] for q in effects} >= {"p"} and (tmp_path / "tiny.md").exists()
    # the yardsticks: time alone explains some of the variation, a per-person level more
    ref = r["references"]
    assert ref["lmm_residual_sd"] < ref["day_mean_curve_sd"] < ref["data_sd"] and ref["lmm_slope_per_day"] < 0


@pytest.mark.slow  # experiment scripts run in `make test-all` (default suite time)
def test_tsang_sampling_model_shifts_only_the_observation():
    import numpy as np
    import pandas as pd

    import hybridtwin as ht
    import tsang_households as th

    m = th.sampling_model()
    assert th.sampling_model() is m and m.name == th.SAMPLING  # registered once
    df = ht.simulate(m, [0.0, 1.0, 2.5, 4.0], params=pd.DataFrame({"swab": [1.0, 10.0]}))
    wide = df.pivot(index="time", columns="subject_id", values="log10_V")
    assert np.allclose(wide[1] - wide[0], 1.0, atol=1e-9)  # log10(10): the same infection, sampled 10x better
    plain = ht.simulate("baccam2006", [0.0, 1.0, 2.5, 4.0])  # one patient at the defaults
    assert np.allclose(plain["log10_V"].to_numpy(), wide[0].to_numpy(), atol=1e-9)


@pytest.mark.slow  # ~30 s: the fold-1 twin's simulations, a tiny surrogate, side-by-side timing
def test_twin_surrogate_arch_tiny(tmp_path):
    import bench_surrogate

    if not bench_surrogate.TWIN.is_dir():
        pytest.skip("the fold-1 twin of challenger_folds.py is not in experiments/results")
    import bench_surrogate_twin_arch

    rows = bench_surrogate_twin_arch.main(n_train=64, configs=("grid:8:32:2",), out=tmp_path, stem="tiny",
                                          n_patients=40, held_seed=98)
    r = rows[0]
    assert r["n_patients"] == 40 and r["median"] >= 0 and r["held_seed"] == 98
    assert r["x_exact_run"] == pytest.approx(r["exact_run_s"] / r["run_s"])
    assert r["x_exact_arrays_mean_sd"] == pytest.approx(r["exact_arrays_s"] / r["arrays_mean_sd_s"])


@pytest.mark.slow  # experiment scripts run in `make test-all` (default suite time)
def test_surrogate_recipe_benchmarks_tiny(tmp_path):
    import bench_surrogate_equal_data

    rows = bench_surrogate_equal_data.main(("grid:16:64:2", "timed:16:64:2:1e-6:2"), n_train=128, n_held=64,
                                           out=tmp_path, stem="tiny", with_gp=True)
    assert [r["recipe"] for r in rows] == ["grid:16:64:2", "timed:16:64:2:1e-6:2", "gaussian_process"]
    lines = (tmp_path / "tiny.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(x)["median"] >= 0 for x in lines)
    assert rows[-1]["n_train"] == 128 and rows[-1]["p95"] >= rows[-1]["median"]


def test_later_sample_reference_is_the_training_distribution_by_day():
    import numpy as np
    import pandas as pd
    import kissler_forecast as kf

    rows = []  # each training person: first positive at day 0, then day 1 quantified at 3+i, day 2 negative
    for i in range(5):
        rows += [(f"t{i}", 0.0, 6.0, False), (f"t{i}", 1.0, 3.0 + i, False), (f"t{i}", 2.0, 2.0, True),
                 (f"t{i}", 30.0 + i, 2.0, True)]
    obs = pd.DataFrame(rows, columns=["subject_id", "time", "value", "censored"]).assign(observable="log10_V",
                                                                                           lloq=2.0)
    early = pd.DataFrame({"subject_id": ["new"], "time": [4.0], "value": [7.0], "censored": [False],
                          "observable": "log10_V", "lloq": 2.0})
    late = pd.DataFrame({"subject_id": "new", "time": [5.0, 6.0, 40.0], "observable": "log10_V"})
    out = kf.later_sample_reference(obs, early, late, 1).set_index("time")
    # one day after the k-th sample: the training people's day-1 values 3..7, whatever this person showed
    assert out.loc[5.0, "median"] == 5.0 and out.loc[5.0, "lower"] == np.quantile([3, 4, 5, 6, 7], 0.05)
    assert out.loc[6.0, ["lower", "median", "upper"]].tolist() == [2.0, 2.0, 2.0]  # day 2: all negative
    assert out.loc[40.0, "median"] == 2.0  # beyond the last day class: the pooled "15 days or more"


@pytest.mark.slow  # 15-40 s on 2 cores: `make test-all` (keeps the default run near the ~3 min budget)
def test_early_sample_boosting_learns_what_the_first_sample_says_and_the_day_reference_cannot():
    """Training people whose later samples sit at their first value (a person-level signal): the gradient-boosting
    reference forecasts each new person near their own level, the by-day reference gives everyone the same."""
    import numpy as np
    import pandas as pd
    import kissler_forecast as kf

    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        level = rng.uniform(3.0, 8.0)
        rows += [(f"t{i}", 0.0, level, False)] + [(f"t{i}", float(d), level + rng.normal(0, 0.1), False)
                                                   for d in range(1, 6)]
    obs = pd.DataFrame(rows, columns=["subject_id", "time", "value", "censored"]).assign(observable="log10_V",
                                                                                           lloq=2.0)
    early = pd.DataFrame({"subject_id": ["lo", "hi"], "time": 0.0, "value": [3.5, 7.5], "censored": False,
                          "observable": "log10_V", "lloq": 2.0})
    late = pd.DataFrame({"subject_id": ["lo", "lo", "hi", "hi"], "time": [2.0, 4.0, 2.0, 4.0], "observable": "log10_V"})
    for point in ("median", "mean"):
        out = kf.early_sample_boosting(obs, early, late, 1, seed=0, point=point).set_index("subject_id")
        assert np.allclose(out.loc["lo", "median"], 3.5, atol=0.5) and np.allclose(out.loc["hi", "median"], 7.5, atol=0.5)
        assert bool((out["lower"] <= out["upper"]).all())
    flat = kf.later_sample_reference(obs, early, late, 1).set_index("subject_id")
    assert np.allclose(flat.loc["lo", "median"].to_numpy(), flat.loc["hi", "median"].to_numpy())
    with pytest.raises(ValueError, match="point must be"):
        kf.early_sample_boosting(obs, early, late, 1, seed=0, point="mode")


def test_fine_tuning_can_release_parameters_the_shipped_twin_fixed():
    import pytest
    import torch
    import kissler_forecast as kf
    from hybridtwin.checkpoint import load

    shipped = load(kf.CHECKPOINT)
    twin = kf.offset_estimated(kf.CHECKPOINT, ("r", "delta_T"))
    assert {"r", "delta_T"} <= set(twin.population_names) and "r" not in twin.config.fixed
    assert twin.known_population == {}  # the offset distribution is estimable too
    # it starts where the shipped twin is: same parameters for the same patient draw
    z = shipped.mu.detach()[None].repeat(3, 1) + 0.1 * torch.arange(3, dtype=shipped.mu.dtype)[:, None]
    cohort = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        assert torch.allclose(twin.theta(z, cohort), shipped.theta(z, cohort))
    with pytest.raises(ValueError, match="not fixed in the shipped twin"):
        kf.offset_estimated(kf.CHECKPOINT, ("p",))


@pytest.mark.parametrize("name", ["K_V", "r"])
def test_fine_tuning_can_make_a_population_parameter_per_person(shared_data, name):
    """``random=("K_V",)`` estimates the shipped twin's population carrying capacity per person (``("r",)``: the
    CD8+ expansion rate, fixed in the shipped twin): the fine-tune starts at the shipped twin (same encoder outputs
    for the shipped parameters, the same trajectories at the prior mean), with the new random effect's typical
    value at the shipped one and its between-person SD at omega_init."""
    import math

    import torch
    import kissler_forecast as kf
    from hybridtwin.checkpoint import load

    shipped = load(kf.CHECKPOINT)
    twin = kf.offset_estimated(kf.CHECKPOINT, random=(name,))
    assert name in twin.patient_names and name not in twin.population_names and name not in twin.config.fixed
    i = twin.patient_names.index(name)
    was = (shipped.mu_population[shipped.population_names.index(name)] if name in shipped.population_names
           else shipped.z_default[shipped.model.parameter_space.names.index(name)])
    assert float(twin.mu[i]) == float(was)
    assert math.isclose(float(twin.log_omega[i].exp()), twin.config.omega_init, rel_tol=1e-6)
    data = kf.kissler_data(shared_data / "kissler2021_nba_ct")
    data = data.subset(list(data.subject_ids)[:4])
    b_new, b_old = twin.dataset(data).batch(), shipped.dataset(data).batch()
    keep = [twin.patient_names.index(n) for n in shipped.patient_names]
    with torch.no_grad():
        (m1, s1), (m0, s0) = twin.posterior(b_new), shipped.posterior(b_old)
        assert torch.allclose(m1[:, keep], m0) and torch.allclose(s1[:, keep], s0)
        assert torch.allclose(m1[:, i], twin.mu[i].expand(4))  # the new output starts at the prior
        assert torch.equal(twin.theta(m1, b_new.cohort), shipped.theta(m0, b_old.cohort))
    with pytest.raises(ValueError, match="not held at one value"):
        kf.offset_estimated(kf.CHECKPOINT, random=("p",))


def test_fine_tuning_with_a_closure_starts_at_the_shipped_mechanistic_twin(shared_data):
    """``closure=True`` adds the clearance closure to the shipped twin; its network starts at zero output, so the
    twin's trajectories are the shipped model's until fine-tuning moves it; a network that outputs something else
    changes them (the closure is wired in)."""
    import torch
    import kissler_forecast as kf

    plain = kf.offset_estimated(kf.CHECKPOINT)
    hybrid = kf.offset_estimated(kf.CHECKPOINT, closure=True)
    assert len(hybrid.config.closures) == 1 and hybrid.config.closures[0].target == "c"
    assert not plain.config.closures
    data = kf.kissler_data(shared_data / "kissler2021_nba_ct")
    data = data.subset(list(data.subject_ids)[:3])
    batch = hybrid.dataset(data).batch()
    with torch.no_grad():
        z = hybrid.prior(batch.covariates)[0]
        theta = hybrid.theta(z, batch.cohort)
        assert torch.equal(theta, plain.theta(z, batch.cohort))
        g_plain, s_plain = plain.observables_at(theta, batch)
        g_hybrid, s_hybrid = hybrid.observables_at(theta, batch)
        assert (s_plain == 0).all() and (s_hybrid == 0).all()
        assert torch.allclose(g_hybrid, g_plain, rtol=0, atol=1e-9)
        last = hybrid.dynamics.closures[0].net.net[-1]
        last.bias.fill_(0.5)  # clearance e^0.5 times faster: the virus falls sooner
        g_faster, _ = hybrid.observables_at(theta, batch)
    assert (g_faster - g_plain).abs().max() > 0.1


def test_fine_tuning_with_missed_samples_starts_at_the_shipped_twin_plus_the_new_term(shared_data):
    """``miss=0.25`` adds a missed-sample probability to the shipped twin: every shipped weight is kept, the new
    term starts at 0.25, a quantified row's log-likelihood drops by exactly log(1 - 0.25) and a negative row's
    rises (it may now be a miss)."""
    import math

    import torch
    import kissler_forecast as kf
    from hybridtwin.estimation.likelihood import solve_observables

    plain = kf.offset_estimated(kf.CHECKPOINT)
    missed = kf.offset_estimated(kf.CHECKPOINT, miss=0.25)
    assert missed.config.miss == {"log10_V": 0.25} and not plain.config.miss
    for key, value in plain.state_dict().items():
        assert torch.equal(missed.state_dict()[key], value), key
    data = kf.kissler_data(shared_data / "kissler2021_nba_ct")
    data = data.subset(list(data.subject_ids)[:3])
    batch = missed.dataset(data).batch()
    with torch.no_grad():
        g, ok = solve_observables(missed, missed.prior(batch.covariates)[0], batch)
        args = (g, batch.values, batch.observable, batch.cohort, batch.censored, batch.lloq, batch.mask)
        diff = missed.observation.log_likelihood(*args) - plain.observation.log_likelihood(*args)
    assert bool(ok.all())
    quantified = batch.mask & ~batch.censored
    assert torch.allclose(diff[quantified], torch.tensor(math.log(0.75), dtype=diff.dtype))
    assert bool((diff[batch.mask & batch.censored] > 0).all())


def test_twin_informed_boosting_uses_a_twin_forecast_that_knows_the_answer(monkeypatch):
    """Later values that the early samples cannot predict (random per person) but a twin forecasts exactly: the
    boosting that sees the twin's forecast recovers them; the plain boosting cannot."""
    import numpy as np
    import pandas as pd
    import kissler_forecast as kf

    rng = np.random.default_rng(0)

    def people(prefix, n):
        rows = []
        for i in range(n):
            rows.append((f"{prefix}{i}", 0.0, 5.0, False))
            rows += [(f"{prefix}{i}", float(d), float(rng.uniform(3.0, 8.0)), False) for d in range(1, 11)]
        return pd.DataFrame(rows, columns=["subject_id", "time", "value", "censored"]).assign(
            observable="log10_V", lloq=2.0)

    train, test = people("t", 40), people("h", 10)
    cov = pd.DataFrame({"subject_id": sorted(set(train["subject_id"]) | set(test["subject_id"])), "age": np.nan})

    def oracle(twin, c, early, late, method, seed):
        out = late[["subject_id", "time", "observable"]].copy()
        v = late["value"].to_numpy()
        return out.assign(median=v, lower50=v - 0.5, upper50=v + 0.5, lower=v - 1.0, upper=v + 1.0)

    monkeypatch.setattr(kf, "twin_rows", oracle)
    early, late = kf.split_quantified(test, 1)
    informed = kf.twin_informed_boosting(None, cov, train, early, late, 1, 0, oracle(None, cov, early, late, "", 0))
    plain = kf.early_sample_boosting(train, early, late, 1, 0, point="mean")
    rmse = lambda pred: float(np.sqrt(np.mean((pred["median"].to_numpy() - late["value"].to_numpy()) ** 2)))  # noqa: E731
    assert rmse(informed) < 0.3 < 1.0 < rmse(plain), (rmse(informed), rmse(plain))


def test_blend_weight_is_chosen_on_the_fine_tuning_people_and_averages_quantiles(monkeypatch):
    """Two routes that miss every later sample by +1 and -1 log10: their equal blend is exact, so the weight
    chosen is 0.5; the blend averages each quantile; a route that is exact on its own gets the whole weight."""
    import numpy as np
    import pandas as pd
    import kissler_forecast as kf

    rows = []
    for i in range(4):
        rows += [(f"t{i}", 0.0, 6.0, False)] + [(f"t{i}", float(d), 7.0 - 0.3 * d, False) for d in range(1, 6)]
    obs = pd.DataFrame(rows, columns=["subject_id", "time", "value", "censored"]).assign(observable="log10_V",
                                                                                           lloq=2.0)
    cov = pd.DataFrame({"subject_id": [f"t{i}" for i in range(4)], "age": np.nan})
    offsets = {"map": 1.0, "library": -1.0}

    def fake_rows(twin, c, early, late, method, seed):
        assert set(early["subject_id"]) <= set(c["subject_id"]) and late["time"].min() >= 1.0
        out = late[["subject_id", "time", "observable"]].copy()
        centre = late["value"].to_numpy() + offsets[method]
        return out.assign(median=centre, lower50=centre - 0.5, upper50=centre + 0.5, lower=centre - 2.0,
                          upper=centre + 2.0 + (method == "map"))

    monkeypatch.setattr(kf, "twin_rows", fake_rows)
    w, curve = kf.blend_weight(None, cov, obs, 1, seed=0)
    assert w == 0.5 and curve[0.5] < 1e-12 and abs(curve[0.0] - 1.0) < 1e-12 and abs(curve[1.0] - 1.0) < 1e-12
    early, late = kf.split_quantified(obs, 1)
    blend = kf.vincentized(fake_rows(None, cov, early, late, "map", 0), fake_rows(None, cov, early, late, "library", 0),
                           0.25)
    assert np.allclose(blend["median"], late["value"] - 0.5) and np.allclose(blend["upper"], late["value"] + 1.75)
    offsets["map"] = 0.0
    assert kf.blend_weight(None, cov, obs, 1, seed=0)[0] == 1.0
    with pytest.raises(ValueError, match="different rows"):
        kf.vincentized(blend, blend.iloc[1:], 0.5)


def test_conformal_blend_bands_reach_their_nominal_coverage_on_new_people(monkeypatch):
    """Routes whose 90 % bands are far too wide (+-3 SD of normal scatter about a median that is right on average):
    calibrated on 300 fine-tuning people, the conformal blend's bands cover 90 % and 50 % of 300 new people's later
    samples (to sampling error) where the raw bands cover nearly all; the median is the blend's; the factors follow
    their definition on the calibration rows (the ceil((n + 1) level)-th smallest score)."""
    import numpy as np
    import pandas as pd
    import kissler_forecast as kf

    rng = np.random.default_rng(3)

    def people(prefix, n):
        rows = []
        for i in range(n):
            rows += [(f"{prefix}{i}", 0.0, 6.0, False)]
            rows += [(f"{prefix}{i}", float(d), 7.0 - 0.3 * d + rng.normal(), False) for d in range(1, 6)]
        return pd.DataFrame(rows, columns=["subject_id", "time", "value", "censored"]).assign(observable="log10_V",
                                                                                                lloq=-10.0)

    train, test = people("t", 300), people("h", 300)
    cov = pd.DataFrame({"subject_id": sorted(set(train["subject_id"]) | set(test["subject_id"])), "age": np.nan})

    def fake_rows(twin, c, early, late, method, seed):
        out = late[["subject_id", "time", "observable"]].copy()
        centre = 7.0 - 0.3 * late["time"].to_numpy() + (0.2 if method == "map" else -0.2)
        return out.assign(median=centre, lower50=centre - 1.0, upper50=centre + 1.0, lower=centre - 3.0,
                          upper=centre + 3.0)

    monkeypatch.setattr(kf, "twin_rows", fake_rows)
    early, late = kf.split_quantified(test, 1)
    a, b = fake_rows(None, cov, early, late, "map", 0), fake_rows(None, cov, early, late, "library", 0)
    info = {}
    pred = late.merge(kf.blend_conformal_rows(None, cov, a, b, train, 1, 0, info), on=["subject_id", "time",
                                                                                         "observable"])
    w = info["blend_weight"]
    assert abs(w - 0.5) <= 0.1 + 1e-12  # the two routes' biases cancel (up to the scatter of the calibration rows)
    assert np.allclose(pred["median"], 7.0 - 0.3 * pred["time"] + 0.4 * w - 0.2)
    v = pred["value"]
    cover = lambda lo, hi: float(np.mean((v >= pred[lo]) & (v <= pred[hi])))  # noqa: E731
    assert abs(cover("lower", "upper") - 0.90) < 0.03 and abs(cover("lower50", "upper50") - 0.50) < 0.04
    raw = kf.vincentized(a, b, w).merge(late, on=["subject_id", "time", "observable"])
    assert float(np.mean(np.abs(raw["value"] - raw["median"]) <= 3.0)) > 0.99
    # the factors: the 90 % / 50 % quantiles of |value - median| / 3 on the calibration rows
    t_early, t_late = kf.split_quantified(train, 1)
    score = np.abs(t_late["value"] - (7.0 - 0.3 * t_late["time"] + 0.4 * w - 0.2)).to_numpy() / 3.0
    n, s = len(score), np.sort(score)
    assert info["conformal_f90"] == pytest.approx(s[int(np.ceil(0.9 * (n + 1))) - 1])
    assert info["conformal_f50"] == pytest.approx(s[int(np.ceil(0.5 * (n + 1))) - 1])
    with pytest.raises(ValueError, match="no quantified calibration rows"):
        kf.conformal_scale(a, late.assign(censored=True))


def test_kissler_diagnosis_curve_matches_the_library_and_shapes_are_measured_right():
    """The diagnosis integrates sarscov2_cd8 by scipy independently of the library: the two agree at the published
    defaults; its shape summary reads rise and decline rates off a curve with known ones; the per-person data shapes
    follow their definitions on a hand-made table."""
    import numpy as np
    import pandas as pd

    import hybridtwin as ht
    import kissler_diagnosis as kd

    model = ht.models.get("sarscov2_cd8")
    p = {q.name: q.default for q in model.parameter_space}
    curve = kd.cd8_curve(p, t_end=30.0, step=0.5)
    days = [2.0, 6.0, 10.0, 15.0, 20.0]  # (later V falls below 1e-6 copies/ml, where the library's atol rules)
    ref = ht.simulate("sarscov2_cd8", days, params=p, rtol=1e-9)
    ref = ref.set_index("time")["log10_V"]
    got = curve.set_index("day").loc[days, "log10_V"]
    assert np.allclose(got.to_numpy(), ref.loc[days].to_numpy(), atol=1e-5)

    # a piecewise-linear log10 curve: limit 2 reached on day 2, +1/day to 8 on day 8, then -0.5/day
    d = np.arange(0.0, 30.01, 0.01)
    y = np.where(d <= 8.0, d, 8.0 - 0.5 * (d - 8.0))
    s = kd.curve_shape(pd.DataFrame({"day": d, "log10_V": y, "T_over_T0": 1.0}), lod=2.0)
    assert s["peak_day"] == 8.0 and s["peak_log10"] == 8.0
    assert abs(s["day_at_limit"] - 2.0) < 0.02 and abs(s["rise_per_day"] - 1.0) < 0.01
    assert abs(s["day_below_limit"] - 20.0) < 0.02 and abs(s["decline_per_day"] - 0.5) < 0.01

    obs = pd.DataFrame({"subject_id": ["a"] * 4 + ["b"] * 2, "time": [0.0, 2.0, 3.0, 6.0, 0.0, 1.0],
                        "value": [5.0, 7.0, 2.0, 4.0, 3.0, 2.0], "censored": [False, False, True, False, False, True]})
    people = kd.data_shapes(obs, lod=2.0).set_index("subject_id")
    assert people.loc["a", "days_to_max"] == 2.0 and people.loc["a", "max_log10"] == 7.0
    assert people.loc["a", "last_positive_day"] == 6.0 and people.loc["a", "decline_per_day"] == (7.0 - 2.0) / 4.0
    assert people.loc["b", "last_positive_day"] == 0.0 and np.isnan(people.loc["b", "decline_per_day"])


def test_kissler_floor_scores_every_later_sample_as_reported(shared_data, monkeypatch):
    """A learner that forecasts far below every limit is clipped to the limit, so its pooled RMSE must be the RMS
    distance of the reported later samples (negatives at their limit) from their limits, over every fold's rows."""
    import numpy as np
    import pandas as pd
    from sklearn.dummy import DummyRegressor

    import kissler_floor as kfl
    import kissler_forecast as kf

    monkeypatch.setattr(kfl, "learners", lambda seed=0: {
        "below": lambda: DummyRegressor(strategy="constant", constant=-100.0)})
    data = kf.kissler_data(shared_data / "kissler2021_nba_ct")
    ids = list(data.subject_ids)[:30]
    obs = data.observations[data.observations["subject_id"].isin(set(ids))]
    table = kfl.floor(obs, ids, ks=(1, 3), n_folds=3)
    for k in (1, 3):
        late = [kf.split_quantified(obs[obs["subject_id"].isin(set(h))], k)[1] for h in kf.folds(ids, 3, 0)]
        late = pd.concat(late)
        d = np.where(late["censored"], 0.0, late["value"] - late["lloq"])
        assert len(late) > 20 and (d > 0).any()
        assert table.loc["below", k] == pytest.approx(float(np.sqrt(np.mean(d ** 2))), rel=1e-12)
    assert "| 1 | 0.50 |" in kfl.report(table)


def test_kissler_forecast_writes_person_scores(tmp_path, shared_data):
    """The per-person sums pool back to each (fold, k, method)'s scores, and --merge keeps other methods' people."""
    import numpy as np
    import pandas as pd

    import kissler_forecast as kf

    path = shared_data / "kissler2021_nba_ct"
    r = kf.main(path=path, out=tmp_path, n_people=12, n_folds=2, ks=(1, 2), only=["LOCF", "population template"])
    people = pd.read_csv(tmp_path / "kissler_forecast_people.csv", dtype={"subject_id": str})
    assert len(r["rows"]) == 8
    for row in r["rows"]:
        g = people[(people["fold"] == row["fold"]) & (people["k"] == row["k"]) & (people["method"] == row["method"])]
        assert len(g) == row["n_people"] and g["n_rows"].sum() == row["n_rows"]
        assert np.sqrt(g["sse_reported"].sum() / g["n_rows"].sum()) == pytest.approx(row["rmse_reported"], rel=1e-12)
        assert np.sqrt(g["sse_quantified"].sum() / g["n_quantified"].sum()) == pytest.approx(row["rmse"], rel=1e-12)
    kf.main(path=path, out=tmp_path, n_people=12, n_folds=2, ks=(1,), only=["LOCF"], merge=True)
    again = pd.read_csv(tmp_path / "kissler_forecast_people.csv", dtype={"subject_id": str})
    kept = again[again["method"] == "population template"]
    assert len(kept) == len(people[people["method"] == "population template"])
    assert set(again.loc[again["method"] == "LOCF", "k"]) == {1}


def test_kissler_noise_check_needs_the_fold_twins(tmp_path, shared_data):
    import kissler_noise_check as nc

    with pytest.raises(SystemExit, match="fold twins missing"):
        nc.run(cache=tmp_path, out=tmp_path)
    text = nc.summarise([{"route": "map", "noise_sd": None, "fitted_noise_sd": [1.4, 1.7], "k": 5, "n_people": 14,
                          "rmse_reported": 0.5, "coverage90_reported": 1.0},
                         {"route": "map", "noise_sd": 0.7, "fitted_noise_sd": [1.4, 1.7], "k": 5, "n_people": 14,
                          "rmse_reported": 0.6, "coverage90_reported": 1.0}], 200)
    assert "| map | fitted | 5 | 14 | 0.500 |" in text and "| map | 0.7 | 5 |" in text and "1.40-1.70" in text


@pytest.mark.slow  # ~1 min; needs the fold twins kissler_forecast.py caches (gitignored)
def test_kissler_noise_check_fitted_noise_reproduces_the_forecast(tmp_path, shared_data):
    import kissler_noise_check as nc
    from _common import RESULTS

    cache = RESULTS / "kissler_forecast"
    if not (cache / "fold4_twin" / "weights.pt").is_file():
        pytest.skip("kissler_forecast fold twins not cached here")
    rows = nc.run(noise=(None,), ks=(5,), routes=("map",), cache=cache, out=tmp_path)
    people = json.loads((RESULTS / "kissler_forecast_people.json").read_text())["rows"]
    ref = [r for r in people if r["k"] == 5 and r["method"] == "twin fine-tuned (MAP)"]
    n = sum(r["n_rows"] for r in ref)
    pooled = math.sqrt(sum(r["n_rows"] * r["rmse_reported"] ** 2 for r in ref) / n)
    assert rows[0]["rmse_reported"] == pytest.approx(pooled, abs=0.02)
