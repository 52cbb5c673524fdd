"""Experiment 4b: a missing mechanism, learned by a neural closure, tested on an unseen regimen.

Truth: ``vaccine_asc`` virtual patients, whose boost response depends on memory B cells (short- and long-lived
ASC are generated at ``(alpha + beta M) stim``). Three twins are trained on prime-boost data with the boost at
day 21, 28 or 35 (one cohort each):

- **mechanistic (misspecified)**: ``vaccine_asc_nomemory`` -- the same model without the memory term
  (ASC generated at ``alpha stim``): it cannot make a boost stronger than the prime;
- **hybrid**: the misspecified model plus non-negative neural closures on dS/dt and dL/dt whose inputs are the
  memory ``M`` and antigen ``Ag`` (the missing term's true form is ``beta M Ag / (K_Ag + Ag)``);
- **black box**: a neural ODE on the same five states with no mechanism.

Test: new patients on an unseen regimen, boost at day 90. Each twin personalises a patient from the observations
before the boost and predicts the rest; the error is the RMSE of the predicted median log10 antibody titre against
the noise-free truth after the boost. Target: hybrid <= 0.5 x mechanistic and <= 0.5 x black box. A figure shows
the learned closure against the true missing term.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import RESULTS, covariates_with_cohort, train_twin
import hybridtwin as ht
from hybridtwin.virtual import make_virtual_cohort
from hybridtwin.models import Parameter, log10_observable

TRAIN_BOOSTS = (21.0, 28.0, 35.0)
TEST_BOOST = 90.0
SOLVER = {"rtol": 1e-4, "atol": 1e-4, "max_steps": 3000}


def nomemory_model() -> ht.Model:
    """``vaccine_asc`` without memory-driven ASC generation (registered as ``vaccine_asc_nomemory``)."""
    if "vaccine_asc_nomemory" in ht.models.available():
        return ht.models.get("vaccine_asc_nomemory")
    base = ht.models.get("vaccine_asc")
    params = [p for p in base.parameter_space if p.name not in ("beta_S", "beta_L")]
    params = [Parameter(p.name, p.default * (30.0 if p.name in ("alpha_S", "alpha_L") else 1.0), p.lower, p.upper,
                        p.transform, p.unit, p.role, p.description) for p in params]

    def rhs(t, s, p):
        stim = s.Ag / (p.K_Ag + s.Ag)
        return {"Ag": -p.delta_Ag * s.Ag, "M": p.rho_M * stim * (1.0 - s.M / p.M_max),
                "S": p.alpha_S * stim - p.delta_S * s.S, "L": p.alpha_L * stim - p.delta_L * s.L,
                "Ab": p.theta_S * s.S + p.theta_L * s.L - p.delta_Ab * s.Ab}

    model = ht.Model("vaccine_asc_nomemory", base.state_names, params, rhs, dict(base.initial),
                     observables={"log10_Ab": log10_observable("Ab")},
                     interventions=[iv for k, iv in base.interventions.items() if k != iv.target], time_unit="day",
                     description="vaccine_asc without memory-driven ASC generation (misspecified prior)",
                     default_t_end=180.0)
    return ht.models.register(model)


VARIANTS = {
    "mechanistic": dict(model="vaccine_asc_nomemory"),
    "hybrid": dict(model="vaccine_asc_nomemory", closures=[
        # inputs scaled to O(1) over their range in the data (M stays below ~0.6 after two doses, Ag <= ~1); the
        # patient's naive generation rate is an input too, so the learned term can differ between patients;
        # output scales of the order of the term to learn (ASC generation rates of the prime response)
        dict(target="S", inputs=["M", "Ag", "alpha_S"], constraint="nonnegative", scale=2e3,
             input_scale={"M": 0.5, "Ag": 0.5}, log_inputs=["alpha_S"], hidden=[32, 32], name="memory_S"),
        dict(target="L", inputs=["M", "Ag", "alpha_L"], constraint="nonnegative", scale=2.0,
             input_scale={"M": 0.5, "Ag": 0.5}, log_inputs=["alpha_L"], hidden=[32, 32], name="memory_L")]),
    "black_box": dict(model="vaccine_asc", black_box={"latent_dim": 4, "hidden": [64, 64],
                                                      "state_scale": {"Ag": 1.0, "M": 1.0, "S": 1e3, "L": 10.0, "Ab": 1e3}}),
}
COMMON = dict(population=None, cohort_calibration=["log10_Ab"], noise={"log10_Ab": "additive"}, n_samples=2,
              solver=SOLVER, closure_penalty=1e-4)


def _twin_cfg(variant: str) -> dict:
    cfg = {**COMMON, **VARIANTS[variant]}
    if variant == "black_box":
        cfg["population"] = []
    else:
        cfg["population"] = ["delta_Ag", "K_Ag", "rho_M", "M_max", "delta_L"]
    return cfg


def _test_cohort(n: int, seed: int):
    return make_virtual_cohort("vaccine_asc", n_subjects=n, n_cohorts=1, seed=seed,
                               regimens=((ht.Dose(0.0, 1.0, "vaccine"), ht.Dose(TEST_BOOST, 1.0, "vaccine")),),
                               obs_per_subject=((8, 12),))


def evaluate(twin, test, n_samples: int, seed: int, method: str = "encoder") -> dict:
    """Personalise from observations before the boost (``method``: encoder or map); RMSE of the predicted median vs
    the noise-free truth after it."""
    obs = test.observations
    before = obs[obs["time"] < TEST_BOOST]
    truth = test.observations[["subject_id", "time", "observable"]].assign(true=test.trajectories["value"].to_numpy())
    after = truth[(truth["time"] > TEST_BOOST) & (truth["true"] > 1.5)]
    cov = covariates_with_cohort(test).assign(cohort=twin.cohort_names[0])
    before = before.assign(cohort=twin.cohort_names[0])
    pred, _ = twin.predict(cov, before, test.doses, times=after[["subject_id", "time", "observable"]], n_samples=n_samples,
                           seed=seed, method=method)
    m = after.merge(pred, on=["subject_id", "time", "observable"])
    return {"rmse_after_boost": float(np.sqrt(np.mean((m["median"] - m["true"]) ** 2))), "n_points": int(len(m)),
            "coverage_of_truth": float(((m["true"] >= m["lower"]) & (m["true"] <= m["upper"])).mean())}


def plot_closure(twin, out: Path, truth_beta_S: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closure = next(c for c in twin.dynamics.closures if c.target == "S")
    K_Ag = float(ht.models.get("vaccine_asc").default_parameters()["K_Ag"])
    M = torch.linspace(0.0, 1.0, 60, dtype=twin.dtype)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for Ag, colour in ((1.0, "C0"), (0.3, "C1"), (0.05, "C2")):
        with torch.no_grad():  # at the population value of the patient input
            typical = float(twin.theta(twin.mu[None])[0, twin.model.parameter_names.index("alpha_S")])
            learned = closure.value({"M": M, "Ag": torch.full_like(M, Ag), "alpha_S": torch.full_like(M, typical)})
        ax.plot(M, learned, color=colour, label=f"learned, Ag = {Ag}")
        ax.plot(M, truth_beta_S * M * Ag / (K_Ag + Ag), "--", color=colour, label=f"true beta_S M stim, Ag = {Ag}")
    ax.set_xlabel("memory M")
    ax.set_ylabel("extra dS/dt (cells/day)")
    ax.set_title("closure on dS/dt vs the missing term", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(n_train: int = 360, n_test: int = 100, max_epochs: int = 80, batch_size: int = 40, lr: float = 1e-2,
         n_samples: int = 50, seed: int = 0, out_dir=RESULTS, variants=tuple(VARIANTS), tag: str = "missing_mechanism",
         evaluate_only: bool = False) -> dict:
    """Train (or, with ``evaluate_only``, reload the trained run folders of) each variant and evaluate it."""
    nomemory_model()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {"model": "vaccine_asc", "n_subjects": n_train, "n_cohorts": len(TRAIN_BOOSTS), "seed": seed,
            "fractions": [0.85, 0.15], "split_seed": seed,
            "options": {"regimens": tuple((ht.Dose(0.0, 1.0, "vaccine"), ht.Dose(b, 1.0, "vaccine")) for b in TRAIN_BOOSTS)}}
    test = _test_cohort(n_test, seed + 500)
    result = {"train_boost_days": list(TRAIN_BOOSTS), "test_boost_day": TEST_BOOST, "variants": {}}
    twins = {}
    previous_runs = json.loads((out_dir / f"{tag}.json").read_text())["variants"] if evaluate_only else {}
    for v in variants:
        if evaluate_only:
            twin, secs = ht.load(out_dir / "runs" / f"{tag}_{v}").eval(), previous_runs[v]["train_seconds"]
        else:
            twin, run_dir, secs, rss, _ = train_twin(f"{tag}_{v}", spec, _twin_cfg(v),
                                                     {"max_epochs": max_epochs, "batch_size": batch_size, "lr": lr,
                                                      "patience": 15, "seed": seed, "val_n_samples": 4}, out_dir / "runs")
        twins[v] = twin
        result["variants"][v] = {"train_seconds": secs, **evaluate(twin, test, n_samples, seed)}
        # the same comparison with per-patient MAP personalisation: it separates the dynamics from the encoder,
        # which never saw 90-day pre-boost windows in training
        result["variants"][v]["map"] = evaluate(twin, test, n_samples, seed, method="map")
        print(v, result["variants"][v], flush=True)
    previous = out_dir / f"{tag}.json"
    if set(variants) != set(VARIANTS) and previous.exists():  # a partial re-run keeps the other variants' results
        for v, d in json.loads(previous.read_text()).get("variants", {}).items():
            result["variants"].setdefault(v, {**d, "from_previous_run": True})
    r = result["variants"]
    if "hybrid" in r:
        for other in ("mechanistic", "black_box"):
            if other in r:
                result[f"hybrid_over_{other}"] = r["hybrid"]["rmse_after_boost"] / r[other]["rmse_after_boost"]
                if "map" in r["hybrid"] and "map" in r[other]:
                    result[f"hybrid_over_{other}_map"] = r["hybrid"]["map"]["rmse_after_boost"] / r[other]["map"]["rmse_after_boost"]
    if "hybrid" in twins:
        plot_closure(twins["hybrid"], out_dir / f"{tag}_closure.png",
                     make_virtual_cohort("vaccine_asc", 2, 1, seed=0).meta["ground_truth"]["population"]["beta_S"])
    (out_dir / f"{tag}.json").write_text(json.dumps(result, indent=2, default=float))
    lines = [f"# {tag}", "", f"train: boosts at days {TRAIN_BOOSTS}; test: boost at day {TEST_BOOST} (unseen)", "",
             "| twin | RMSE after boost, encoder (log10 Ab) | coverage of truth | RMSE after boost, MAP | train s |",
             "|---|---|---|---|---|"]
    for v, d in r.items():
        mp = f"{d['map']['rmse_after_boost']:.3f}" if "map" in d else "-"
        lines.append(f"| {v} | {d['rmse_after_boost']:.3f} | {d['coverage_of_truth']:.2f} | {mp} | {d['train_seconds']:.0f} |")
    lines += [""] + [f"{k}: {v:.3f}" for k, v in result.items() if k.startswith("hybrid_over")]
    (out_dir / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=360)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--evaluate-only", action="store_true", help="reload the trained run folders instead of training")
    a = ap.parse_args()
    main(n_train=a.train, max_epochs=a.epochs, out_dir=a.out, variants=tuple(a.variants), evaluate_only=a.evaluate_only)
