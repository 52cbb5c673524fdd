"""CLI commands of surrogates and sweeps: ``hybridtwin surrogate fit|validate|sensitivity`` and ``hybridtwin sweep``.

Sweep config (YAML)::

    engine: {surrogate: surrogate_dir}            # or {exact: vaccine_asc, rtol: 1e-6, fused: true} or {twin: checkpoint_dir}
    population: {sample: 1000, seed: 0}           # from the surrogate's domain; or {csv: pop.csv};
                                                  # or {sample: N, parameters: {name: [lo, hi]}} for an exact engine;
                                                  # or {sample: N, covariates: cov.csv}: N draws per patient from a
                                                  # twin's population model
    scenarios:
      space: {doses: [...]}                       # default: the surrogate's scenario space
      grid: {boost.time: {start: 14, stop: 365, num: 12}, boost.amount: [0.25, 0.5, 1, 2, 4]}
    times: [...]                                  # default: the surrogate's grid
    endpoint: {kind: value_at, output: log10_Ab, time: 365}
    verify: {n_scenarios: 5, top_k: 3}            # re-run with the exact engine (optional)
    out: sweep_output                             # paths in the file are relative to the file
    format: csv                                   # or parquet (needs pyarrow)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .scenarios import values_from


def _yaml(path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p} is not a file")
    d = yaml.safe_load(p.read_text())
    if not isinstance(d, dict):
        raise ValueError(f"{p} must hold a YAML mapping, got {type(d).__name__}")
    return d


def _print_certificate(cert: dict) -> None:
    o, c = cert["overall"], cert["calibration"]
    print(f"certificate on {cert['n_pairs']} fresh pairs ({cert['n_failed_exact']} failed exact simulations left out): "
          f"absolute error median {o['median']:.4f}, 95th percentile {o['p95']:.4f}, worst {o['max']:.4f}; "
          f"ensemble 90 % band covers {c['coverage90']:.2f} of errors (Spearman SD vs error {c['spearman_sd_error']:.2f})")


def _twin_domain(spec: dict, engine):
    """A twin surrogate's domain: the file's parameter ranges, or the twin's population (``width`` SDs)."""
    from .scenarios import ScenarioSpace
    from .surrogate import Domain, twin_domain

    unknown = set(spec) - {"parameters", "scale", "scenarios", "times", "outputs", "width"}
    if unknown:
        raise ValueError(f"twin surrogate domain: unknown key(s) {sorted(unknown)}")
    if "parameters" in spec:
        return Domain.from_dict({k: v for k, v in spec.items() if k != "width"}, model=engine.model)
    times = spec.get("times")
    if times is None:
        raise ValueError("twin surrogate domain: 'times' is required")
    if isinstance(times, dict):
        times = values_from(times, "times")
    return twin_domain(engine.twin, ScenarioSpace.from_dict(spec.get("scenarios", {"doses": []})), times,
                       spec.get("outputs"), float(spec.get("width", 3.0)))


def cmd_surrogate_fit(args) -> int:
    from .engine import TwinEngine
    from .surrogate import Domain, certify, fit_surrogate, save

    spec = _yaml(args.domain)
    engine = None
    if args.twin:
        if args.model:
            raise ValueError("give --model or --twin, not both")
        engine = TwinEngine.from_checkpoint(args.twin)
        domain = _twin_domain(spec, engine)
    else:
        if args.model:
            spec = {**spec, "model": args.model}
        domain = Domain.from_dict(spec)
    hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else None
    s = fit_surrogate(domain, n_train=args.n_train, members=args.members, hidden=hidden, epochs=args.epochs,
                      batch_size=args.batch_size, seed=args.seed, progress=not args.quiet, engine=engine,
                      arch=args.arch)
    print(f"trained on {s.info['n_train'] - s.info['n_failed']} exact simulations ({s.info['simulation_seconds']:.0f} s) "
          f"in {s.info['training_seconds']:.0f} s")
    if args.validate:
        _print_certificate(certify(s, n=args.validate, seed=args.seed + 10_000))
    out = save(s, args.out)
    print(f"surrogate written to {out}")
    return 0


def cmd_surrogate_validate(args) -> int:
    from .surrogate import certificate_table, certify, load, save

    s = load(args.surrogate)
    cert = certify(s, n=args.n, seed=args.seed)
    _print_certificate(cert)
    save(s, args.surrogate)
    certificate_table(cert).to_csv(Path(args.surrogate) / "certificate.csv", index=False)
    print(f"certificate stored in {Path(args.surrogate) / 'card.json'} and certificate.csv")
    return 0


def cmd_surrogate_sensitivity(args) -> int:
    from .surrogate import load
    from .sweep import Endpoint, sensitivity

    s = load(args.surrogate)
    ep = Endpoint(args.kind, args.output, args.time, args.threshold)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = sensitivity(s, ep, n=args.n, seed=args.seed, plot=out / "sensitivity.png")
    res["table"].to_csv(out / "sensitivity.csv", index=False)
    (out / "sensitivity_check.json").write_text(json.dumps(res["exact_check"], indent=1))
    print(res["table"].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    c = res["exact_check"]
    print(f"{res['n_evaluations']} surrogate evaluations; exact spot check on {c['n']} points: endpoint error median "
          f"{c['median_abs_error']:.4f}, worst {c['max_abs_error']:.4f} (endpoint SD {c['endpoint_sd']:.3f})")
    print(f"written: {out / 'sensitivity.csv'}, {out / 'sensitivity.png'}")
    return 0


def engine_from_config(eng: dict, base: Path, what: str):
    """``(engine, exact engine, surrogate or None)`` from a config's ``engine`` mapping: ``{surrogate: DIR}``,
    ``{twin: DIR}`` or ``{exact: MODEL, rtol: ..., fused: true}`` (paths relative to ``base``)."""
    from .engine import ExactEngine, TwinEngine
    from .surrogate import load

    if not isinstance(eng, dict):
        raise ValueError(f"{what} config: engine must be a mapping, got {eng!r}")
    if "surrogate" in eng:
        surrogate = load(base / eng["surrogate"])
        return surrogate, surrogate.exact, surrogate
    if "twin" in eng:
        engine = TwinEngine.from_checkpoint(base / eng["twin"])
        return engine, engine, None
    if "exact" in eng:
        engine = ExactEngine(eng["exact"], rtol=float(eng.get("rtol", 1e-6)), fused=eng.get("fused", False))
        return engine, engine, None
    raise ValueError(f"{what} config: engine needs 'surrogate: DIR', 'twin: DIR' or 'exact: MODEL'")


def population_from_config(pop_cfg: dict, base: Path, exact, surrogate, what: str) -> pd.DataFrame:
    """Patients from a config's ``population`` mapping (see the module docstring; also
    ``{virtual: N, covariates: cov.csv, method: gmm, parameter_uncertainty: false, replicates: 1}``:
    :func:`hybridtwin.trials.virtual_population` of a twin engine, or of the twin behind a surrogate)."""
    from .surrogate import ParameterDomain

    if not isinstance(pop_cfg, dict):
        raise ValueError(f"{what} config: population must be a mapping, got {pop_cfg!r}")
    seed = int(pop_cfg.get("seed", 0))
    twin = getattr(exact, "twin", None)
    if "csv" in pop_cfg:
        return pd.read_csv(base / pop_cfg["csv"])
    if "virtual" in pop_cfg:
        from .trials import virtual_population

        if twin is None or "covariates" not in pop_cfg:
            raise ValueError(f"{what} config: population.virtual needs 'covariates: FILE' and a twin engine (or a "
                             "surrogate of a twin)")
        return virtual_population(twin, int(pop_cfg["virtual"]), pd.read_csv(base / pop_cfg["covariates"]),
                                  method=pop_cfg.get("method", "gmm"), cohort=pop_cfg.get("cohort"),
                                  parameter_uncertainty=bool(pop_cfg.get("parameter_uncertainty", False)),
                                  replicates=int(pop_cfg.get("replicates", 1)), seed=seed)
    if "sample" in pop_cfg and "covariates" in pop_cfg:  # a trained twin's population model
        from .engine import twin_population

        if twin is None:
            raise ValueError(f"{what} config: population.covariates needs a twin engine (or a surrogate of a twin)")
        return twin_population(twin, pd.read_csv(base / pop_cfg["covariates"]), int(pop_cfg["sample"]), seed)
    if "sample" in pop_cfg:
        from .scenarios import unit_design

        if "parameters" in pop_cfg:
            pdom = ParameterDomain(exact.model, pop_cfg["parameters"], pop_cfg.get("fixed"))
        elif surrogate is not None:
            pdom = surrogate.domain.parameters
        else:
            raise ValueError(f"{what} config: population.sample needs 'parameters' ranges with an exact engine")
        n = int(pop_cfg["sample"])
        population = pdom.from_unit(unit_design(n, len(pdom.names), seed, "random"))
        population = population.assign(**({} if surrogate is not None else pdom.fixed))
        population.insert(0, "subject_id", [f"v{i}" for i in range(n)])
        return population
    raise ValueError(f"{what} config: population needs 'csv: FILE', 'sample: N' or 'virtual: N'")


def cmd_sweep(args) -> int:
    from .scenarios import ScenarioSpace
    from .sweep import Endpoint, distributions, heatmap, sweep, verify

    cfg = _yaml(args.config)
    allowed = {"engine", "population", "scenarios", "times", "endpoint", "verify", "out", "format"}
    unknown = set(cfg) - allowed
    if unknown:
        raise ValueError(f"sweep config: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    for key in ("engine", "population", "scenarios", "endpoint"):
        if key not in cfg:
            raise ValueError(f"sweep config: {key!r} is required")
    base = Path(args.config).parent
    engine, exact, surrogate = engine_from_config(cfg["engine"], base, "sweep")
    population = population_from_config(cfg["population"], base, exact, surrogate, "sweep")
    sc = cfg["scenarios"]
    space = ScenarioSpace.from_dict(sc["space"]) if "space" in sc else (surrogate.domain.scenarios if surrogate else None)
    if space is None:
        raise ValueError("sweep config: scenarios.space is required with an exact engine")
    grid = space.grid({k: values_from(v, f"scenarios.grid.{k}") for k, v in sc.get("grid", {}).items()})
    times = cfg.get("times", list(surrogate.domain.times) if surrogate else None)
    if times is None:
        raise ValueError("sweep config: times are required with an exact engine")
    endpoint = Endpoint(**cfg["endpoint"])
    out = Path(args.out) if args.out else base / cfg.get("out", "sweep_output")  # config paths: relative to it
    out.mkdir(parents=True, exist_ok=True)
    print(f"sweep: {len(population)} patients x {len(grid)} scenarios = {len(population) * len(grid)} pairs on "
          f"{type(engine).__name__}")
    sims = sweep(engine, population, list(grid), times, [endpoint.output], progress=not args.quiet)
    fmt = cfg.get("format", "csv")
    if fmt == "parquet":
        sims.frame.to_parquet(out / "sweep.parquet", index=False)
    elif fmt == "csv":
        sims.frame.to_csv(out / "sweep.csv", index=False)
    else:
        raise ValueError(f"sweep config: format must be csv or parquet, got {fmt!r}")
    sims.status.to_csv(out / "status.csv", index=False)
    values = endpoint.compute(sims)
    values.rename("value").reset_index().to_csv(out / "endpoint.csv", index=False)
    summary = values.groupby("scenario").agg(["mean", "std", "median", "count"])
    summary = grid.frame().merge(summary, left_on="scenario", right_index=True, how="left")
    summary.to_csv(out / "summary.csv", index=False)
    figures = [distributions(values, out / "distributions.png")]
    varied = [k for k, v in grid.values.items() if len(v) > 1]
    if len(varied) == 2:
        figures.append(heatmap(values, grid, out / "heatmap.png"))
    lines = [f"# Sweep: {endpoint.label}", "", f"{len(population)} patients x {len(grid)} scenarios, engine "
             f"`{sims.engine}`; {sims.n_failed} pair(s) failed or outside the domain (status.csv).", "",
             "Best scenarios (mean endpoint over patients):", "",
             markdown_table(summary.sort_values("mean", ascending=False).head(10)), ""]
    if "verify" in cfg and engine is not exact:
        v = cfg["verify"]
        res = {"random": verify(sims, exact, population, list(grid), endpoint, n_scenarios=int(v.get("n_scenarios", 5)))}
        if v.get("top_k"):
            res["top_k"] = verify(sims, exact, population, list(grid), endpoint, top_k=int(v["top_k"]))
        (out / "verify.json").write_text(json.dumps(res, indent=1))
        for label, r in res.items():
            lines.append(f"Exact re-run ({label}, {len(r['scenarios'])} scenarios): output abs. error median "
                         f"{r['abs_error']['median']:.4f}, worst {r['abs_error']['max']:.4f}; endpoint means differ by "
                         f"at most {r['endpoint']['max_abs_difference_of_means']:.4f}.")
        lines.append("")
    lines += [f"![{f.stem}]({f.name})" for f in figures]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"written: {out / 'summary.md'}, summary.csv, endpoint.csv, {', '.join(f.name for f in figures)}")
    return 0


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A pipe table of ``df`` (numbers to ``digits`` significant digits)."""
    def cell(v):
        return f"{v:.{digits}g}" if isinstance(v, (float, np.floating)) else str(v)
    rows = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    rows += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(rows)


def add_parsers(sub) -> None:
    """Register ``surrogate`` and ``sweep`` on the CLI's subparsers."""
    s = sub.add_parser("surrogate", help="neural surrogate emulators: fit, validate (certificate), sensitivity")
    ss = s.add_subparsers(dest="surrogate_command", required=True)
    f = ss.add_parser("fit", help="simulate a domain with the exact engine and train a certified surrogate")
    f.add_argument("--domain", required=True, help="domain YAML: model, parameters, scenarios, times, outputs")
    f.add_argument("--model", default=None, help="model name (overrides the domain file's)")
    f.add_argument("--twin", default=None, help="emulate a trained twin (its checkpoint folder) instead of a model; "
                                                "the domain file then needs scenarios and times, and parameters or "
                                                "width (between-patient SDs around the twin's population, default 3)")
    f.add_argument("--arch", default="auto", choices=["auto", "separable", "grid", "timed"],
                   help="timed: patient x (scenario, time) low-rank split reading the time since each dose, accurate "
                        "and fast for sweeps; separable: the same split emitting the whole grid; grid: one MLP to "
                        "the whole output grid; auto (default): timed when the domain has scenario factors, else grid")
    f.add_argument("--out", required=True, help="output folder (weights.pt + card.json)")
    f.add_argument("--n-train", type=int, default=20000, help="exact simulations to train on (default 20000)")
    f.add_argument("--members", type=int, default=5, help="ensemble members (default 5)")
    f.add_argument("--hidden", default=None, help="hidden layer sizes, e.g. 128,128,128 (default 128,128,128 for "
                                                  "timed, 256,256,256 otherwise)")
    f.add_argument("--epochs", type=int, default=300)
    f.add_argument("--batch-size", type=int, default=512, help="pairs per optimiser step (default 512; small data "
                                                               "sets train better with smaller batches, e.g. 16)")
    f.add_argument("--validate", type=int, default=1000, help="fresh pairs for the certificate (0: skip)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.set_defaults(func=cmd_surrogate_fit)
    v = ss.add_parser("validate", help="certify a surrogate against the exact engine on fresh pairs")
    v.add_argument("surrogate", help="a surrogate folder")
    v.add_argument("--n", type=int, default=2000, help="fresh pairs (default 2000)")
    v.add_argument("--seed", type=int, default=12345)
    v.set_defaults(func=cmd_surrogate_validate)
    e = ss.add_parser("sensitivity", help="Sobol indices of an endpoint (SALib), driven by the surrogate")
    e.add_argument("surrogate", help="a surrogate folder")
    e.add_argument("--output", required=True, help="the output the endpoint reads")
    e.add_argument("--kind", default="value_at", help="value_at, above, peak, auc or time_above")
    e.add_argument("--time", type=float, default=None)
    e.add_argument("--threshold", type=float, default=None)
    e.add_argument("--n", type=int, default=1024, help="Saltelli base sample size (default 1024)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", required=True, help="output folder")
    e.set_defaults(func=cmd_surrogate_sensitivity)
    w = sub.add_parser("sweep", help="run a scenario sweep from a YAML config (surrogate or exact engine)",
                       description=__doc__.split("Sweep config (YAML)::")[1] if "::" in __doc__ else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("config", help="sweep YAML (see the description)")
    w.add_argument("--out", default=None, help="output folder (default: the config's 'out')")
    w.add_argument("--quiet", action="store_true", help="no progress bars")
    w.set_defaults(func=cmd_sweep)
