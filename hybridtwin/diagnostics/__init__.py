"""Diagnostics and plots."""

from .plots import plot_convergence, plot_prediction, plot_simulation

__all__ = ["plot_convergence", "plot_simulation", "plot_prediction"]
