"""Split-conformal calibration of prediction bands (conformalised quantile regression).

A twin's predictive bands are only as good as its noise model: fitted to real data with a broad residual SD they
are often too wide, and a misspecified model can make them too narrow. Split conformal prediction fixes their
coverage without refitting anything (Romano, Patterson & Candes 2019, *Conformalized quantile regression*,
NeurIPS; Vovk, Gammerman & Shafer 2005): forecast people the twin did not see in the calibration set exactly as
new people will be forecast (same samples shown, same route), score every quantified observation by its distance
from the predicted median in units of the band's half-width on its side, and take the score's ``level`` quantile
(with the finite-sample correction: the ``ceil((n + 1) level)``-th smallest of ``n`` scores) as the factor that stretches or shrinks the band. On new people exchangeable
with the calibration people, the rescaled band covers at least ``level`` of the observations.

Only quantified rows score (a value below its limit of quantification has no distance). Factors are per
observable. The median is never moved.

Example
-------
>>> import pandas as pd
>>> from hybridtwin.conformal import conformal_bands
>>> pred = pd.DataFrame({"subject_id": list("aaaaabbbbb"), "time": [1.0, 2, 3, 4, 5] * 2, "observable": "y",
...                      "median": 5.0, "lower": 3.0, "upper": 7.0})
>>> obs = pred[["subject_id", "time", "observable"]].assign(
...     value=[5.1, 4.8, 5.3, 4.6, 5.2, 4.9, 5.4, 4.7, 5.0, 5.5], censored=False)
>>> bands = conformal_bands(pred, obs, level=0.8)   # the band is far too wide for these values
>>> round(bands.factors["y"], 3)   # the 9th smallest of the 10 scores |value - 5| / 2
0.2
>>> bands.apply(pred)[["lower", "upper"]].iloc[0].round(3).tolist()
[4.6, 5.4]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .data.schema import _require

__all__ = ["ConformalBands", "conformal_bands"]

_KEYS = ["subject_id", "time", "observable"]


@dataclass(frozen=True)
class ConformalBands:
    """Per-observable factors for a band's half-widths (see :func:`conformal_bands`)."""

    factors: dict
    level: float
    n_calibration: dict = field(default_factory=dict)

    def apply(self, pred: pd.DataFrame, lower: str = "lower", upper: str = "upper") -> pd.DataFrame:
        """``pred`` with the band ``(lower, upper)`` rescaled about ``median`` by each row's observable's factor.
        Rows of an observable without a factor are an error; ``attrs["conformal"]`` records the factors."""
        _require(pred, ["observable", "median", lower, upper], "pred")
        unknown = sorted(set(pred["observable"]) - set(self.factors))
        if unknown:
            raise ValueError(f"no conformal factor for observable(s) {unknown}; calibrated: {sorted(self.factors)}")
        f = pred["observable"].map(self.factors).to_numpy(float)
        med = pred["median"].to_numpy(float)
        out = pred.copy()
        out[lower] = med - f * (med - pred[lower].to_numpy(float))
        out[upper] = med + f * (pred[upper].to_numpy(float) - med)
        out.attrs = dict(pred.attrs, conformal={"level": self.level, "factors": dict(self.factors)})
        return out


def conformal_bands(pred: pd.DataFrame, observations: pd.DataFrame, level: float = 0.90,
                    lower: str = "lower", upper: str = "upper") -> ConformalBands:
    """Fit split-conformal factors for the band ``(lower, upper)`` of ``pred`` so that it covers ``level``.

    pred: forecasts of calibration rows (``subject_id, time, observable, median`` and the band), e.g. from
    :func:`hybridtwin.personalise.predict` for people held out of fitting, each shown what new people will be shown.
    observations: the calibration rows' measurements (``subject_id, time, observable, value``; ``censored`` rows
    are skipped). Rows are matched on ``(subject_id, time, observable)``; rows of ``pred`` without a measurement
    are ignored, duplicated keys are an error. Returns a :class:`ConformalBands`; ``.apply(new_pred)`` rescales.

    The score of a row is ``|value - median| / h`` with ``h`` the band's half-width on the value's side; the factor
    is the ``ceil((n + 1) level)``-th smallest of the ``n`` scores, so a finite factor needs enough rows per
    observable (9 at level 0.9, 19 at 0.95).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    _require(pred, _KEYS + ["median", lower, upper], "pred")
    _require(observations, _KEYS + ["value"], "observations")
    obs = observations
    if "censored" in obs.columns:
        obs = obs[~obs["censored"].astype(bool)]
    for name, df in (("pred", pred), ("observations", obs)):
        dup = df.duplicated(_KEYS)
        if dup.any():
            raise ValueError(f"{name} has {int(dup.sum())} duplicated (subject_id, time, observable) rows, e.g. "
                             f"{df.loc[dup, _KEYS].iloc[0].tolist()}")
    m = obs[_KEYS + ["value"]].merge(pred[_KEYS + ["median", lower, upper]], on=_KEYS)
    m = m[np.isfinite(m[["value", "median", lower, upper]].to_numpy(float)).all(1)]
    if m.empty:
        raise ValueError("no quantified calibration rows: no finite measurement of observations matches a finite "
                         "forecast of pred on (subject_id, time, observable)")
    bad = (m[upper] < m["median"]) | (m[lower] > m["median"])
    if bad.any():
        raise ValueError(f"{int(bad.sum())} rows of pred have a band that does not contain its median")
    factors, counts = {}, {}
    for name, g in m.groupby("observable", sort=True):
        value, med = g["value"].to_numpy(float), g["median"].to_numpy(float)
        half = np.where(value >= med, g[upper].to_numpy(float) - med, med - g[lower].to_numpy(float))
        score = np.abs(value - med) / np.maximum(half, 1e-9)
        n = len(score)
        rank = math.ceil((n + 1) * level - 1e-9)  # the finite-sample corrected rank of the score
        if rank > n:
            need = n
            while math.ceil((need + 1) * level - 1e-9) > need:
                need += 1
            raise ValueError(f"observable {name!r}: {n} quantified calibration rows are too few for level {level} "
                             f"(need at least {need}); calibrate on more people or lower the level")
        factors[name] = float(np.sort(score)[rank - 1])
        counts[name] = n
    return ConformalBands(factors, float(level), counts)
