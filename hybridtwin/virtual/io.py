"""Ground truth of a virtual cohort and writing a :class:`~hybridtwin.data.CohortData` to disk.

>>> import tempfile
>>> from hybridtwin.virtual.cohort import make_virtual_cohort
>>> data = make_virtual_cohort("sarscov2_cd8", n_subjects=4, n_cohorts=2)
>>> paths = write_cohort_tables(data, tempfile.mkdtemp(), parquet=False)
>>> [p.name for p in paths]
['observations.csv', 'doses.csv', 'covariates.csv', 'true_parameters.csv', 'trajectories.csv', 'ground_truth.json']
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import CohortData
from .defaults import MARKER_AGE_SLOPE, MARKER_REFERENCE, MARKER_SD, NONLINEAR_TERMS, TERMS


def ground_truth(cfg, ids, cohort, features, eta, n_clipped, noise, status, failed) -> dict:
    names = list(cfg.cohort_names)
    feat = pd.DataFrame({"subject_id": ids, **features})
    eta = eta.copy()
    eta.insert(0, "subject_id", ids)
    assay = pd.DataFrame([dict(cohort=c, observable=o, scale=cfg.assay_scale[k], offset=cfg.assay_offset[k],
                               lloq=cfg.lloq[o], value_scale=cfg.value_scales[o], noise_sd=cfg.noise_sd[o])
                          for k, c in enumerate(names) for o in cfg.observables])
    regimens = {c: [dict(time=d.time, amount=d.amount, target=d.target, duration=d.duration, interval=d.interval,
                         additional=d.additional) for d in cfg.regimens[k]] for k, c in enumerate(names)}
    sampling = pd.DataFrame([dict(cohort=c, n_subjects=cfg.cohort_sizes[k], obs_min=cfg.obs_per_subject[k][0],
                                  obs_max=cfg.obs_per_subject[k][1], t_first=cfg.t_first, horizon=cfg.horizon,
                                  baseline_sample=cfg.baseline_sample, sampling_power=cfg.sampling_power,
                                  time_resolution=cfg.time_resolution) for k, c in enumerate(names)])
    cov_dist = pd.DataFrame([dict(cohort=c, age_min=cfg.age_ranges[k][0], age_max=cfg.age_ranges[k][1],
                                  female_fraction=cfg.female_fraction[k],
                                  log10_marker_mean_at_50=MARKER_REFERENCE + cfg.marker_shift[k],
                                  log10_marker_age_slope_per_decade=MARKER_AGE_SLOPE, log10_marker_sd=MARKER_SD)
                             for k, c in enumerate(names)])
    return {
        "model": cfg.resolved_model.name,
        "seed": cfg.seed,
        "parameter_model": "log p_i = log p_pop + sum_k beta_k x_ik + eta_i, eta_i ~ N(0, omega^2) (natural log); "
                           "p_pop = cohort_parameters[p][cohort of i] for a parameter set per cohort; "
                           "parameters without omega or effect: p_i = p_pop exactly",
        "population": dict(cfg.population),
        "cohort_parameters": {p: dict(zip(names, (float(v) for v in values)))
                              for p, values in cfg.cohort_parameters.items()},
        "omega": dict(cfg.omega),
        "effects": pd.DataFrame(list(cfg.effects), columns=["parameter", "term", "coefficient"]),
        "terms": dict(cfg.terms),
        "nonlinear_terms": [t for t in NONLINEAR_TERMS if t in TERMS],
        "features": feat,
        "random_effects": eta,
        "cohort_of_subject": dict(zip(ids, np.asarray(names, dtype=object)[cohort])),
        "noise": {"model": "additive on the log10 scale before the assay transform",
                  "formula": "y = scale_c * (f + eps) + offset_c, eps ~ N(0, sd^2); f = log10(value) for linear "
                             "observables (reported as 10**y), the value itself for log10 observables",
                  "sd": dict(cfg.noise_sd)},
        "assay": assay,
        "regimens": regimens,
        "sampling": sampling,
        "covariate_distributions": cov_dist,
        "observation_noise": noise,
        "n_clipped": n_clipped,
        "solver_status": status,
        "failed_subjects": failed,
        "config": cfg.to_dict(),
    }


#: entries of the ground truth that are tables (written to JSON as lists of records)
TABLE_KEYS = ("effects", "assay", "sampling", "covariate_distributions", "features", "random_effects",
              "observation_noise")


# -- writing ---------------------------------------------------------------------------------------------------
def _jsonable(x):
    if isinstance(x, pd.DataFrame):
        return x.to_dict(orient="records")
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def write_cohort_tables(data: CohortData, out_dir, parquet: bool | None = None,
                        skip_json_keys=("observation_noise", "features", "random_effects", "cohort_of_subject",
                                        "solver_status")) -> list[Path]:
    """Write ``observations, doses, covariates, true_parameters, trajectories`` as CSV (and Parquet when
    pyarrow is importable, or when ``parquet=True``) plus ``ground_truth.json`` when the data carry one
    (bulky per-row/per-subject entries are left out of the JSON: the tables hold them). Returns the paths.

    >>> import tempfile
    >>> from hybridtwin.virtual.cohort import make_virtual_cohort
    >>> paths = write_cohort_tables(make_virtual_cohort("baker2013", n_subjects=3, n_cohorts=1), tempfile.mkdtemp())
    >>> paths[0].name
    'observations.csv'
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if parquet is None:
        try:
            import pyarrow  # noqa: F401

            parquet = True
        except ImportError:
            parquet = False
    paths = []
    for name in ("observations", "doses", "covariates", "true_parameters", "trajectories"):
        table = getattr(data, name, None)
        if table is None:
            continue
        paths.append(out / f"{name}.csv")
        table.to_csv(paths[-1], index=False)
        if parquet:
            paths.append(out / f"{name}.parquet")
            table.to_parquet(paths[-1], index=False)
    gt = data.meta.get("ground_truth") if isinstance(data.meta, dict) else None
    if gt is not None:
        paths.append(out / "ground_truth.json")
        slim = {k: v for k, v in gt.items() if k not in skip_json_keys}
        paths[-1].write_text(json.dumps(_jsonable(slim), indent=1))
    return paths


def read_ground_truth(path) -> dict:
    """``ground_truth.json`` (written by :func:`write_cohort_tables`) back as a dict, its tables as DataFrames
    (``effects``, ``assay``, ...); ``VirtualCohortConfig.from_dict(gt["config"])`` rebuilds the config.

    >>> import tempfile
    >>> from hybridtwin.virtual.cohort import make_virtual_cohort
    >>> data = make_virtual_cohort("baccam2006", n_subjects=3, n_cohorts=3, cohort_parameters={"V0": (0.75, 0.25, 2)})
    >>> out = tempfile.mkdtemp()
    >>> _ = write_cohort_tables(data, out, parquet=False)
    >>> read_ground_truth(f"{out}/ground_truth.json")["cohort_parameters"]
    {'V0': {'cohort_1': 0.75, 'cohort_2': 0.25, 'cohort_3': 2.0}}
    """
    gt = json.loads(Path(path).read_text())
    for key in TABLE_KEYS:
        if isinstance(gt.get(key), list):
            columns = ["parameter", "term", "coefficient"] if key == "effects" and not gt[key] else None
            gt[key] = pd.DataFrame.from_records(gt[key], columns=columns)
    return gt
