"""Vaccine antibody response with short- and long-lived antibody-secreting cells (ASC) and B-cell memory.

Post-antigen structure after Pasin C, Balelli I, Van Effelterre T, et al. Dynamics of the humoral immune
response to a prime-boost Ebola vaccine: quantification and sources of variation. J Virol 93:e00579-19
(2019); Clairon Q et al. (2023, hal-03946556, two doses of BNT162b2); Andraud M et al. PLoS Comput Biol
8:e1002418 (2012). The antigen/memory part is hybridtwin's generative extension.

Equations (time in days; Ab in EU/ml)::

    stim   = Ag / (K_Ag + Ag)
    dAg/dt = -delta_Ag Ag                          # each vaccine dose: a bolus into Ag
    dM/dt  = rho_M stim (1 - M/M_max)              # memory B cells, grow with each exposure
    dS/dt  = (alpha_S + beta_S M) stim - delta_S S   # short-lived ASC
    dL/dt  = (alpha_L + beta_L M) stim - delta_L L   # long-lived ASC
    dAb/dt = theta_S S + theta_L L - delta_Ab Ab

Once the antigen is gone (stim = 0) this is exactly the published model, with the closed form
``Ab(t) = Ab0 e^{-delta_Ab t} + phi_S (e^{-delta_S t} - e^{-delta_Ab t})/(delta_Ab - delta_S)
+ phi_L (e^{-delta_L t} - e^{-delta_Ab t})/(delta_Ab - delta_L)``, ``phi = theta S0, theta L0``.
delta_Ab, delta_S, delta_L are the Pasin 2019 estimates; every other default is ours, chosen so that a unit
dose gives a prime antibody peak 2-4 weeks later, a boost at day 28 gives a peak several-fold higher, and a
long-lived plateau then decays with delta_L. Vaccines are given as doses: ``Ag0`` defaults to 0.
With ``Dose(0, 1.0, "Ag")`` and ``Dose(28, 1.0, "Ag")`` the defaults give a prime Ab peak at day ~20.5
(~1.1e4 EU/ml), a boost peak at day ~46 (~3.9e4 EU/ml, 3.5x the prime peak) with post-boost S ~ 3.4e3 and
L ~ 17 (close to Pasin's phi_S = 3057 and phi_L = 16.6 with theta_S = theta_L = 1), then a plateau of a few
hundred EU/ml decaying at delta_L.
"""

from __future__ import annotations

from ..dosing import Dose
from ..parameters import Parameter
from .base import Intervention, Model, log10_observable

CITATION = (
    "Pasin C, Balelli I, Van Effelterre T, Bockstal V, Solforosi L, Prague M, Douoguih M, Thiebaut R. Dynamics "
    "of the humoral immune response to a prime-boost Ebola vaccine: quantification and sources of variation. "
    "J Virol 93:e00579-19 (2019). doi:10.1128/JVI.00579-19; Clairon Q et al. (2023) hal-03946556; Andraud M "
    "et al. PLoS Comput Biol 8:e1002418 (2012)"
)


def vaccine_asc() -> Model:
    def ours(name, default, lo, hi, unit, description, role="population"):
        return Parameter(name, default, lo, hi, unit=unit, role=role, description=description + " (ours)")

    params = [
        ours("delta_Ag", 0.3, 1e-3, 10.0, "1/day", "antigen clearance rate"),
        ours("K_Ag", 0.2, 1e-4, 100.0, "dose units", "antigen level giving half-maximal stimulation"),
        ours("rho_M", 0.05, 1e-4, 10.0, "1/day", "memory B-cell generation rate"),
        ours("M_max", 10.0, 1e-3, 1e3, "memory units", "memory B-cell capacity"),
        ours("alpha_S", 1.0, 1e-3, 1e6, "cells/day", "naive short-lived ASC generation", "patient"),
        ours("beta_S", 4000.0, 1e-3, 1e7, "cells/day/memory unit", "memory-driven short-lived ASC generation",
             "patient"),
        ours("alpha_L", 0.005, 1e-6, 1e4, "cells/day", "naive long-lived ASC generation", "patient"),
        ours("beta_L", 5.0, 1e-6, 1e5, "cells/day/memory unit", "memory-driven long-lived ASC generation", "patient"),
        ours("theta_S", 1.0, 1e-4, 1e4, "EU/ml/day/cell", "antibody secretion by short-lived ASC", "fixed"),
        ours("theta_L", 1.0, 1e-4, 1e4, "EU/ml/day/cell", "antibody secretion by long-lived ASC", "fixed"),
        Parameter("delta_S", 0.231, 1e-3, 10.0, unit="1/day",
                  description="short-lived ASC decay (t1/2 ~ 3 d; Pasin 2019)"),
        Parameter("delta_L", 0.000316, 1e-6, 0.1, unit="1/day",
                  description="long-lived ASC decay (t1/2 ~ 6 y; Pasin 2019)"),
        Parameter("delta_Ab", 0.025, 1e-4, 1.0, unit="1/day", description="antibody decay (t1/2 ~ 28 d; Pasin 2019)"),
        Parameter("Ag0", 0.0, 0.0, 100.0, transform="identity", unit="dose units", role="fixed",
                  description="initial antigen (vaccines are given as doses into Ag)"),
        Parameter("M0", 0.0, 0.0, 1e3, transform="identity", unit="memory units", role="fixed",
                  description="initial memory B cells (naive: 0)"),
        Parameter("S0", 0.0, 0.0, 1e7, transform="identity", unit="cells", role="fixed",
                  description="initial short-lived ASC"),
        Parameter("L0", 0.0, 0.0, 1e5, transform="identity", unit="cells", role="fixed",
                  description="initial long-lived ASC"),
        Parameter("Ab0", 0.0, 0.0, 1e7, transform="identity", unit="EU/ml", role="fixed",
                  description="initial antibody level"),
    ]

    def rhs(t, s, p):
        stim = s.Ag / (p.K_Ag + s.Ag)
        return {
            "Ag": -p.delta_Ag * s.Ag,
            "M": p.rho_M * stim * (1.0 - s.M / p.M_max),
            "S": (p.alpha_S + p.beta_S * s.M) * stim - p.delta_S * s.S,
            "L": (p.alpha_L + p.beta_L * s.M) * stim - p.delta_L * s.L,
            "Ab": p.theta_S * s.S + p.theta_L * s.L - p.delta_Ab * s.Ab,
        }

    return Model(
        name="vaccine_asc",
        states=["Ag", "M", "S", "L", "Ab"],
        parameters=params,
        rhs=rhs,
        initial={"Ag": "Ag0", "M": "M0", "S": "S0", "L": "L0", "Ab": "Ab0"},
        observables={"log10_Ab": log10_observable("Ab")},
        interventions=[Intervention("vaccine", "Ag", "state", "vaccine dose: a bolus of antigen")],
        time_unit="day",
        citation=CITATION,
        description="Vaccine antibody response: antigen, memory B cells, short/long-lived ASC, antibodies",
        default_t_end=365.0,
        log_scale_states=["Ag", "S", "L", "Ab"],
        example_doses=[Dose(0.0, 1.0, "Ag"), Dose(28.0, 1.0, "Ag")],
    )
