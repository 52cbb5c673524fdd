"""Plots people would rather look at than read.

>>> import hybridtwin as ht
>>> from hybridtwin.diagnostics import plot_simulation
>>> fig = plot_simulation("baccam2006", ht.simulate("baccam2006", [0, 2, 4, 6, 8, 10]))
>>> len(fig.axes) >= 4
True
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .. import models as _models  # noqa: E402


def plot_simulation(model, table: pd.DataFrame, title: str | None = None, doses=None):
    """One panel per state and observable of a :func:`hybridtwin.simulate` table (several subjects overlaid).

    States listed in the model's ``log_scale_states`` are drawn on a log axis (at most 12 decades below the peak, so
    extinct tails do not flatten the picture; log10 observables likewise); dose times, if given, are marked with
    dotted vertical lines. Returns the matplotlib Figure.
    """
    model = _models.get(model)
    columns = [c for c in table.columns if c not in ("time", "subject_id")]
    if not columns:
        raise ValueError("table has no state or observable columns to plot")
    n = len(columns)
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.9 * nrow), squeeze=False)
    groups = table.groupby("subject_id", sort=False) if "subject_id" in table.columns else [(None, table)]
    unit = model.time_unit if model.time_unit != "dimensionless" else "time (dimensionless)"
    for ax, col in zip(axes.flat, columns):
        for _, g in groups:
            ax.plot(g["time"], g[col], lw=1.4, alpha=0.8)
        values = table[col].to_numpy(dtype=float)
        if col in model.log_scale_states and (values > 0).any():
            ax.set_yscale("log")
            top = float(values[values > 0].max())
            ax.set_ylim(bottom=max(float(values[values > 0].min()), top * 1e-12), top=top * 3)  # 12 decades at most
        elif col.startswith("log10_") and len(values):
            top = float(max(values.max(), 0.0))
            ax.set_ylim(bottom=max(float(values.min()), top - 12.0) - 0.5, top=top + 0.5)
        for d in doses or []:
            ax.axvline(float(d.time), color="0.5", ls=":", lw=1)
        ax.set_title(col, fontsize=10)
        ax.set_xlabel(unit if unit.startswith("time") else f"time ({unit})", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title or f"{model.name}: {model.description}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_prediction(trajectories: pd.DataFrame, observations: pd.DataFrame | None = None,
                    context: pd.DataFrame | None = None, max_subjects: int = 6, title: str | None = None):
    """Personalised predictions: one panel per subject (and observable) with the median, the predictive
    interval, the observations the twin was given (``context``, filled) and later ones (open); censored values
    are drawn as downward triangles at their limit.

    >>> import pandas as pd
    >>> traj = pd.DataFrame({"subject_id": "a", "time": [0.0, 10.0], "observable": "log10_Ab", "median": [1.0, 3.0],
    ...                      "lower": [0.5, 2.5], "upper": [1.5, 3.5]})
    >>> len(plot_prediction(traj).axes)
    1
    """
    subjects = list(pd.unique(trajectories["subject_id"]))[:max_subjects]
    obs_names = list(pd.unique(trajectories["observable"]))
    n = len(subjects) * len(obs_names)
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False)
    panels = [(s, o) for s in subjects for o in obs_names]
    for ax, (s, o) in zip(axes.flat, panels):
        t = trajectories[(trajectories.subject_id == s) & (trajectories.observable == o)].sort_values("time")
        ax.fill_between(t["time"], t["lower"], t["upper"], alpha=0.25, color="C0", label="predictive interval")
        ax.plot(t["time"], t["median"], color="C0", lw=1.5, label="median")
        for table, filled, label in ((context, True, "given"), (observations, False, "later")):
            if table is None:
                continue
            d = table[(table.subject_id == s) & (table.observable == o)]
            if context is not None and table is observations:
                d = d.merge(context[["subject_id", "time", "observable"]], how="left", indicator=True)
                d = d[d["_merge"] == "left_only"]
            cens = d["censored"].astype(bool) if "censored" in d else pd.Series(False, index=d.index)
            ax.scatter(d.loc[~cens, "time"], d.loc[~cens, "value"], s=18, zorder=3, label=label,
                       facecolors="k" if filled else "none", edgecolors="k")
            if cens.any():
                ax.scatter(d.loc[cens, "time"], d.loc[cens, "value"], marker="v", s=22, zorder=3,
                           facecolors="k" if filled else "none", edgecolors="k")
        if o.startswith("log10_"):  # do not let a log floor (e.g. no antibody before the first dose) flatten the panel
            seen = [t["upper"].max()] + ([table.loc[(table.subject_id == s) & (table.observable == o), "value"].max()
                                         for table in (observations, context) if table is not None])
            top = float(np.nanmax(seen))
            # the bottom shows every data point (censored ones at their limit) and the median down to 10 logs
            # below the top, but not a log floor of the interval
            low = [max(float(np.nanmin(t["lower"])), top - 6.0), max(float(np.nanmin(t["median"])), top - 10.0)]
            low += [table.loc[(table.subject_id == s) & (table.observable == o), "value"].min()
                    for table in (observations, context) if table is not None]
            ax.set_ylim(bottom=float(np.nanmin(low)) - 0.3, top=top + 0.3)
        ax.set_title(f"{s}: {o}", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_convergence(history: pd.DataFrame, truth: dict | None = None, title: str | None = None):
    """SAEM trajectories (:attr:`hybridtwin.estimation.PopulationFit.history`): the complete-data log-likelihood,
    typical values, between-patient SDs, noise SDs and the parameters without random effects, one panel each,
    with the start of the smoothing phase marked and, if given, ``truth`` (``{history column: value}``) as a
    dashed line. Returns the matplotlib Figure.

    >>> import pandas as pd
    >>> h = pd.DataFrame({"iteration": range(4), "step": [1, 1, 1, 0.5], "complete_loglik": [-9, -5, -4, -4],
    ...                   "omega[beta]": [0.5, 0.4, 0.3, 0.3]})
    >>> len(plot_convergence(h, truth={"omega[beta]": 0.3}).axes)
    2
    """
    if not isinstance(history, pd.DataFrame) or "iteration" not in history.columns:
        raise ValueError("history must be the DataFrame of a PopulationFit (with an 'iteration' column)")
    keep = ("complete_loglik", "typical[", "omega[", "sigma_", "est:cohort_shift", "est:mu_population",
            "est:offset", "est:log_scale")
    cols = [c for c in history.columns if c.startswith(keep)]
    n = len(cols)
    ncol = min(4, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.4 * nrow), squeeze=False)
    smooth = history.loc[history["step"] < 1, "iteration"]
    for ax, col in zip(axes.flat, cols):
        ax.plot(history["iteration"], history[col], lw=1.2)
        if len(smooth):
            ax.axvline(smooth.iloc[0], color="0.6", ls=":", lw=1)
        if truth and col in truth:
            ax.axhline(truth[col], color="C3", ls="--", lw=1)
        ax.set_title(col.replace("est:", ""), fontsize=8)
        ax.tick_params(labelsize=7)
        if col.startswith("typical["):
            ax.set_yscale("log")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
