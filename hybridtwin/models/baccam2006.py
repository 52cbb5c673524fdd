"""Baccam et al. (2006): target-cell-limited influenza A model with an eclipse phase, and its basic
TCL variant without eclipse.

Baccam P, Beauchemin C, Macken CA, Hayden FG, Perelson AS. Kinetics of influenza A virus infection in
humans. J Virol 80(15):7590-7599 (2006). doi:10.1128/JVI.01623-05

Equations (time in days, V in TCID50/ml nasal wash)::

    dT/dt  = -beta T V
    dI1/dt =  beta T V - k I1
    dI2/dt =  k I1 - delta I2
    dV/dt  =  p (1 - eps(C)) I2 - c V

hybridtwin extension (off by default): a neuraminidase-inhibitor antiviral in drug compartment ``C_nai``
(first-order elimination ``k_el``) lowers virion production through an Emax link
``eps = Emax C / (EC50 + C)``; with no antiviral dose ``C_nai = 0`` and the published model is exact.
The PK/PD values are illustrative settings, not fitted to data.
"""

from __future__ import annotations

from ..parameters import Parameter
from .base import Intervention, Model, emax_drug_parameters, emax_effect, log10_observable

CITATION = (
    "Baccam P, Beauchemin C, Macken CA, Hayden FG, Perelson AS. Kinetics of influenza A virus infection in "
    "humans. J Virol 80(15):7590-7599 (2006). doi:10.1128/JVI.01623-05"
)


def _antiviral_parameters() -> list[Parameter]:
    return emax_drug_parameters(2.08, 0.98, "antiviral (t1/2 ~ 8 h)")


def _common_parameters() -> list[Parameter]:
    return [
        Parameter("beta", 3.2e-5, 1e-9, 1e-2, unit="(TCID50/ml)^-1 day^-1", description="infection rate"),
        Parameter("delta", 5.2, 0.01, 100.0, unit="1/day", description="infected-cell death rate"),
        Parameter("p", 4.6e-2, 1e-6, 100.0, unit="TCID50/ml/day/cell", description="virion production rate"),
        Parameter("c", 5.2, 0.01, 100.0, unit="1/day", description="virion clearance rate"),
        Parameter("T0", 4e8, 1e5, 1e11, unit="cells", role="fixed", description="initial target cells"),
        Parameter("V0", 0.75, 1e-6, 1e6, unit="TCID50/ml", description="initial viral titre"),
    ]


def _effect(s, p):
    return emax_effect(s.C_nai, p)


def baccam2006() -> Model:
    params = _common_parameters()
    params.insert(1, Parameter("k", 4.0, 0.01, 100.0, unit="1/day", description="eclipse-phase exit rate"))

    def rhs(t, s, p):
        infection = p.beta * s.T * s.V
        return {
            "T": -infection,
            "I1": infection - p.k * s.I1,
            "I2": p.k * s.I1 - p.delta * s.I2,
            "V": p.p * (1.0 - _effect(s, p)) * s.I2 - p.c * s.V,
            "C_nai": -p.k_el * s.C_nai,
        }

    return Model(
        name="baccam2006",
        states=["T", "I1", "I2", "V"],
        parameters=params + _antiviral_parameters(),
        rhs=rhs,
        initial={"T": "T0", "I1": 0.0, "I2": 0.0, "V": "V0"},
        observables={"log10_V": log10_observable("V")},
        compartments=["C_nai"],
        interventions=[Intervention("antiviral", "C_nai", "drug", "neuraminidase inhibitor scaling p by (1 - eps)")],
        time_unit="day",
        citation=CITATION,
        description="Influenza A, target-cell-limited model with eclipse phase (R0 = beta p T0 / (c delta))",
        default_t_end=10.0,
        log_scale_states=["T", "I1", "I2", "V"],
    )


def baccam2006_tcl() -> Model:
    def rhs(t, s, p):
        infection = p.beta * s.T * s.V
        return {
            "T": -infection,
            "I": infection - p.delta * s.I,
            "V": p.p * (1.0 - _effect(s, p)) * s.I - p.c * s.V,
            "C_nai": -p.k_el * s.C_nai,
        }

    return Model(
        name="baccam2006_tcl",
        states=["T", "I", "V"],
        parameters=_common_parameters() + _antiviral_parameters(),
        rhs=rhs,
        initial={"T": "T0", "I": 0.0, "V": "V0"},
        observables={"log10_V": log10_observable("V")},
        compartments=["C_nai"],
        interventions=[Intervention("antiviral", "C_nai", "drug", "neuraminidase inhibitor scaling p by (1 - eps)")],
        time_unit="day",
        citation=CITATION,
        description="Influenza A, basic target-cell-limited model (no eclipse phase)",
        default_t_end=10.0,
        log_scale_states=["T", "I", "V"],
    )
