"""The ``hybridtwin`` command line.

Examples::

    hybridtwin models                      # table of built-in models
    hybridtwin models baccam2006           # parameters of one model
    hybridtwin simulate baccam2006 --t-end 10 --param beta=4e-5 --dose 2:5:antiviral --out flu.csv
    hybridtwin quickstart --out quickstart_output
    hybridtwin cohort vaccine_asc --subjects 600 --cohorts 3 --seed 0 --out cohort_vaccine
    hybridtwin train training/configs/vaccine_small.yaml --out checkpoints   # add --devices 2 --strategy ddp
    hybridtwin report checkpoints/vaccine_small --data obs.csv --covariates cov.csv --doses doses.csv --out report/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import models as _models
from .config import check_integer, check_positive
from .dosing import Dose
from .personalise import AUTO, METHODS
from .simulation import simulate


def _key_values(items: list[str], what: str) -> dict[str, float]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{what} must look like name=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise ValueError(f"{what} {k!r}: {v!r} is not a number") from None
    return out


def _parse_dose(text: str) -> Dose:
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"--dose must look like time:amount:target[:duration], got {text!r}")
    try:
        time, amount = float(parts[0]), float(parts[1])
        duration = float(parts[3]) if len(parts) == 4 else 0.0
    except ValueError:
        raise ValueError(f"--dose {text!r}: time, amount and duration must be numbers") from None
    return Dose(time, amount, parts[2], duration)


def _at_least(value, minimum: int, option: str) -> None:
    """An optional integer option (None: not given) must be at least ``minimum``."""
    if value is not None:
        check_integer(value, option, minimum)


def _os_error(exc: OSError) -> str:
    """One line for an OSError: what failed, on which path."""
    where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "") if exc.filename else ""
    return f"{exc.strerror or exc}{f': {where}' if where else ''}"


def _writable_dir(path: Path, option: str = "--out") -> Path:
    """Create ``path`` (a folder) if needed and check a file can be written in it; ValueError if not."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"{option} {path}: {folder} is a file, not a folder; choose another location")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        import tempfile

        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write there ({_os_error(exc)}); choose a writable location"
                         ) from None
    return path


def _writable_file(path: Path, option: str = "--out") -> Path:
    """Check that the file ``path`` can be written (creating its folder); ValueError if not."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file path, e.g. {path / 'out.csv'}")
    _writable_dir(path.parent, option)
    return path


def models_table() -> pd.DataFrame:
    rows = []
    for name in _models.available():
        m = _models.get(name)
        rows.append(dict(model=name, states=", ".join(m.state_names), time_unit=m.time_unit,
                         interventions=", ".join(f"{k} ({v.target})" for k, v in m.interventions.items()
                                                 if k != v.target) or "-",
                         citation=m.short_citation))
    return pd.DataFrame(rows)


def cmd_models(args) -> int:
    if args.name:
        m = _models.get(args.name)
        print(f"{m.name} ({m.time_unit}): {m.description}\n{m.citation}\n")
        print("states:", ", ".join(m.state_names), "| drug compartments:", ", ".join(m.compartment_names) or "-")
        print("observables:", ", ".join(m.observable_names) or "-")
        with pd.option_context("display.width", 160, "display.max_colwidth", 60):
            print(m.parameter_space_frame().to_string(index=False))
        return 0
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(models_table().to_string(index=False))
    return 0


def cmd_simulate(args) -> int:
    model = _models.get(args.model)
    t_end = args.t_end if args.t_end is not None else model.default_t_end
    check_positive(t_end, "--t-end")
    _at_least(args.n_times, 1, "--n-times")
    check_positive(args.rtol, "--rtol")
    times = np.linspace(0.0, t_end, args.n_times)
    doses = [_parse_dose(d) for d in args.dose or []]
    params, init = _key_values(args.param, "--param"), _key_values(args.init, "--init")
    out = _writable_file(Path(args.out))
    df = simulate(model, times, params=params, initial_state=init, doses=doses, rtol=args.rtol)
    df.to_csv(out, index=False)
    print(f"wrote {len(df)} rows x {df.shape[1]} columns to {out}")
    return 0


def cmd_quickstart(args) -> int:
    from .quickstart import run_quickstart, run_real_quickstart

    if args.data is not None:
        if args.data_dir is not None and not Path(args.data_dir).is_dir():
            raise ValueError(f"--data-dir {args.data_dir} is not a folder")
        run_real_quickstart(_writable_dir(Path(args.out)), args.data, args.data_dir)
        return 0
    for name in ("subjects", "iterations", "surrogate_sims", "replicates", "patients_per_arm"):
        _at_least(getattr(args, name), 1, "--" + name.replace("_", "-"))
    if args.subjects < 30:
        raise ValueError(f"--subjects must be an integer >= 30 (3 cohorts with held-out patients), got {args.subjects}")
    out = _writable_dir(Path(args.out))
    sizes = dict(n_subjects=args.subjects, iterations=args.iterations, surrogate_sims=args.surrogate_sims,
                 replicates=args.replicates, n_per_arm=args.patients_per_arm)
    if args.fast:  # a 1-2 minute run through every step: rough numbers, for trying things out and for tests
        sizes.update(n_subjects=min(args.subjects, 60), iterations=min(args.iterations, 6), amortise_epochs=2,
                     n_simulations=400, surrogate_sims=min(args.surrogate_sims, 400), surrogate_epochs=20,
                     n_population=300, n_per_arm=min(args.patients_per_arm, 30), replicates=min(args.replicates, 20),
                     n_trials=12)
    run_quickstart(out, gallery=not args.no_gallery, seed=args.seed, **sizes)
    return 0


def cmd_cohort(args) -> int:
    from .virtual import make_virtual_cohort, write_cohort_tables

    _at_least(args.subjects, 1, "--subjects")
    _at_least(args.cohorts, 1, "--cohorts")
    _at_least(args.seed, 0, "--seed")
    _writable_dir(Path(args.out))
    data = make_virtual_cohort(args.model, n_subjects=args.subjects, n_cohorts=args.cohorts, seed=args.seed)
    paths = write_cohort_tables(data, args.out)
    print(f"virtual cohort of {args.model}: {data!r}")
    for path in paths:
        print(f"  wrote {path}")
    gt = data.meta["ground_truth"]
    summary = data.summary().drop(columns=["observables"])
    assay = gt["assay"].groupby("cohort", sort=True).first()
    summary["assay_scale"] = summary["cohort"].map(assay["scale"])
    summary["assay_offset"] = summary["cohort"].map(assay["offset"])
    summary["regimen"] = summary["cohort"].map(
        {c: ", ".join(f"{d['target']}@{d['time']:g}" for d in reg) or "-" for c, reg in gt["regimens"].items()})
    with pd.option_context("display.width", 200):
        print(summary.to_string(index=False))
    return 0


def cmd_train(args) -> int:
    import dataclasses
    import os

    try:
        import training  # noqa: F401  (Lightning is imported here, never by the library)
    except ImportError:
        raise ValueError("the `training` package (Lightning runs) is not installed: install hybridtwin from a clone "
                         "of the repository with `pip install -e .` (it installs `training` beside the library)") from None
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from training.config import RunConfig
    from training.module import SolveFailureError
    from training.train import TrainingInterrupted, train

    _at_least(args.devices, 1, "--devices")
    _at_least(args.max_epochs, 1, "--max-epochs")
    _readable_config(Path(args.config))
    cfg = RunConfig.from_yaml(args.config)
    if args.out:
        cfg = dataclasses.replace(cfg, out=args.out)
    cfg = cfg.with_trainer(devices=args.devices, strategy=args.strategy, max_epochs=args.max_epochs)
    main_process = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
    try:
        _, run_dir = train(cfg, resume=args.resume)
    except (MisconfigurationException, SolveFailureError) as exc:
        raise ValueError(str(exc)) from None
    except TrainingInterrupted as exc:  # SIGTERM: exit 143 (128 + 15), as a shell reports it
        if main_process:
            print(f"hybridtwin train: {exc}", file=sys.stderr)
        return exc.code
    if main_process:
        if cfg.estimation.method == "saem":
            print(f"estimated twin: {run_dir / 'weights.pt'} + {run_dir / 'card.json'} "
                  f"(hybridtwin.load({str(run_dir)!r})); SAEM trajectory in {run_dir / 'saem_history.csv'}")
        else:
            print(f"trained twin: {run_dir / 'weights.pt'} + {run_dir / 'card.json'} "
                  f"(hybridtwin.load({str(run_dir)!r})); resume with --resume; logs in {run_dir / 'logs'}")
    return 0


def _readable_config(path: Path) -> None:
    """A clear error for a config that is missing, a folder, unreadable or not text."""
    if not path.exists():
        raise ValueError(f"config file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"config {path} is a folder; give a YAML run config file, "
                         "e.g. training/configs/vaccine_small.yaml")
    try:
        path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"config file {path} is not a text (UTF-8 YAML) file") from None


def _read_table(path: str | None, what: str) -> pd.DataFrame | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--{what}: no such file {p}")
    return pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)


def cmd_predict(args) -> int:
    from .checkpoint import load

    _at_least(args.n_times, 1, "--n-times")
    _at_least(args.samples, 1, "--samples")
    if not 0 < args.level < 1:
        raise ValueError(f"--level must be in (0, 1), e.g. 0.9 for a 5-95% interval, got {args.level}")
    end = None
    if args.times is not None and not args.times.endswith((".csv", ".parquet")):
        try:
            end = float(args.times)
        except ValueError:
            raise ValueError(f"--times must be an end time (a number) or a .csv/.parquet table of prediction rows, "
                             f"got {args.times!r}") from None
        if not (np.isfinite(end) and end > 0):
            raise ValueError(f"--times: the end time must be a positive number, got {args.times}")
    twin = load(args.checkpoint)
    cov = _read_table(args.covariates, "covariates")
    obs, doses = _read_table(args.observations, "observations"), _read_table(args.doses, "doses")
    if args.times is not None:
        times = _read_table(args.times, "times") if end is None else np.linspace(0.0, end, args.n_times)
    else:
        times = np.linspace(0.0, twin.model.default_t_end, args.n_times)
    out = _writable_file(Path(args.out))
    traj, par = twin.predict(cov, obs, doses, times=times, method=args.method, n_samples=args.samples,
                             level=args.level, seed=args.seed, reference_cohort=args.reference_cohort)
    traj.to_csv(out, index=False)
    par_path = out.with_name(out.stem + "_parameters.csv")
    par.to_csv(par_path, index=False)
    print(f"personalised {par['subject_id'].nunique()} patient(s) by {args.method}; wrote {out} ({len(traj)} rows) "
          f"and {par_path}")
    return 0


def cmd_report(args) -> int:
    from .checkpoint import load, read_card
    from .data import validate
    from .diagnostics.credibility import credibility_report

    _at_least(args.samples, 1, "--samples")
    _at_least(args.replicates, 1, "--replicates")
    try:
        levels = tuple(float(x) for x in args.levels.split(","))
    except ValueError:
        raise ValueError(f"--levels must be comma-separated numbers in (0, 1), e.g. 0.5,0.9, got {args.levels!r}") from None
    twin = load(args.checkpoint)
    try:
        obs = _read_table(args.data, "data")
    except pd.errors.EmptyDataError:
        raise ValueError(f"--data {args.data} is empty: nothing to report on") from None
    cov, doses = _read_table(args.covariates, "covariates"), _read_table(args.doses, "doses")
    if "observable" in obs.columns:
        unknown = sorted(set(obs["observable"].astype(str)) - set(twin.config.observables))
        if unknown:
            raise ValueError(f"--data has observable(s) {unknown} that this twin does not know "
                             f"(its observables: {list(twin.config.observables)})")
    data = validate(obs, doses, cov, model=twin.model, min_time=twin.min_data_time)
    out = _writable_dir(Path(args.out))
    path = credibility_report(twin, data, out, method=args.method, seed=args.seed, levels=levels,
                              card=read_card(args.checkpoint), n_samples=args.samples, n_replicates=args.replicates,
                              reference_cohort=args.reference_cohort)
    print(f"credibility report of {args.checkpoint} on {data.report['n_subjects']} patient(s): {path} and "
          f"{path.with_suffix('.html')} (figures and tables in {out})")
    return 0

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybridtwin", description="Immune digital twins: models, simulation, training.")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("models", help="list built-in models, or show one model's parameters")
    m.add_argument("name", nargs="?", help="a model name to describe")
    m.set_defaults(func=cmd_models)
    s = sub.add_parser("simulate", help="simulate one subject and write a CSV")
    s.add_argument("model")
    s.add_argument("--t-end", type=float, default=None, help="end time (model time unit; default: the model's)")
    s.add_argument("--n-times", type=int, default=101, help="number of equally spaced output times")
    s.add_argument("--param", action="append", metavar="NAME=VALUE", help="override a parameter (repeatable)")
    s.add_argument("--init", action="append", metavar="STATE=VALUE", help="override an initial state (repeatable)")
    s.add_argument("--dose", action="append", metavar="TIME:AMOUNT:TARGET[:DURATION]", help="add a dose (repeatable)")
    s.add_argument("--rtol", type=float, default=1e-8)
    s.add_argument("--out", required=True, help="output CSV path")
    s.set_defaults(func=cmd_simulate)
    q = sub.add_parser("quickstart", help="the whole library in ~10 minutes: data -> hybrid twin -> held-out forecasts -> "
                                          "surrogate -> virtual booster trial -> report",
                       description="Virtual multi-cohort vaccine data, a hybrid twin (vaccine_asc + neural closure + "
                                   "encoder), held-out patients personalised, a certified surrogate, a virtual booster "
                                   "trial with power and schedule optimisation; ends with report.md/report.html. "
                                   "--data challenger2022: the twin-fit part on real SARS-CoV-2 data instead, from the "
                                   "pretrained checkpoint.")
    q.add_argument("--out", default="quickstart_output")
    q.add_argument("--fast", action="store_true", help="tiny sizes: every step in a minute or two (rough numbers)")
    q.add_argument("--subjects", type=int, default=240, help="virtual patients in the data set (default 240)")
    q.add_argument("--iterations", type=int, default=120, help="SAEM iterations (default 120)")
    q.add_argument("--surrogate-sims", type=int, default=8000, help="exact twin simulations for the surrogate (8000)")
    q.add_argument("--replicates", type=int, default=200, help="replicate trials (default 200)")
    q.add_argument("--patients-per-arm", type=int, default=100, help="patients per arm (default 100)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--no-gallery", action="store_true", help="skip the figures of every built-in model")
    q.add_argument("--data", default=None, choices=["challenger2022"],
                   help="real data instead: the pretrained SARS-CoV-2 twin on the studies it never saw")
    q.add_argument("--data-dir", default=None, help="the data set's folder (default: the held-out patients shipped "
                                                     "with the checkpoint)")
    q.set_defaults(func=cmd_quickstart)
    c = sub.add_parser("cohort", help="simulate a multi-cohort virtual data set with known ground truth")
    c.add_argument("model")
    c.add_argument("--subjects", type=int, default=100, help="number of virtual subjects (default 100)")
    c.add_argument("--cohorts", type=int, default=3, help="number of cohorts (default 3)")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument("--out", required=True, help="output folder for the CSV (and Parquet) tables")
    c.set_defaults(func=cmd_cohort)
    t = sub.add_parser("train", help="train a twin from a YAML run config (PyTorch Lightning)",
                       description="Train a twin from a YAML run config. The run folder <out>/<name>/ is locked while "
                                   "the run lasts. SIGTERM stops the run at the end of the current step with exit "
                                   "status 143, keeping last.ckpt (the last finished epoch) for --resume.")
    t.add_argument("config", help="YAML run config, e.g. training/configs/vaccine_small.yaml")
    t.add_argument("--devices", type=int, default=None, help="number of devices/processes (default: the config's)")
    t.add_argument("--strategy", default=None, help="Lightning strategy, e.g. ddp (default: the config's)")
    t.add_argument("--max-epochs", type=int, default=None, help="override trainer.max_epochs")
    t.add_argument("--out", default=None, help="parent folder of the run folder (default: the config's 'out')")
    t.add_argument("--resume", action="store_true", help="continue the run from <out>/<name>/last.ckpt")
    t.set_defaults(func=cmd_train)
    r = sub.add_parser("predict", help="personalise new patients with a trained twin and predict with intervals")
    r.add_argument("checkpoint", help="a run folder with weights.pt + card.json")
    r.add_argument("--covariates", required=True, help="CSV: subject_id + the training covariates (+ optional cohort)")
    r.add_argument("--observations", default=None, help="CSV: subject_id, time, observable, value [, lloq, censored]")
    r.add_argument("--doses", default=None, help="CSV: subject_id, time, amount, target [, duration]")
    r.add_argument("--times", default=None, help="end time of a grid, or a CSV of rows subject_id, time, observable")
    r.add_argument("--n-times", type=int, default=101, help="points of the prediction grid")
    r.add_argument("--method", default="auto", choices=[AUTO, *METHODS],
                   help="personalisation route (default auto: the encoder corrected by importance sampling where "
                        "there are observations, the encoder alone where there are covariates only)")
    r.add_argument("--samples", type=int, default=200, help="posterior samples for the intervals")
    r.add_argument("--level", type=float, default=0.9, help="interval level (default 0.9 = 5-95%%)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--reference-cohort", action="store_true",
                   help="patients without a cohort label use the twin's reference (first) cohort; without this "
                        "flag a twin that knows several cohorts refuses them")
    r.add_argument("--out", required=True, help="output CSV of trajectories (parameters go to <out>_parameters.csv)")
    r.set_defaults(func=cmd_predict)
    g = sub.add_parser("report", help="credibility report of a trained twin on a data set (Markdown + HTML)",
                       description="Personalise every patient of the data on its own observations and write report.md, "
                                   "report.html, figures and tables: observed vs predicted, residuals, a censoring-aware "
                                   "VPC per cohort, interval calibration, subgroups, identifiability, degeneracy checks "
                                   "and the model card.")
    g.add_argument("checkpoint", help="a run folder with weights.pt + card.json")
    g.add_argument("--data", required=True, help="observations CSV/Parquet: subject_id, time, observable, value "
                                                 "[, cohort, lloq, censored]")
    g.add_argument("--covariates", default=None, help="CSV/Parquet: subject_id + the training covariates")
    g.add_argument("--doses", default=None, help="CSV/Parquet: subject_id, time, amount, target [, duration]")
    g.add_argument("--method", default="map", choices=list(METHODS),
                   help="how each patient is personalised on its data (default map)")
    g.add_argument("--levels", default="0.5,0.8,0.9,0.95", help="interval levels to calibrate (comma-separated)")
    g.add_argument("--samples", type=int, default=200, help="posterior draws per patient for the intervals")
    g.add_argument("--replicates", type=int, default=100, help="simulated replicates of the data for the VPC")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--reference-cohort", action="store_true",
                   help="data without a cohort column use the twin's reference (first) cohort")
    g.add_argument("--out", required=True, help="output folder (created)")
    g.set_defaults(func=cmd_report)
    from .cli_surrogate import add_parsers
    from .cli_trial import add_parser as add_trial_parser

    add_parsers(sub)
    add_trial_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as exc:
        print(f"hybridtwin {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder that cannot be read or written
        print(f"hybridtwin {args.command}: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # training.train.TrainingInterrupted (SIGTERM) from a command that trains
        if not hasattr(exc, "signum") or not isinstance(exc.code, int):
            raise
        print(f"hybridtwin {args.command}: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
