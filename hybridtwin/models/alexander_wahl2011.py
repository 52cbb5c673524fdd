"""Alexander & Wahl (2011): self-tolerance versus autoimmunity in a regulatory T-cell model.

Alexander HK, Wahl LM. Self-tolerance and autoimmunity in a regulatory T cell model. Bull Math Biol
73:33-71 (2011). BioModels BIOMD0000000289.

Equations (time in days)::

    dA/dt = f v G - mu_A A - b1 A - sigma1 A R     # self-antigen-presenting APCs
    dR/dt = beta A + pi1 E A - mu_R R              # regulatory T cells
    dE/dt = lambda_E A - mu_E E                    # autoreactive effector T cells
    dG/dt = -v G + gamma E - mu_G G                # self-antigen
    R0    = f v lambda_E gamma / ((mu_G + v)(b1 + mu_A) mu_E)      (0.80 with the defaults: tolerance)

No intervention compartment: doses may target any state directly (e.g. a self-antigen release into G).
"""

from __future__ import annotations

from typing import Mapping

from ..parameters import Parameter
from .base import Model, log10_observable

CITATION = (
    "Alexander HK, Wahl LM. Self-tolerance and autoimmunity in a regulatory T cell model. Bull Math Biol "
    "73:33-71 (2011). doi:10.1007/s11538-010-9519-2. BioModels BIOMD0000000289"
)


def basic_reproduction_number(params: Mapping[str, float]) -> float:
    """R0 = f v lambda_E gamma / ((mu_G + v)(b1 + mu_A) mu_E): autoimmunity can take off when R0 > 1."""
    q = params
    return q["f"] * q["v"] * q["lambda_E"] * q["gamma"] / ((q["mu_G"] + q["v"]) * (q["b1"] + q["mu_A"]) * q["mu_E"])


def alexander_wahl2011() -> Model:
    params = [
        Parameter("v", 0.0025, 1e-6, 1.0, unit="1/day", description="rate of self-antigen uptake by APCs"),
        Parameter("f", 1e-4, 1e-8, 1.0, unit="APC/antigen", description="APCs activated per antigen taken up"),
        Parameter("gamma", 2000.0, 1.0, 1e6, unit="antigen/(cell day)",
                  description="self-antigen release per effector cell (tissue damage)"),
        Parameter("beta", 200.0, 0.1, 1e5, unit="1/day", role="population", description="Treg stimulation by APCs"),
        Parameter("pi1", 0.016, 1e-6, 10.0, unit="1/(cell day)", role="population",
                  description="Treg stimulation by effector-APC interaction (IL-2)"),
        Parameter("lambda_E", 1000.0, 0.1, 1e6, unit="1/day", description="effector stimulation by APCs"),
        Parameter("mu_A", 0.25, 1e-3, 10.0, unit="1/day", role="population", description="APC death rate"),
        Parameter("mu_R", 0.25, 1e-3, 10.0, unit="1/day", role="population", description="Treg death rate"),
        Parameter("mu_E", 0.25, 1e-3, 10.0, unit="1/day", role="population", description="effector death rate"),
        Parameter("mu_G", 5.0, 1e-3, 100.0, unit="1/day", role="population", description="self-antigen clearance rate"),
        Parameter("b1", 0.25, 1e-3, 10.0, unit="1/day", role="population",
                  description="rate of APC loss by antigen presentation"),
        Parameter("sigma1", 3e-6, 1e-10, 1e-2, unit="1/(cell day)", description="APC killing by Tregs"),
        Parameter("A0", 1.0, 1e-6, 1e6, unit="cells", description="initial self-antigen-presenting APCs"),
        Parameter("G0", 1e8, 1.0, 1e12, unit="antigen", description="initial self-antigen (release event)"),
    ]

    def rhs(t, s, p):
        return {
            "A": p.f * p.v * s.G - p.mu_A * s.A - p.b1 * s.A - p.sigma1 * s.A * s.R,
            "R": p.beta * s.A + p.pi1 * s.E * s.A - p.mu_R * s.R,
            "E": p.lambda_E * s.A - p.mu_E * s.E,
            "G": -p.v * s.G + p.gamma * s.E - p.mu_G * s.G,
        }

    return Model(
        name="alexander_wahl2011",
        states=["A", "R", "E", "G"],
        parameters=params,
        rhs=rhs,
        initial={"A": "A0", "R": 0.0, "E": 0.0, "G": "G0"},
        observables={"log10_E": log10_observable("E")},
        time_unit="day",
        citation=CITATION,
        description="Regulatory T cells, effector T cells, APCs and self-antigen: tolerance vs autoimmunity",
        default_t_end=60.0,
        log_scale_states=["A", "R", "E", "G"],
    )
