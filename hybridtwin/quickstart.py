"""The quickstart: the whole library in one run, ending with a report (``make quickstart``).

:func:`run_quickstart` (``hybridtwin quickstart``), each step timed and printed:

0. every built-in model simulated with its published defaults (one figure per model);
1. a multi-cohort virtual vaccine data set (``vaccine_asc``; 3 cohorts with different prime-boost schedules
   and assay calibrations; known ground truth), split by patient into training and held-out patients;
2. a hybrid twin: the mechanistic ``vaccine_asc`` model with a neural closure (antibody decay as a learned
   function of time since the prime) and an encoder from covariates and early observations, estimated by
   SAEM (standard errors) and amortised;
3. held-out patients personalised from their first two samples; forecasts with 90 % intervals scored per
   cohort and plotted against their data;
4. a surrogate of the twin (its own dynamics, closure included) over booster day x dose, certified against
   the twin's exact solve on fresh pairs;
5. a virtual booster trial on virtual patients drawn from the twin (booster at 3, 6 or 12 months vs none;
   endpoints: titre above a protective threshold at 18 months, and protected throughout months 6-18), run on
   the surrogate and checked arm by arm against the same trial on the twin's exact solve; a power curve; an
   Optuna search of the booster day for protection throughout months 6-18, confirmed by the twin's exact solve;
6. ``report.md`` + ``report.html`` with the figures and numbers.

``run_real_quickstart`` (``--data challenger2022``) gives the twin-fit part for SARS-CoV-2 viral load from the
pretrained checkpoint ``checkpoints/sarscov2_challenger`` (trained on 15 of the 17 studies): the patients of
the two held-out studies, personalised from their first sample, forecast and scored.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

#: the quickstart's booster trial: dose target, times (days), protective threshold (log10 titre)
TARGET = "vaccine"
BOOSTERS = {"no booster": None, "booster 3 m": 90.0, "booster 6 m": 180.0, "booster 12 m": 365.0}
HORIZON = 540.0  # 18 months
PROTECTIVE = 3.0
#: the hybrid twin of the quickstart (fixed parameters as the virtual cohort's design cannot inform them)
FIXED = ("delta_Ag", "K_Ag", "rho_M", "M_max", "alpha_S", "alpha_L", "delta_L")
CLOSURE = {"target": "delta_Ab", "mode": "replace", "inputs": ["t"], "input_scale": {"t": 100.0}, "hidden": [8]}


class _Clock:
    def __init__(self):
        self.start = time.perf_counter()
        self.steps: list[tuple[str, float]] = []
        self._t = self.start

    def step(self, title: str) -> None:
        print(f"\n[{len(self.steps) + 1}] {title}", flush=True)
        self._open = title
        self._t = time.perf_counter()

    def done(self) -> float:
        s = time.perf_counter() - self._t
        self.steps.append((self._open, s))
        print(f"    ({s:.0f} s)", flush=True)
        return s

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"step": [s for s, _ in self.steps], "seconds": [round(t, 1) for _, t in self.steps]})


def _gallery(out: Path) -> pd.DataFrame:
    import matplotlib.pyplot as plt

    from . import models as _models
    from .diagnostics.plots import plot_simulation
    from .simulation import simulate

    rows = []
    (out / "models").mkdir(exist_ok=True)
    for name in _models.available():
        m = _models.get(name)
        doses = list(getattr(m, "example_doses", ()))
        df = simulate(m, np.linspace(0.0, m.default_t_end, 201), doses=doses)
        fig = plot_simulation(m, df, doses=doses)
        fig.savefig(out / "models" / f"{name}.png", dpi=100)
        plt.close(fig)
        rows.append({"model": name, "time unit": m.time_unit, "figure": f"models/{name}.png"})
    return pd.DataFrame(rows)


def _split(data, held_fraction: float, seed: int):
    """Training and held-out patients, stratified by cohort."""
    rng = np.random.default_rng(seed)
    cohort = data.observations.groupby("subject_id")["cohort"].first()
    held = []
    for c, ids in cohort.groupby(cohort):
        ids = sorted(ids.index)
        held += list(rng.choice(ids, size=max(1, int(round(held_fraction * len(ids)))), replace=False))
    train = [s for s in data.subject_ids if s not in set(held)]
    return data.subset(train), data.subset(sorted(held))


def _early_late(obs: pd.DataFrame, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each patient's rows up to and including the ``k``-th after time 0, and the rest."""
    obs = obs.sort_values(["subject_id", "time"], kind="stable")
    after = (obs["time"] > 0).groupby(obs["subject_id"]).cumsum()
    keep = after <= k
    return obs[keep].reset_index(drop=True), obs[~keep].reset_index(drop=True)


def _forecast_scores(pred: pd.DataFrame, late: pd.DataFrame, by: str = "cohort") -> pd.DataFrame:
    """RMSE, bias and 90 % coverage of quantified later rows, per ``by`` and overall."""
    m = late.merge(pred, on=["subject_id", "time", "observable"], how="left")
    q = m[~m["censored"]].copy()
    q["err"] = q["value"] - q["median"]
    q["inside"] = ((q["value"] >= q["lower"]) & (q["value"] <= q["upper"])).where(q["lower"].notna())
    rows = []
    groups = list(q.groupby(by, sort=True))
    for level, g in groups + ([("all", q)] if len(groups) > 1 else []):
        rows.append({by: level, "patients": g["subject_id"].nunique(), "rows": len(g),
                     "rmse": float(np.sqrt(np.mean(g["err"] ** 2))), "bias": float(g["err"].mean()),
                     "coverage90": float(g["inside"].astype(float).mean())})
    return pd.DataFrame(rows)


def _fit_twin(train, seed: int, iterations: int, amortise_epochs: int, n_simulations: int):
    import torch

    from .estimation import AmortiseConfig, SAEMConfig, estimate
    from .twin import HybridTwin, TwinConfig

    torch.manual_seed(seed)
    cfg = TwinConfig(model="vaccine_asc", fixed=FIXED, closures=[CLOSURE], cohort_calibration=["log10_Ab"],
                     log10_covariates=["baseline_marker"], n_samples=2,
                     solver={"rtol": 1e-5, "atol": 1e-6, "max_steps": 4000})
    twin = HybridTwin.from_data(cfg, train)
    n_explore = max(1, int(iterations * 0.6))
    saem = SAEMConfig(n_explore=n_explore, n_smooth=max(1, iterations - n_explore), n_fisher=min(40, iterations),
                      init_steps=min(30, iterations), seed=seed, progress=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = estimate(twin, train, saem, AmortiseConfig(n_simulations=n_simulations, epochs=amortise_epochs,
                                                         seed=seed, progress=True))
    findings = sorted({str(w.message).split("\n")[0] for w in caught if issubclass(w.category, UserWarning)})
    return twin.eval(), fit, findings


def _closure_effect(twin) -> pd.DataFrame:
    """The learned closure: the factor exp(net(t)) multiplying delta_Ab over time since the prime."""
    import torch

    clo = twin.dynamics.closures[0]
    t = torch.linspace(0, HORIZON, 10, dtype=twin.dtype)
    with torch.no_grad():
        f = clo.value({"t": t})
    return pd.DataFrame({"day": t.numpy().round(0), "delta_Ab factor": f.numpy()})


def run_quickstart(out="quickstart_output", n_subjects: int = 240, held_fraction: float = 0.15, iterations: int = 120,
                   amortise_epochs: int = 20, n_simulations: int = 4000, surrogate_sims: int = 8000,
                   surrogate_epochs: int = 200, n_population: int = 2000, n_per_arm: int = 100,
                   replicates: int = 200, n_trials: int = 60, seed: int = 0, gallery: bool = True) -> Path:
    """Run the quickstart (see the module docstring) into the folder ``out``; returns the path of
    ``report.md``. The defaults take about 10 minutes on 2 CPU cores; smaller values give a faster, rougher
    run (the tests use tiny ones)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .checkpoint import save
    from .diagnostics.plots import plot_prediction
    from .engine import TwinEngine
    from .scenarios import ScenarioSpace
    from .surrogate import certify, fit_surrogate, twin_domain
    from .sweep import Endpoint
    from .trials import Arm, TrialDesign, optimise_schedule, power_curve, run_trial, virtual_population
    from .trials.report import Report, add_trial_sections
    from .virtual import make_virtual_cohort

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    report = Report("hybridtwin quickstart: an immune digital twin from data to a virtual booster trial")

    if gallery:
        clock.step("Built-in models with their published defaults")
        models = _gallery(out)
        print(f"    {len(models)} models -> {out / 'models'}")
        clock.done()

    clock.step(f"Virtual multi-cohort vaccine data ({n_subjects} patients, 3 cohorts)")
    data = make_virtual_cohort("vaccine_asc", n_subjects=n_subjects, n_cohorts=3, seed=seed)
    train, held = _split(data, held_fraction, seed)
    gt = data.meta["ground_truth"]
    assay = gt["assay"].groupby("cohort").first()
    cohorts = data.summary()[["cohort", "subjects", "observations", "censored"]].copy() \
        if "censored" in data.summary().columns else data.summary()[["cohort", "subjects", "observations"]].copy()
    cohorts["schedule (day: dose)"] = cohorts["cohort"].map(
        {c: ", ".join(f"{d['time']:g}: {d['amount']:g}" for d in reg) for c, reg in gt["regimens"].items()})
    cohorts["assay scale"] = cohorts["cohort"].map(assay["scale"])
    cohorts["assay offset"] = cohorts["cohort"].map(assay["offset"])
    cohorts["held out"] = cohorts["cohort"].map(held.observations.groupby("cohort")["subject_id"].nunique()).fillna(0).astype(int)
    print(cohorts.to_string(index=False))
    clock.done()

    clock.step(f"Hybrid twin: vaccine_asc + neural closure + encoder; SAEM ({iterations} iterations) and amortisation")
    twin, fit, findings = _fit_twin(train, seed, iterations, amortise_epochs, n_simulations)
    save(twin, out / "twin", data_summary={"source": "virtual vaccine_asc cohort", "n_train": len(train.subject_ids)})
    table = twin.population_table()
    pop_rows = table[table["kind"].isin(["typical", "omega", "noise", "miss", "assay_scale", "assay_offset"])]
    pop_rows = pop_rows[["kind", "quantity", "estimate", "se", "lower", "upper"]].reset_index(drop=True)
    truth_noise = float(assay["noise_sd"].iloc[0]) if "noise_sd" in assay.columns else math.nan
    closure = _closure_effect(twin)
    print(pop_rows.to_string(index=False))
    clock.done()

    clock.step("Held-out patients personalised from their first two samples")
    early, late = _early_late(held.observations, 2)
    cov = held.covariates.merge(held.observations.groupby("subject_id")["cohort"].first().reset_index(), on="subject_id")
    pred, _ = twin.predict(cov, early, held.doses, times=late[["subject_id", "time", "observable"]], n_samples=200,
                           seed=seed)
    scores = _forecast_scores(pred, late.assign(cohort=late["subject_id"].map(cov.set_index("subject_id")["cohort"])))
    show = list(pd.unique(held.observations["subject_id"]))[:6]
    traj, _ = twin.predict(cov[cov.subject_id.isin(show)], early[early.subject_id.isin(show)],
                           held.doses[held.doses.subject_id.isin(show)], times=np.linspace(0, 180, 61), n_samples=200,
                           seed=seed)
    fig = plot_prediction(traj, held.observations[held.observations.subject_id.isin(show)], context=early,
                          title="held-out patients, personalised from their first two samples")
    fig.savefig(out / "heldout_predictions.png", dpi=100)
    plt.close(fig)
    print(scores.to_string(index=False))
    clock.done()

    clock.step(f"Surrogate of the twin over booster day x dose ({surrogate_sims} exact twin simulations)")
    engine = TwinEngine(twin, source=out / "twin")
    space = ScenarioSpace([{"name": "prime", "target": TARGET, "time": 0, "amount": 1},
                           {"name": "boost", "target": TARGET, "time": [30, 480], "amount": [0, 2]}])
    times = np.linspace(0, HORIZON, 19)
    domain = twin_domain(twin, space, times, width=3.0)
    sur = fit_surrogate(domain, n_train=surrogate_sims, members=5, hidden=(128, 128), epochs=surrogate_epochs,
                        batch_size=256, seed=seed, engine=engine, progress=True)
    cert = certify(sur, n=500, seed=seed + 1)
    by_time = pd.DataFrame(cert["per_output_time"]) if "per_output_time" in cert else None
    print(f"    certificate on 500 fresh pairs: median {cert['overall']['median']:.3f}, 95th percentile "
          f"{cert['overall']['p95']:.3f}, worst {cert['overall']['max']:.3f} log10; ensemble 90 % band covers "
          f"{cert['calibration']['coverage90']:.2f}")
    clock.done()

    clock.step(f"Virtual booster trial: {len(BOOSTERS)} arms x {n_per_arm} patients x {replicates} replicates")
    population = virtual_population(twin, n_population, train.covariates.merge(
        train.observations.groupby("subject_id")["cohort"].first().reset_index(), on="subject_id").drop(columns="cohort"),
        seed=seed)
    arms = [Arm(name, space.scenario([day if day is not None else 90.0, 0.0 if day is None else 1.0], name=name))
            for name, day in BOOSTERS.items()]
    protected = Endpoint("above", "log10_Ab", time=HORIZON, threshold=PROTECTIVE, name="protected at 18 m")
    throughout = Endpoint("always_above", "log10_Ab", start=180.0, time=HORIZON, threshold=PROTECTIVE,
                          name="protected months 6-18")
    titre = Endpoint("value_at", "log10_Ab", time=HORIZON, name="titre at 18 m")
    design = TrialDesign(arms, [protected, throughout, titre], n_per_arm=n_per_arm, replicates=replicates, seed=seed,
                         times=list(times),
                         subgroups={"age >= 50": {"age": [50, None]}, "age < 50": {"age": [None, 50]}})
    # patients outside the surrogate's validated domain are simulated by the twin itself (outside="exact")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_trial(design, sur, population, progress=True, outside="exact")
        exact = run_trial(design, engine, population, progress=True)  # the same trial on the twin's exact solve
    check = result.summary()[["endpoint", "arm", "estimate"]].rename(columns={"estimate": "surrogate"}).merge(
        exact.summary()[["endpoint", "arm", "estimate"]].rename(columns={"estimate": "exact twin"}), on=["endpoint", "arm"])
    check["difference"] = check["surrogate"] - check["exact twin"]
    curve = power_curve(result, [10, 25, 50, 100, 200], endpoint=protected.label, effect=0.15, replicates=300,
                        seed=seed)
    one = ScenarioSpace([{"name": "prime", "target": TARGET, "time": 0, "amount": 1},
                         {"name": "boost", "target": TARGET, "time": [30, 480], "amount": 1}])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        opt = optimise_schedule(sur, population.sample(n=min(500, len(population)), random_state=seed), one,
                                throughout, method="optuna", n_trials=n_trials, top_k=5, seed=seed, tolerance=0.02,
                                times=list(times),
                                progress=True, outside="exact")
    print(result.summary().to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"    surrogate vs exact twin, largest difference of an arm's estimate: {check['difference'].abs().max():.3f}")
    print(f"    best booster day for {throughout.label}: {float(opt.best['boost.time']):.0f} "
          f"({float(opt.best['objective']):.3f}); exact re-run confirms: {opt.confirmed}")
    clock.done()

    # -- the report --------------------------------------------------------------------------------------------
    total = time.perf_counter() - clock.start
    report.text(f"Everything below was computed by `hybridtwin quickstart` in {total / 60:.1f} minutes on this machine "
                "(timings per step at the end). Numbers come from this run; nothing is pasted in.")
    if gallery:
        report.heading("0. Built-in models")
        report.table(models)
    report.heading("1. Data: a virtual multi-cohort vaccine study")
    report.text("Three cohorts with different prime-boost intervals and assay calibrations (scale and offset of the "
                "log10 titre), values below the assay's limit censored; simulated from `vaccine_asc` with known "
                f"parameters (residual SD {truth_noise:g}). Held-out patients are never seen in training.")
    report.table(cohorts)
    report.heading("2. The hybrid twin")
    report.text("Mechanistic `vaccine_asc` (antigen, plasma cells, antibody) with a neural closure: the antibody decay "
                "rate delta_Ab becomes delta_Ab * exp(net(t)), a learned function of time since the prime; covariates "
                "(age, sex, log baseline marker) act on the patient parameters; per-cohort assay calibration. "
                "Estimated by SAEM with standard errors, then the encoder (covariates + early observations -> "
                "parameters) amortised on simulations from the fit.")
    report.table(pop_rows)
    report.text("The learned closure (factor on delta_Ab by day; 1 = the mechanistic model):")
    report.table(closure)
    if findings:
        report.text("Estimation findings: " + "; ".join(findings))
    report.heading("3. Held-out patients")
    report.text("Each held-out patient is personalised from covariates and the first two samples after the prime; "
                "every later sample is forecast with a 90 % predictive interval (noise included). Scored on "
                "quantified rows.")
    report.table(scores)
    report.figure(out / "heldout_predictions.png", "Held-out patients: forecast median and 90 % interval; filled "
                  "points were given to the twin, open points are forecast")
    report.heading("4. Surrogate of the twin")
    report.text(f"A `{sur.info['arch']}` deep ensemble (5 members, hidden layers {sur.info['hidden']}) emulating the "
                "twin's own dynamics (closure included) over "
                f"the twin's patient parameters (within 3 between-patient SDs) x booster day 30-480 x dose 0-2, "
                f"log10 titre at 19 times to day {HORIZON:g}; trained on {surrogate_sims} exact twin simulations, "
                "certified on 500 fresh ones.")
    report.table(pd.DataFrame([{"median abs error": cert["overall"]["median"], "95th percentile": cert["overall"]["p95"],
                                "worst": cert["overall"]["max"], "ensemble 90 % coverage": cert["calibration"]["coverage90"],
                                "training seconds": sur.info["training_seconds"]}]))
    if by_time is not None:
        report.table(by_time)
    report.heading("5. Virtual booster trial")
    report.text(f"{n_population} virtual patients drawn from the twin (covariates from a Gaussian-mixture model of the "
                "training covariates, parameters from the twin's population model with between-patient variability). "
                f"Protective threshold: log10 titre >= {PROTECTIVE:g} (illustrative), at day {HORIZON:g} and at every "
                "output time (monthly) from day 180 to 540 for 'protected months 6-18'. The data "
                "end at day 180: titres at 18 months extrapolate the fitted decay and closure. Surrogate "
                "predictions for patients outside its validated domain were replaced by the twin's exact solve.")
    add_trial_sections(report, out, result, curve, opt, protected.label)
    report.heading("The trial on the surrogate vs on the twin itself")
    report.text("The same design, population and seed run on the twin's exact solve instead of the surrogate: each "
                "arm's estimate (mean over replicates) from both engines.")
    report.table(check)
    worst = check.loc[check["difference"].abs().idxmax()]
    report.text(f"Largest disagreement: {worst['arm']}, {worst['endpoint']}: {worst['surrogate']:.3g} on the surrogate vs "
                f"{worst['exact twin']:.3g} on the twin (difference {worst['difference']:+.3g}). A surrogate errs most "
                "where the titre changes fastest (right at a booster day: a booster on day 180 and a window starting on "
                "day 180) and at the edges of its domain (a dose of 0, the 'no booster' arm, is the edge of the dose "
                "range it was trained on): confirm such arms on the twin.")
    report.heading("Timings")
    report.table(clock.table())
    paths = report.write(out)
    summary = {"minutes": total / 60, "heldout": scores.to_dict("records"), "certificate": cert["overall"],
               "trial": result.summary().to_dict("records"), "trial_exact": exact.summary().to_dict("records"),
               "optimum_day": float(opt.best["boost.time"]),
               "optimum_confirmed": opt.confirmed, "steps": clock.table().to_dict("records")}
    (out / "quickstart.json").write_text(json.dumps(summary, indent=1, default=float))
    print(f"\nDone in {total / 60:.1f} min. Report: {paths[0].resolve()}\n                  {paths[1].resolve()}")
    return paths[0]


#: the pretrained SARS-CoV-2 twin shipped with the repository
CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "sarscov2_challenger"


def _locf(early: pd.DataFrame, late: pd.DataFrame) -> pd.DataFrame:
    """Last observation carried forward: each patient's last given value (its limit when censored)."""
    last = early.sort_values("time").groupby("subject_id")["value"].last()
    return late[["subject_id", "time", "observable"]].assign(median=late["subject_id"].map(last).to_numpy(),
                                                             lower=np.nan, upper=np.nan)


def run_real_quickstart(out="quickstart_output", data: str = "challenger2022", data_dir=None, checkpoint=None,
                        n_samples: int = 400, seed: int = 0) -> Path:
    """The twin-fit part of the quickstart on real SARS-CoV-2 data, from the pretrained checkpoint
    (``checkpoints/sarscov2_challenger``, trained on 15 of the 17 challenger2022 studies): the patients of the
    two studies it never saw, personalised from their first sample and age, every later sample forecast with
    a 90 % interval and scored per study against last-observation-carried-forward. ``data_dir``: the
    challenger2022 folder (default: the held-out patients shipped beside the checkpoint). Returns the path of
    ``report.md``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .checkpoint import load, read_card
    from .diagnostics.plots import plot_prediction
    from .trials.report import Report

    if data != "challenger2022":
        raise ValueError(f"the real-data quickstart has a pretrained twin for challenger2022 only, got {data!r}")
    folder = Path(checkpoint) if checkpoint is not None else CHECKPOINT
    if not (folder / "card.json").is_file():
        raise ValueError(f"no pretrained twin at {folder} (expected card.json and weights.pt)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    twin, card = load(folder), read_card(folder)
    studies = card["training_data"]["heldout_studies"]
    if data_dir is not None:
        from .data import map_observables
        from .datasets import load as load_data

        d = map_observables(load_data("challenger2022", data_dir), {"log10_vl": {"name": "log10_V",
                                                                                 "unit": "log10 copies/ml"}})
        obs = d.observations[d.observations["cohort"].isin(studies)]
        if obs.empty:
            raise ValueError(f"{data_dir} has no patients of the held-out studies {studies}")
        obs = obs.assign(study=obs["cohort"], cohort=twin.cohort_names[0])
        cov = d.covariates.loc[d.covariates["subject_id"].isin(set(obs["subject_id"])), ["subject_id", "age"]]
        source = f"{data_dir} (studies {', '.join(studies)})"
    else:
        obs = pd.read_csv(folder / "heldout_observations.csv", dtype={"subject_id": str})
        obs = obs.assign(study=" + ".join(studies))  # the shipped files do not say which study a patient is from
        cov = pd.read_csv(folder / "heldout_covariates.csv", dtype={"subject_id": str})
        source = f"the held-out patients shipped in {folder}"
    obs = obs.sort_values(["subject_id", "time"], kind="stable")
    rank = obs.groupby("subject_id").cumcount()
    early, late = obs[rank < 1], obs[rank >= 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred, _ = twin.predict(cov, early.drop(columns="study"), None, times=late[["subject_id", "time", "observable"]],
                               n_samples=n_samples, seed=seed)
    rows = []
    for label, p in (("twin (age + first sample)", pred), ("last value carried forward", _locf(early, late))):
        s = _forecast_scores(p, late, by="study")
        s.insert(0, "forecast", label)
        rows.append(s)
    scores = pd.concat(rows, ignore_index=True)
    show = list(pd.unique(late["subject_id"]))[:6]
    lo = float(min(obs["time"].min(), 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traj, _ = twin.predict(cov[cov.subject_id.isin(show)], early[early.subject_id.isin(show)].drop(columns="study"),
                               None, times=np.linspace(lo, 30, 61), n_samples=200, seed=seed)
    fig = plot_prediction(traj, obs[obs.subject_id.isin(show)].drop(columns="study"), context=early,
                          title="SARS-CoV-2 patients of studies the twin never saw, from their first sample")
    fig.savefig(out / "sarscov2_predictions.png", dpi=100)
    plt.close(fig)
    report = Report("hybridtwin quickstart on real data: SARS-CoV-2 viral load (challenger2022)")
    report.text(f"Pretrained twin `{folder.name}`: {card['twin']['config']['model'] if 'twin' in card and 'config' in card['twin'] else 'sarscov2_cd8'} "
                f"trained on {card['training_data']['n_train_patients']} patients of 15 studies; time axis "
                f"{card['training_data']['time_axis']}. Data: {source}. Citation: {card['training_data']['citation']}.")
    report.text("Each patient is personalised from age and the first sample; every later sample is forecast with a "
                "90 % predictive interval. Scored on quantified rows (values below a study's limit are left out of "
                "RMSE and coverage).")
    report.table(scores)
    report.figure(out / "sarscov2_predictions.png", "Forecast median and 90 % interval; the filled point was given")
    report.text(f"Run time {time.perf_counter() - t0:.0f} s.")
    paths = report.write(out)
    print(scores.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"\nReport: {paths[0].resolve()}\n        {paths[1].resolve()}")
    return paths[0]
