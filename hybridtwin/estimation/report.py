"""The population table a pharmacometrician reads first: estimates, standard errors, RSE and intervals.

One row per estimated (or fixed) quantity, on the natural scale:

==================  ==========================================================================================
kind                estimate
==================  ==========================================================================================
``typical``         typical value of a patient parameter (reference cohort, covariates at their centre/reference)
``population``      a population-level parameter (no between-patient variability)
``fixed``           a fixed parameter (no SE)
``omega``           between-patient SD of the parameter on its unconstrained (log for rates) scale
``effect``          covariate effect on the unconstrained scale, per unit of the encoded covariate
``cohort``          the typical value in a non-reference cohort (``cohort_effects``)
``noise``           residual error SD (additive) or coefficient (proportional)
``assay_scale``     per-cohort assay scale / ``assay_offset`` offset
==================  ==========================================================================================

Standard errors come from ``twin.uncertainty`` (set by :func:`hybridtwin.estimation.set_uncertainty`) by the
delta method; intervals transform the interval of the unconstrained estimate, so they respect the declared
bounds of the parameter.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from scipy.stats import norm


def _expit(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _unit_of(twin, covariate: str) -> str:
    pre = twin.preprocessor
    units = getattr(pre, "units_", None) if pre is not None else None
    if isinstance(units, pd.DataFrame) and "feature" in units.columns and "unit" in units.columns:
        hit = units.loc[units["feature"] == covariate, "unit"]
        if len(hit):
            return str(hit.iloc[0])
    if isinstance(units, dict) and covariate in units:
        u = units[covariate]
        return str(u.get("unit", u)) if isinstance(u, dict) else str(u)
    return ""


def population_table(twin, level: float = 0.90) -> pd.DataFrame:
    """See the module docstring. ``level``: confidence level of ``lower``/``upper`` (needs ``twin.uncertainty``)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    from .fisher import population_columns

    q = float(norm.ppf(0.5 + level / 2))
    space = twin.model.parameter_space
    u = twin.uncertainty
    index = {n: i for i, n in enumerate(u["names"])} if u else {}
    cov = np.asarray(u["cov"], dtype=float) if u else None

    def var(*names):
        """Variance of the sum of the named unconstrained estimates (nan when one has none)."""
        if cov is None or not all(n in index for n in names):
            return math.nan
        ids = [index[n] for n in names]
        return float(cov[np.ix_(ids, ids)].sum())

    rows = []

    def add(kind, quantity, parameter, z, v, to_natural, **extra):
        sd = math.sqrt(v) if np.isfinite(v) and v >= 0 else math.nan
        est = to_natural(z)
        if np.isfinite(sd):
            eps = 1e-6
            deriv = (to_natural(z + eps) - to_natural(z - eps)) / (2 * eps)
            se = abs(deriv) * sd
            lo, hi = sorted((to_natural(z - q * sd), to_natural(z + q * sd)))
        else:
            se = lo = hi = math.nan
        rse = 100.0 * se / abs(est) if np.isfinite(se) and est != 0 else math.nan
        rows.append(dict(quantity=quantity, kind=kind, parameter=parameter, role=twin.roles.get(parameter, ""),
                         estimate=est, se=se, rse_percent=rse, lower=lo, upper=hi, **extra))

    def constrain(name):
        return lambda z: float(space[name].constrain(torch.tensor(z, dtype=torch.float64)))

    with torch.no_grad():
        zfull = twin.z_full(twin.mu[None].to(twin.dtype))[0].double()
        for name in space.names:
            j = space.index(name)
            role = twin.roles[name]
            if role == "patient":
                add("typical", name, name, float(zfull[j]), var(f"mu[{name}]"), constrain(name),
                    transform=space[name].transform)
            elif role == "population":
                add("population", name, name, float(zfull[j]), var(f"mu_population[{name}]"), constrain(name),
                    transform=space[name].transform)
            else:
                rows.append(dict(quantity=name, kind="fixed", parameter=name, role="fixed", estimate=float(
                    space.constrain(zfull[None])[0, j]), transform=space[name].transform))
        for j, name in enumerate(twin.patient_names):
            add("omega", f"omega({name})", name, float(twin.log_omega[j]), var(f"log_omega[{name}]"), math.exp)
        if twin.config.covariate_effects:
            for j, name in enumerate(twin.patient_names):
                for c, cov_name in enumerate(twin.covariate_names):
                    add("effect", f"{name} ~ {cov_name}", name, float(twin.beta[j, c]),
                        var(f"beta[{name}, {cov_name}]"), lambda z: z, covariate=cov_name,
                        unit=_unit_of(twin, cov_name))
        for col in population_columns(twin):
            if col["kind"] != "cohort":
                continue
            name, cohort = col["parameter"], col["cohort"]
            j = space.index(name)
            base = f"mu[{name}]" if twin.roles[name] == "patient" else f"mu_population[{name}]"
            z = float(zfull[j] + twin.cohort_shift[col["index"]])
            add("cohort", f"{name} [{cohort}]", name, z, var(base, col["name"]), constrain(name), cohort=cohort)
        describe = twin.observation.describe()
        for col in population_columns(twin):
            kind, o = col["kind"], col["parameter"]
            if kind not in ("noise", "miss", "assay_scale", "assay_offset"):
                continue
            tensor = getattr(twin.observation, col["tensor"].split(".", 1)[1])
            z = float(tensor[col["index"]])
            if kind == "noise":
                label = "sigma_additive" if "add" in col["tensor"] else "sigma_proportional"
                add("noise", f"{label}({o})", o, z, var(col["name"]), math.exp, noise=describe[o]["noise"])
            elif kind == "miss":
                add("miss", f"miss_probability({o})", o, z, var(col["name"]), _expit)
            elif kind == "assay_scale":
                add(kind, f"assay_scale({o}) [{col['cohort']}]", o, z, var(col["name"]), math.exp, cohort=col["cohort"])
            elif kind == "assay_offset":
                add(kind, f"assay_offset({o}) [{col['cohort']}]", o, z, var(col["name"]), lambda v: v,
                    cohort=col["cohort"])
        for k, o in enumerate(twin.observation.observables):  # noise kept at its initial value
            if not twin.observation.log_sigma_add.requires_grad and bool(twin.observation.uses_add[k]):
                rows.append(dict(quantity=f"sigma_additive({o})", kind="noise", parameter=o, role="fixed",
                                 estimate=float(twin.observation.log_sigma_add[k].exp())))
            if "miss_probability" in describe[o] and not twin.observation.logit_miss.requires_grad:
                rows.append(dict(quantity=f"miss_probability({o})", kind="miss", parameter=o, role="fixed",
                                 estimate=describe[o]["miss_probability"]))
    cols = ["quantity", "kind", "parameter", "role", "estimate", "se", "rse_percent", "lower", "upper", "covariate",
            "unit", "cohort", "transform", "noise"]
    table = pd.DataFrame(rows)
    for c in cols:
        if c not in table.columns:
            table[c] = np.nan if c in ("se", "rse_percent", "lower", "upper") else ""
    table = table[cols]
    for c in ("covariate", "unit", "cohort", "transform", "noise"):
        table[c] = table[c].fillna("").astype(str)
    table.attrs["level"] = level
    return table
