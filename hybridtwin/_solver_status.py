"""Solver statuses and method names, shared by the native solver and the torchdiffeq backend (a module of
their own, so that neither imports the other to read them)."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """Per-subject outcome of a solve (after torchode's status codes)."""

    OK = 0
    NONFINITE = 1
    MAX_STEPS = 2
    STEP_TOO_SMALL = 3
    SOLVER_ERROR = 4
    TIME_BUDGET = 5


NATIVE_METHODS = ("dopri5", "rk4", "rodas4", "auto")
TORCHDIFFEQ_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "rk4", "midpoint", "euler",
                       "explicit_adams", "implicit_adams")
FIXED_STEP = ("rk4", "midpoint", "euler", "explicit_adams", "implicit_adams")
