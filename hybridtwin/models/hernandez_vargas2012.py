"""Hernandez-Vargas & Meyer-Hermann (2012): influenza with innate immunity -- interferon and NK cells.

Hernandez-Vargas EA, Meyer-Hermann M. Innate immune system dynamics to influenza virus. IFAC Proc Vol
45(18):260-265 (2012). BioModels BIOMD0000000710.

Equations (time in days)::

    dU_H/dt = S_H - k_I U_H V - k_R U_H IFN - delta_H U_H        S_H = delta_H U_H0
    dU_E/dt = k_I U_H V - k_E U_E - q_K U_E K
    dU_I/dt = k_E U_E - delta_I U_I - q_K U_I K
    dU_R/dt = k_R U_H IFN - delta_R U_R
    dV/dt   = p_V U_I - delta_V V
    dIFN/dt = a_I U_I - delta_IFN IFN
    dK/dt   = S_K + phi_K U_I - delta_K K                         S_K = delta_K K0

U_H healthy, U_E eclipse, U_I productively infected, U_R refractory (IFN-protected) epithelial cells, V virus,
IFN interferon, K natural-killer cells. The source terms keep U_H and K at their initial values without
infection. No intervention compartment: doses may target any state directly (e.g. an inoculum into V).
"""

from __future__ import annotations

from ..parameters import Parameter
from .base import Model, log10_observable

CITATION = (
    "Hernandez-Vargas EA, Meyer-Hermann M. Innate immune system dynamics to influenza virus. "
    "IFAC Proc Vol 45(18):260-265 (2012). BioModels BIOMD0000000710"
)


def hernandez_vargas2012() -> Model:
    params = [
        Parameter("k_I", 0.003, 1e-6, 1.0, unit="1/(virus day)", description="infection rate of healthy cells"),
        Parameter("k_R", 7.0, 0.01, 1e3, unit="1/(IFN day)", role="population",
                  description="rate at which IFN makes healthy cells refractory"),
        Parameter("k_E", 0.5, 0.01, 50.0, unit="1/day", role="population", description="eclipse-phase exit rate"),
        Parameter("q_K", 3e-6, 1e-9, 1e-3, unit="1/(cell day)", role="population",
                  description="NK killing rate of infected cells"),
        Parameter("phi_K", 0.001, 1e-6, 1.0, unit="1/day", role="population",
                  description="NK recruitment per productively infected cell"),
        Parameter("a_I", 3e-6, 1e-9, 1e-2, unit="IFN/(cell day)", role="population",
                  description="IFN production per infected cell"),
        Parameter("p_V", 0.01, 1e-5, 10.0, unit="virus/(cell day)", description="virion production rate"),
        Parameter("delta_H", 0.01, 1e-4, 1.0, unit="1/day", role="population",
                  description="healthy-cell turnover rate (S_H = delta_H U_H0)"),
        Parameter("delta_I", 0.01, 1e-4, 10.0, unit="1/day", description="infected-cell death rate"),
        Parameter("delta_R", 0.01, 1e-4, 1.0, unit="1/day", role="population",
                  description="refractory-cell death rate"),
        Parameter("delta_IFN", 4.0, 0.01, 100.0, unit="1/day", role="population", description="IFN decay rate"),
        Parameter("delta_K", 0.04, 1e-4, 10.0, unit="1/day", role="population",
                  description="NK-cell turnover rate (S_K = delta_K K0)"),
        Parameter("delta_V", 5.2, 0.01, 100.0, unit="1/day", description="virion clearance rate"),
        Parameter("U_H0", 5e8, 1e5, 1e11, unit="cells", role="fixed", description="initial healthy epithelial cells"),
        Parameter("K0", 8e5, 1e2, 1e9, unit="cells", role="fixed", description="initial (homeostatic) NK cells"),
        Parameter("V0", 0.001, 1e-8, 1e4, unit="virus", description="initial viral load"),
    ]

    def rhs(t, s, p):
        infection = p.k_I * s.U_H * s.V
        protection = p.k_R * s.U_H * s.IFN
        return {
            "U_H": p.delta_H * p.U_H0 - infection - protection - p.delta_H * s.U_H,
            "U_E": infection - p.k_E * s.U_E - p.q_K * s.U_E * s.K,
            "U_I": p.k_E * s.U_E - p.delta_I * s.U_I - p.q_K * s.U_I * s.K,
            "U_R": protection - p.delta_R * s.U_R,
            "V": p.p_V * s.U_I - p.delta_V * s.V,
            "IFN": p.a_I * s.U_I - p.delta_IFN * s.IFN,
            "K": p.delta_K * p.K0 + p.phi_K * s.U_I - p.delta_K * s.K,
        }

    return Model(
        name="hernandez_vargas2012",
        states=["U_H", "U_E", "U_I", "U_R", "V", "IFN", "K"],
        parameters=params,
        rhs=rhs,
        initial={"U_H": "U_H0", "U_E": 0.0, "U_I": 0.0, "U_R": 0.0, "V": "V0", "IFN": 0.0, "K": "K0"},
        observables={"log10_V": log10_observable("V")},
        time_unit="day",
        citation=CITATION,
        description="Influenza A with innate immunity: interferon-induced refractory cells and NK-cell killing",
        default_t_end=10.0,
        log_scale_states=["U_H", "U_E", "U_I", "U_R", "V", "IFN", "K"],
    )
