"""Map a data set's observables onto a model's: rename, with an explicit unit conversion.

Loaders keep the names of their source (``log10_vl`` in challenger2022 and tsang2016, ``log10_ge`` in
kissler2021); models name what they compute (``log10_V``). :func:`map_observables` renames the rows of
chosen observables and converts their values and detection limits with ``model = scale * data + offset``, so
the conversion is written where the mapping is declared, e.g. ``{"log10_vl": "log10_V"}`` (same units:
log10 copies/ml in both) or ``{"log10_cp_per_swab": {"name": "log10_V", "offset": -0.3, "unit":
"log10 copies/ml (swab eluted in 2 ml)"}}``. Censoring is kept (``scale`` must be positive, so a value below
its limit stays below it); the conversions applied are recorded in ``report["observable_mapping"]``.

>>> import pandas as pd
>>> from hybridtwin.data import validate, map_observables
>>> data = validate(pd.DataFrame({"subject_id": ["a", "a"], "time": [1.0, 2.0], "observable": "log10_vl",
...                               "value": [5.0, 3.0], "lloq": 3.0, "censored": [False, True]}))
>>> out = map_observables(data, {"log10_vl": {"name": "log10_V", "offset": -1.0}})
>>> out.observations[["observable", "value", "lloq", "censored"]].values.tolist()
[['log10_V', 4.0, 2.0, False], ['log10_V', 2.0, 2.0, True]]
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..config import check_keys, suggest
from .schema import CohortData

RULE_KEYS = ("name", "scale", "offset", "unit")


def _hint(name: str, choices) -> str:
    close = suggest(name, choices)
    return f" (did you mean {close!r}?)" if close else ""


def _rule(source: str, rule) -> dict:
    """One mapping entry as ``{"name", "scale", "offset", "unit"}`` (validated)."""
    if isinstance(rule, str):
        rule = {"name": rule}
    if not isinstance(rule, dict):
        raise ValueError(f"observables[{source!r}] must be a model observable name or a mapping with keys "
                         f"{list(RULE_KEYS)}, got {rule!r}")
    rule = check_keys(rule, RULE_KEYS, f"observables[{source!r}]")
    if not isinstance(rule.get("name"), str) or not rule["name"]:
        raise ValueError(f"observables[{source!r}] needs 'name': the model observable it becomes")
    out = {"name": rule["name"], "scale": 1.0, "offset": 0.0, "unit": rule.get("unit")}
    for key in ("scale", "offset"):
        if key in rule:
            v = rule[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"observables[{source!r}].{key} must be a finite number, got {v!r}")
            out[key] = float(v)
    if out["scale"] <= 0:
        raise ValueError(f"observables[{source!r}].scale must be positive (a negative scale would turn censoring "
                         f"below a limit into censoring above it), got {out['scale']}")
    return out


def map_observables(data: CohortData, mapping: dict, model=None) -> CohortData:
    """Rename observables of ``data`` and convert their values and limits (see the module docstring).

    mapping: ``{data observable: model observable}`` or ``{data observable: {"name": ..., "scale": ..., "offset":
    ..., "unit": ...}}`` (``model = scale * data + offset``; ``unit`` is recorded). Observables not named are
    left as they are. model: optional; then every target must be an observable or state of the model.
    Raises ``ValueError`` for a source the data do not have (with a suggestion), two sources mapped onto one
    name, or a target that collides with an observable already in the data.
    """
    if not isinstance(mapping, dict):
        raise ValueError(f"observables must be a mapping {{data observable: model observable}}, got {mapping!r}")
    if not mapping:
        return data
    present = sorted(data.observations["observable"].unique().tolist())
    rules = {}
    for source, rule in mapping.items():
        if source not in present:
            raise ValueError(f"observables maps {source!r}, which the data do not have{_hint(source, present)}; "
                             f"the data's observables: {present}")
        rules[source] = _rule(source, rule)
    targets = [r["name"] for r in rules.values()]
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise ValueError(f"observables maps several data observables onto {twice}; map one each")
    clash = sorted(t for s, t in zip(rules, targets) if t in present and t not in rules and t != s)
    if clash:
        raise ValueError(f"observables maps onto {clash}, which the data already have under that name")
    if model is not None:
        from .. import models as _models

        m = _models.get(model) if isinstance(model, str) else model
        known = [*m.observable_names, *m.all_state_names]
        bad = [t for t in targets if t not in known]
        if bad:
            raise ValueError(f"observables maps onto {bad}, which model {m.name!r} does not compute{_hint(bad[0], known)}; "
                             f"its observables: {list(m.observable_names)}")
    obs = data.observations.copy()
    for source, r in rules.items():
        rows = (obs["observable"] == source).to_numpy()
        obs.loc[rows, "value"] = r["scale"] * obs.loc[rows, "value"].to_numpy(dtype=float) + r["offset"]
        if "lloq" in obs.columns:
            obs.loc[rows, "lloq"] = r["scale"] * obs.loc[rows, "lloq"].to_numpy(dtype=float) + r["offset"]
        obs.loc[rows, "observable"] = r["name"]
    obs = obs.sort_values(["subject_id", "time", "observable"], kind="stable").reset_index(drop=True)
    report = {**data.report, "observable_mapping": {s: dict(r) for s, r in rules.items()}}
    if "observables" in data.report:
        report["observables"] = sorted(np.unique(obs["observable"]).tolist())
    return replace(data, observations=obs, report=report)
