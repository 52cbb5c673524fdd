"""CLI ``hybridtwin trial DESIGN.yaml``: a virtual trial (and optionally a schedule optimisation) -> report.

Trial config (YAML; paths relative to the file)::

    engine: {surrogate: surrogate_dir}          # or {exact: vaccine_asc} or {twin: checkpoint_dir}
    population: {sample: 2000, seed: 0}         # as `hybridtwin sweep` (csv | sample | virtual: N + covariates)
    space:                                      # optional: the scenario space arms' factors refer to
      doses: [{name: prime, target: Ag, time: 0, amount: 1},
              {name: boost, target: Ag, time: [14, 365], amount: [0, 4]}]   # default: the surrogate's space
    arms:
      - {name: no booster, factors: {boost.time: 90, boost.amount: 0}}
      - {name: booster 3 m, factors: {boost.time: 90, boost.amount: 1}}
      - {name: explicit, doses: [{time: 0, amount: 1, target: Ag}], overrides: {delta_Ab: 0.02}}
    endpoints:
      - {kind: above, output: log10_Ab, time: 365, threshold: 2.0, name: protected}
    n_per_arm: 100
    replicates: 200
    seed: 0
    reference: no booster                        # default: the first arm
    alpha: 0.05
    paired: false                                # true: the same patients in every arm
    times: [...]                                 # default: the surrogate's grid
    subgroups: {over 65: "age >= 65"}
    power: {endpoint: protected, sizes: [25, 50, 100, 200, 400], effect: 0.1, replicates: 300}
    optimise: {endpoint: protected, grid: {boost.time: {start: 30, stop: 360, num: 12}},   # or n_trials: 200
               direction: maximize, constraints: ["`boost.amount` <= 2"], top_k: 5, patients: 500}
    out: trial_output

Writes ``report.md``, ``report.html``, ``endpoints.png``, ``power.png``, ``landscape.png``,
``patients.csv``, ``summary.csv`` and ``differences.csv`` into ``out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

ALLOWED = {"engine", "population", "space", "arms", "endpoints", "n_per_arm", "replicates", "seed", "reference", "alpha",
           "paired", "times", "subgroups", "power", "optimise", "out"}


def _arm(spec, space, i: int):
    import hybridtwin as ht

    from .engine import Scenario
    from .trials import Arm

    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"trial config: arms[{i}] must be a mapping with a name, got {spec!r}")
    unknown = set(spec) - {"name", "factors", "doses", "overrides"}
    if unknown:
        raise ValueError(f"trial config: arms[{i}] has unknown key(s) {sorted(unknown)}; allowed: name, factors, doses, "
                         "overrides")
    if "factors" in spec:
        if space is None:
            raise ValueError(f"trial config: arm {spec['name']!r} gives factors but there is no scenario space (add "
                             "'space' or use a surrogate engine)")
        return Arm(str(spec["name"]), space.scenario(spec["factors"], name=str(spec["name"])))
    doses = []
    for j, d in enumerate(spec.get("doses", [])):
        if not isinstance(d, dict) or not {"time", "amount", "target"} <= set(d):
            raise ValueError(f"trial config: arms[{i}].doses[{j}] needs time, amount and target, got {d!r}")
        doses.append(ht.Dose(float(d["time"]), float(d["amount"]), d["target"], float(d.get("duration", 0.0))))
    return Arm(str(spec["name"]), Scenario(str(spec["name"]), tuple(doses), spec.get("overrides") or {}))


def cmd_trial(args) -> int:
    from .cli_surrogate import _yaml, engine_from_config, population_from_config
    from .scenarios import ScenarioSpace, values_from
    from .sweep import Endpoint
    from .trials import TrialDesign, optimise_schedule, power_curve, run_trial
    from .trials.report import Report, add_trial_sections

    cfg = _yaml(args.config)
    unknown = set(cfg) - ALLOWED
    if unknown:
        raise ValueError(f"trial config: unknown key(s) {sorted(unknown)}; allowed: {sorted(ALLOWED)}")
    for key in ("engine", "population", "arms", "endpoints", "n_per_arm"):
        if key not in cfg:
            raise ValueError(f"trial config: {key!r} is required")
    base = Path(args.config).parent
    engine, exact, surrogate = engine_from_config(cfg["engine"], base, "trial")
    population = population_from_config(cfg["population"], base, exact, surrogate, "trial")
    space = ScenarioSpace.from_dict(cfg["space"]) if "space" in cfg else (surrogate.domain.scenarios if surrogate else None)
    if not isinstance(cfg["arms"], list) or not cfg["arms"]:
        raise ValueError("trial config: arms must be a non-empty list")
    arms = [_arm(a, space, i) for i, a in enumerate(cfg["arms"])]
    if not isinstance(cfg["endpoints"], list) or not cfg["endpoints"]:
        raise ValueError("trial config: endpoints must be a non-empty list")
    endpoints = [Endpoint.from_dict(e) for e in cfg["endpoints"]]
    times = values_from(cfg["times"], "times") if "times" in cfg else None
    design = TrialDesign(arms, endpoints, n_per_arm=int(cfg["n_per_arm"]), replicates=int(cfg.get("replicates", 100)),
                         seed=int(cfg.get("seed", 0)), reference=cfg.get("reference"), times=times,
                         alpha=float(cfg.get("alpha", 0.05)), subgroups=cfg.get("subgroups") or {},
                         paired=bool(cfg.get("paired", False)))
    out = Path(args.out) if args.out else base / cfg.get("out", "trial_output")
    out.mkdir(parents=True, exist_ok=True)
    print(f"trial: {len(arms)} arms x {design.n_per_arm} patients x {design.replicates} replicates on "
          f"{type(engine).__name__}; population of {len(population)}")
    result = run_trial(design, engine, population, progress=not args.quiet)
    curve, power_ep = None, None
    if cfg.get("power"):
        p = cfg["power"]
        power_ep = p.get("endpoint")
        curve = power_curve(result, [int(s) for s in values_from(p.get("sizes", [25, 50, 100, 200, 400]), "power.sizes")],
                            endpoint=power_ep, effect=p.get("effect"), replicates=int(p.get("replicates", 300)),
                            seed=design.seed)
        curve.to_csv(out / "power.csv", index=False)
    opt = None
    if cfg.get("optimise"):
        o = dict(cfg["optimise"])
        known = {"endpoint", "grid", "n_trials", "direction", "constraints", "top_k", "patients", "space", "tolerance"}
        bad = set(o) - known
        if bad:
            raise ValueError(f"trial config: optimise has unknown key(s) {sorted(bad)}; allowed: {sorted(known)}")
        ospace = ScenarioSpace.from_dict(o["space"]) if "space" in o else space
        if ospace is None:
            raise ValueError("trial config: optimise needs a scenario space ('space', optimise.space or a surrogate)")
        label = o.get("endpoint", endpoints[0].label)
        ep = {e.label: e for e in endpoints}.get(label)
        if ep is None:
            raise ValueError(f"trial config: optimise.endpoint {label!r} is not one of {[e.label for e in endpoints]}")
        n_pat = int(o.get("patients", min(len(population), 500)))
        pop = population.sample(n=min(n_pat, len(population)), random_state=design.seed) if n_pat < len(population) else population
        grid = {k: values_from(v, f"optimise.grid.{k}") for k, v in o["grid"].items()} if "grid" in o else None
        opt = optimise_schedule(engine, pop, ospace, ep, direction=o.get("direction", "maximize"), grid=grid,
                                n_trials=int(o.get("n_trials", 200)), constraints=o.get("constraints", ()),
                                top_k=int(o.get("top_k", 5)), times=times, seed=design.seed,
                                tolerance=float(o.get("tolerance", 0.0)), progress=not args.quiet)
        opt.candidates.to_csv(out / "optimisation.csv", index=False)
    result.patients.to_csv(out / "patients.csv", index=False)
    result.summary().to_csv(out / "summary.csv", index=False)
    result.differences().to_csv(out / "differences.csv", index=False)
    report = Report(f"Virtual trial: {Path(args.config).stem}")
    add_trial_sections(report, out, result, curve, opt, power_ep)
    paths = report.write(out)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(result.summary().to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        if opt is not None:
            best = ", ".join(f"{f}={float(opt.best[f]):.4g}" for f in opt.space.factors)
            check = ("the engine is exact" if opt.confirmed is None else
                     "confirmed by the exact engine" if opt.confirmed else "NOT confirmed by the exact engine")
            print(f"optimum: {best} (objective {float(opt.best['objective']):.4g}; {check})")
    print(f"report: {paths[0].resolve()}\n        {paths[1].resolve()}")
    return 0


def add_parser(sub) -> None:
    t = sub.add_parser("trial", help="run a virtual trial (and schedule optimisation) from a YAML design",
                       description=__doc__.split("Trial config (YAML; paths relative to the file)::")[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", help="trial YAML (see the description)")
    t.add_argument("--out", default=None, help="output folder (default: the config's 'out')")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_trial)


__all__ = ["add_parser", "cmd_trial"]
