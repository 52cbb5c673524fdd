"""Diagnostics and plots."""

from .plots import plot_simulation

__all__ = ["plot_simulation"]
