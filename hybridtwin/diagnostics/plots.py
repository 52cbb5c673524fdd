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
