"""Experiments 4a, 4c, 4d: personalising new patients of a known virtual population.

a. ``vaccine_asc`` virtual cohort (default 1,200 subjects, 3 cohorts with different boost days, covariate
   distributions, sampling densities and assay scale/offset; covariate effects on beta_S, beta_L and
   delta_Ab). A twin is trained on 70 % of the subjects (Lightning, `training/`). On the held-out 20 %:
   - R^2 of recovered vs true per-patient parameters (log scale), from covariates only and from covariates +
     two early observations (the baseline sample plus the first two after it), next to the R^2 of an oracle
     that knows the true population model (MAP under the truth);
   - error of the predicted later observations (RMSE of the predictive median vs the measurements) of the
     twin vs the oracle;
   - coverage of the twin's 90 % predictive intervals on the later observations.
c. Speed: encoder personalisation of 1,000 new patients (a fresh cohort from the same population) vs per-patient
   MAP (L-BFGS on the same model and data, all patients in one batched optimisation -- the fastest way to
   run it), times and ratio, and the error ratio on later observations.
d. Cost of training (a): wall time and peak memory; the same script runs on a GPU (``accelerator="auto"``).

``main(**kwargs)`` runs it (small settings in tests); results go to experiments/results/personalisation.{json,md}
with a figure of recovered vs true parameters.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import torch

from _common import (RESULTS, OracleTwin, covariates_with_cohort, early_late, later_error, r2, test_split,
                     train_twin)
from hybridtwin.virtual import make_virtual_cohort
from hybridtwin.personalise import Posterior, _tables, posterior
from hybridtwin.twin import TwinConfig

# Parameters that do not vary between patients are population-level; those that are structurally not identifiable
# from antibody titres alone (antigen kinetics, memory capacity and rate, naive ASC generation, long-lived ASC decay
# over a 180-day window: they trade off with beta_S/beta_L) are fixed at their published/default values, as is
# usual in NLME practice.
TWIN = dict(model="vaccine_asc", fixed=["delta_Ag", "K_Ag", "rho_M", "M_max", "alpha_S", "alpha_L", "delta_L"],
            cohort_calibration=["log10_Ab"], log10_covariates=["baseline_marker"],  # a concentration: log scale
            noise={"log10_Ab": "additive"}, n_samples=2, covariate_penalty=0.05,
            solver={"rtol": 1e-4, "atol": 1e-4, "max_steps": 2000},
            encoder={"hidden": 64, "set_dim": 32})
FRACTIONS = (0.7, 0.1, 0.2)


def _personalise(twin, data, obs: pd.DataFrame, method: str, **kw):
    """Posterior of every subject of ``data`` given ``obs``; returns (posterior, seconds, covariates)."""
    cov = covariates_with_cohort(data)
    ds, ids = _tables(twin, cov, obs, data.doses)
    batch = ds.batch()
    t0 = time.perf_counter()
    post = posterior(twin, batch, method, **kw)
    return post, time.perf_counter() - t0, cov


def _true_log_params(data, ids, names) -> pd.DataFrame:
    tp = data.true_parameters.set_index("subject_id").loc[ids]
    return np.log(tp[names])


def _est_log_params(twin, post: Posterior, names) -> pd.DataFrame:
    theta = twin.theta(post.mean)
    idx = [twin.model.parameter_names.index(n) for n in names]
    return pd.DataFrame(np.log(theta[:, idx].detach().numpy()), columns=names)


def main(n_subjects: int = 1200, n_cohorts: int = 3, max_epochs: int = 150, batch_size: int = 64, lr: float = 1e-2,
         n_new: int = 1000, n_samples: int = 100, seed: int = 0, out_dir=RESULTS, patience: int = 25,
         tag: str = "personalisation", twin_overrides: dict | None = None) -> dict:
    out_dir = __import__("pathlib").Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_spec = {"model": "vaccine_asc", "n_subjects": n_subjects, "n_cohorts": n_cohorts, "seed": seed,
                 "fractions": list(FRACTIONS), "split_seed": seed}
    trainer = {"max_epochs": max_epochs, "batch_size": batch_size, "lr": lr, "patience": patience, "seed": seed,
               "val_n_samples": 8}  # a less noisy validation ELBO for early stopping
    twin, run_dir, train_s, rss, gpu = train_twin(tag, data_spec, {**TWIN, **(twin_overrides or {})}, trainer,
                                                  out_dir / "runs")
    data = make_virtual_cohort("vaccine_asc", n_subjects=n_subjects, n_cohorts=n_cohorts, seed=seed)
    test = data.subset(test_split(data, FRACTIONS, seed))
    ids = test.covariates["subject_id"].tolist()
    early, late = early_late(test, 2)
    names = [n for n in ["beta_S", "beta_L", "delta_S", "delta_Ab"] if n in twin.patient_names]
    truth = _true_log_params(data, ids, names)
    effects = set(data.meta["ground_truth"]["effects"]["parameter"])
    result = {"train_seconds": train_s, "peak_rss_mb": rss, "peak_gpu_mb": gpu, "run_dir": str(run_dir),
              "n_train": int(round(FRACTIONS[0] * n_subjects)), "n_test": len(ids), "params": {}}
    oracle = OracleTwin.from_card(twin.card()).eval()
    oracle.set_truth(data, ids)
    fits = {}
    for label, model, obs, method in (("covariates_only", twin, early.iloc[0:0], "encoder"),
                                      ("two_early_obs", twin, early, "encoder"),
                                      ("two_early_obs_map", twin, early, "map"),
                                      ("oracle_two_early_obs", oracle, early, "map")):
        post, secs, cov = _personalise(model, test, obs, method)
        fits[label] = (post, model)
        est = _est_log_params(model, post, names)
        for n in names:
            d = result["params"].setdefault(n, {"has_covariate_effect": n in effects})
            d[label] = r2(est[n].to_numpy(), truth[n].to_numpy())
            d[f"{label}_corr2"] = float(np.corrcoef(est[n].to_numpy(), truth[n].to_numpy())[0, 1] ** 2)
    rows = late[["subject_id", "time", "observable"]]
    for label in ("two_early_obs", "oracle_two_early_obs"):
        post, model = fits[label]
        pred, _ = model.predict(covariates_with_cohort(test), early, test.doses, times=rows, given=post, n_samples=n_samples,
                                seed=seed)
        result[f"later_{label}"] = later_error(pred, late)
    result["error_ratio_twin_over_oracle"] = result["later_two_early_obs"]["rmse"] / result["later_oracle_two_early_obs"]["rmse"]
    result["coverage_90"] = result["later_two_early_obs"]["coverage"]
    # c. speed: a fresh cohort of new patients from the same population
    new = make_virtual_cohort("vaccine_asc", n_subjects=n_new, n_cohorts=n_cohorts, seed=seed + 1000)
    e_new, l_new = early_late(new, 2)
    with torch.no_grad():
        _personalise(twin, new.subset(new.subject_ids[:8]), e_new[e_new.subject_id.isin(new.subject_ids[:8])], "encoder")
    p_enc, t_enc, cov_new = _personalise(twin, new, e_new, "encoder")
    p_map, t_map, _ = _personalise(twin, new, e_new, "map")
    speed = {"n_patients": n_new, "encoder_seconds": t_enc, "map_seconds": t_map, "speedup": t_map / t_enc}
    rows_new = l_new[["subject_id", "time", "observable"]]
    for label, post in (("encoder", p_enc), ("map", p_map)):
        pred, _ = twin.predict(cov_new, e_new, new.doses, times=rows_new, given=post, n_samples=n_samples, seed=seed)
        speed[f"later_{label}"] = later_error(pred, l_new)
    speed["error_ratio_encoder_over_map"] = speed["later_encoder"]["rmse"] / speed["later_map"]["rmse"]
    result["speed"] = speed
    result["population"] = twin.population_table().to_dict("records")
    _write(result, fits, truth, names, out_dir, tag)
    return result


def _write(result: dict, fits: dict, truth: pd.DataFrame, names: list, out_dir, tag: str) -> None:
    (out_dir / f"{tag}.json").write_text(json.dumps(result, indent=2, default=float))
    lines = [f"# {tag}", "", f"training: {result['train_seconds']:.0f} s, peak RSS {result['peak_rss_mb']:.0f} MB"
             + (f", peak GPU {result['peak_gpu_mb']:.0f} MB" if result["peak_gpu_mb"] else ""), "",
             "R^2 = 1 - SSE/SST of log parameters (squared correlation in brackets)", "",
             "| parameter | covariate effect | twin encoder, covariates only | twin encoder, + 2 early obs | "
             "twin MAP, + 2 early obs | oracle (true model, MAP), + 2 early obs |",
             "|---|---|---|---|---|---|"]
    for n, d in result["params"].items():
        cell = lambda k: f"{d[k]:.3f} ({d[k + '_corr2']:.3f})"
        lines.append(f"| {n} | {d['has_covariate_effect']} | {cell('covariates_only')} | {cell('two_early_obs')} | "
                     f"{cell('two_early_obs_map')} | {cell('oracle_two_early_obs')} |")
    a, o = result["later_two_early_obs"], result["later_oracle_two_early_obs"]
    s = result["speed"]
    lines += ["", f"later observations (n={a['n_later_uncensored']}): twin RMSE {a['rmse']:.3f}, oracle RMSE {o['rmse']:.3f}, "
              f"ratio {result['error_ratio_twin_over_oracle']:.3f}; 90% interval coverage {a['coverage']:.3f}", "",
              f"speed ({s['n_patients']} new patients): encoder {s['encoder_seconds']*1e3:.1f} ms, MAP {s['map_seconds']:.1f} s, "
              f"speed-up {s['speedup']:.0f}x; later-observation RMSE encoder {s['later_encoder']['rmse']:.3f} vs MAP "
              f"{s['later_map']['rmse']:.3f} (ratio {s['error_ratio_encoder_over_map']:.3f})"]
    (out_dir / f"{tag}.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4))
        for ax, n in zip(np.atleast_1d(axes), names):
            for label, colour in (("two_early_obs", "C0"), ("oracle_two_early_obs", "C1")):
                post, model = fits[label]
                est = _est_log_params(model, post, [n])[n]
                ax.scatter(truth[n], est, s=6, alpha=0.5, color=colour,
                           label=f"{'twin' if label == 'two_early_obs' else 'oracle'} R²={result['params'][n][label]:.2f}")
            lim = [truth[n].min(), truth[n].max()]
            ax.plot(lim, lim, "k--", lw=1)
            ax.set_title(f"log {n}", fontsize=10)
            ax.set_xlabel("true", fontsize=8)
            ax.set_ylabel("recovered", fontsize=8)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / f"{tag}.png", dpi=110)
        plt.close(fig)
    except Exception as exc:  # a figure must not lose the numbers
        print(f"figure not written: {exc!r}")
    print("\n".join(lines))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=1200)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--new", type=int, default=1000)
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()
    main(n_subjects=a.subjects, max_epochs=a.epochs, n_new=a.new, out_dir=a.out)
