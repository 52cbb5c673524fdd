"""Diagnostics and plots."""

from .credibility import credibility_report
from .plots import plot_convergence, plot_prediction, plot_simulation

__all__ = ["credibility_report", "plot_convergence", "plot_simulation", "plot_prediction"]
