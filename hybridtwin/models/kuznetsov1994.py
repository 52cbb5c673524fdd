"""Kuznetsov et al. (1994): tumour-immune dynamics of an immunogenic tumour (effector CTLs vs tumour cells).

Kuznetsov VA, Makalkin IA, Taylor MA, Perelson AS. Nonlinear dynamics of immunogenic tumors: parameter
estimation and global bifurcation analysis. Bull Math Biol 56(2):295-321 (1994). BioModels BIOMD0000000762.

Equations (time in days, cells)::

    dE/dt = s + p E T / (g + T) - m (1 - Eff(C_ici)) E T - d E     # effector (CTL) cells
    dT/dt = a T (1 - b T) - n E T                                  # tumour cells

Non-dimensional form (x = E/1e6, y = T/1e6, tau = n 1e6 t): sigma = s/(n 1e12), rho = p/(n 1e6),
eta = g/1e6, mu = m/n, delta = d/(n 1e6), alpha = a/(n 1e6), beta = b 1e6; see :func:`nondimensional`.

hybridtwin extension (off by default): an immune-checkpoint inhibitor in drug compartment ``C_ici`` with
antibody-like first-order elimination (``k_el``, t1/2 ~ 18 days) lowers effector inactivation,
``m -> m (1 - Eff)`` with ``Eff = Emax C/(EC50 + C)``; ``Eff = 0`` while ``C_ici = 0``.
The PK/PD values are illustrative settings, not fitted to data.
"""

from __future__ import annotations

import math
from typing import Mapping

from ..parameters import Parameter
from .base import emax_drug_parameters, emax_effect, Intervention, log10_observable, Model

CITATION = (
    "Kuznetsov VA, Makalkin IA, Taylor MA, Perelson AS. Nonlinear dynamics of immunogenic tumors: parameter "
    "estimation and global bifurcation analysis. Bull Math Biol 56(2):295-321 (1994). "
    "doi:10.1007/BF02460644. BioModels BIOMD0000000762"
)


def nondimensional(params: Mapping[str, float], scale: float = 1e6) -> dict[str, float]:
    """The paper's dimensionless constants from dimensional parameters (E and T scaled by ``scale``)."""
    n = params["n"]
    return {
        "sigma": params["s"] / (n * scale * scale), "rho": params["p"] / (n * scale), "eta": params["g"] / scale,
        "mu": params["m"] / n, "delta": params["d"] / (n * scale), "alpha": params["a"] / (n * scale),
        "beta": params["b"] * scale,
    }


def kuznetsov1994() -> Model:
    params = [
        Parameter("s", 1.3e4, 1.0, 1e7, unit="cells/day", description="normal (non-tumour-driven) CTL influx"),
        Parameter("p", 0.1245, 1e-4, 10.0, unit="1/day", description="maximal tumour-driven CTL proliferation"),
        Parameter("g", 2.019e7, 1e3, 1e11, unit="cells", role="population",
                  description="half-saturation of CTL proliferation"),
        Parameter("m", 3.422e-10, 1e-14, 1e-6, unit="1/(cell day)", description="CTL inactivation by tumour cells"),
        Parameter("d", 0.0412, 1e-4, 10.0, unit="1/day", role="population", description="CTL death rate"),
        Parameter("a", 0.18, 1e-3, 10.0, unit="1/day", description="tumour growth rate"),
        Parameter("b", 2.0e-9, 1e-13, 1e-5, unit="1/cell", description="inverse tumour carrying capacity"),
        Parameter("n", 1.101e-7, 1e-11, 1e-3, unit="1/(cell day)", description="tumour kill rate by CTLs"),
        Parameter("E0", 3.2e5, 1.0, 1e10, unit="cells", description="initial effector cells"),
        Parameter("T0", 5e6, 1.0, 1e10, unit="cells", description="initial tumour cells"),
    ] + emax_drug_parameters(math.log(2) / 18.0, 0.9, "checkpoint inhibitor (t1/2 ~ 18 days)")

    def rhs(t, s, p):
        effect = emax_effect(s.C_ici, p)
        return {
            "E": p.s + p.p * s.E * s.T / (p.g + s.T) - p.m * (1.0 - effect) * s.E * s.T - p.d * s.E,
            "T": p.a * s.T * (1.0 - p.b * s.T) - p.n * s.E * s.T,
            "C_ici": -p.k_el * s.C_ici,
        }

    return Model(
        name="kuznetsov1994",
        states=["E", "T"],
        parameters=params,
        rhs=rhs,
        initial={"E": "E0", "T": "T0"},
        observables={"log10_T": log10_observable("T"), "log10_E": log10_observable("E")},
        compartments=["C_ici"],
        interventions=[Intervention("checkpoint_inhibitor", "C_ici", "drug",
                                    "checkpoint inhibitor lowering CTL inactivation m by (1 - Eff)")],
        time_unit="day",
        citation=CITATION,
        description="Immunogenic tumour vs cytotoxic T lymphocytes: dormancy, escape and damped oscillations",
        default_t_end=200.0,
        log_scale_states=["E", "T"],
    )
