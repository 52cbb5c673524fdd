"""de Pillis et al. (2009): tumour chemo-immunotherapy with NK cells, CD8+ T cells, chemotherapy and IL-2.

de Pillis LG, Fister KR, Gu W, Collins C, Daub M, Gross D, Moore J, Preskill B. Mathematical model creation
for cancer chemo-immunotherapy. Comput Math Methods Med 10(3):165-184 (2009). BioModels BIOMD0000000779.

Equations (time in days; T tumour, N NK cells, L CD8+ T cells, C circulating lymphocytes, M chemotherapy
drug, I interleukin-2)::

    D     = d (L/T)^l / (s + (L/T)^l)
    dT/dt = a T (1 - b T) - c N T - D T - K_T (1 - exp(-delta_T M)) T
    dN/dt = f (e_f C - N) + p_N N I/(g_N + I) - p N T - K_N (1 - exp(-delta_N M)) N
    dL/dt = -theta m L/(theta + I) + j T L/(k + T) - q L T + (r1 N + r2 C) T - u L^2 C I/(kappa + I)
            - K_L (1 - exp(-delta_L M)) L + p_I L I/(g_I + I) + v_L(t)
    dC/dt = beta (alpha_over_beta - C) - K_C (1 - exp(-delta_C M)) C
    dM/dt = -gamma M + v_M(t)
    dI/dt = -mu_I I + phi C + omega L I/(zeta + I) + v_I(t)

Follows the paper: the L-turnover term uses theta (the BioModels file has phi there). As in the BioModels
file, d = l = s = 0 by default (CD8 killing off until patient values are given) -- they are patient
parameters. The therapies v_M (chemotherapy), v_I (IL-2) and v_L (TIL infusion) are doses or infusions
into the states M, I and L given by the dosing schedule; the right-hand side has no v terms.
"""

from __future__ import annotations

import torch

from ..parameters import Parameter
from .base import Intervention, Model, log10_observable

CITATION = (
    "de Pillis LG, Fister KR, Gu W, Collins C, Daub M, Gross D, Moore J, Preskill B. Mathematical model "
    "creation for cancer chemo-immunotherapy. Comput Math Methods Med 10(3):165-184 (2009). "
    "doi:10.1080/17486700802216301. BioModels BIOMD0000000779"
)

# name, default, unit, role, description -- bounds are default/100 .. default*100 (log transform)
_RATES = [
    ("a", 0.431, "1/day", "patient", "tumour growth rate"),
    ("b", 1.02e-9, "1/cell", "population", "inverse tumour carrying capacity"),
    ("c", 2.9077e-13, "1/(cell day)", "patient", "tumour kill by NK cells"),
    ("K_T", 0.9, "1/day", "population", "chemotherapy kill rate of tumour cells"),
    ("delta_T", 1.8328, "1/mg", "fixed", "chemotherapy efficacy coefficient on tumour"),
    ("e_f", 0.111, "-", "population", "NK fraction of circulating lymphocytes"),
    ("f", 0.0125, "1/day", "population", "NK turnover rate"),
    ("p", 2.794e-13, "1/(cell day)", "population", "NK inactivation by tumour cells"),
    ("p_N", 0.068, "1/day", "population", "IL-2 induced NK proliferation"),
    ("g_N", 250360.0, "IU", "population", "half-saturation of IL-2 NK proliferation"),
    ("K_N", 0.0675, "1/day", "population", "chemotherapy kill rate of NK cells"),
    ("delta_N", 1.8328, "1/mg", "fixed", "chemotherapy efficacy coefficient on NK cells"),
    ("m", 0.009, "1/day", "population", "CD8+ T-cell death rate"),
    ("theta", 0.0025036, "IU", "population", "IL-2 level reducing CD8+ death (paper's theta)"),
    ("q", 3.422e-10, "1/(cell day)", "population", "CD8+ inactivation by tumour cells"),
    ("r1", 2.9077e-11, "1/(cell day)", "population", "CD8+ stimulation by NK-lysed tumour debris"),
    ("r2", 5.8467e-13, "1/(cell day)", "population", "CD8+ stimulation by circulating lymphocytes"),
    ("p_I", 2.971, "1/day", "population", "IL-2 induced CD8+ proliferation"),
    ("g_I", 2503.6, "IU", "population", "half-saturation of IL-2 CD8+ proliferation"),
    ("u", 4.417e-14, "1/(cell^2 day)", "population", "CD8+ self-regulation"),
    ("kappa", 2503.6, "IU", "population", "half-saturation of IL-2 in CD8+ self-regulation"),
    ("j", 0.01245, "1/day", "population", "tumour-driven CD8+ recruitment"),
    ("k", 2.019e7, "cells", "population", "half-saturation of tumour-driven recruitment"),
    ("K_L", 0.0486, "1/day", "population", "chemotherapy kill rate of CD8+ cells"),
    ("delta_L", 1.8328, "1/mg", "fixed", "chemotherapy efficacy coefficient on CD8+ cells"),
    ("alpha_over_beta", 2.25e9, "cells", "population", "homeostatic level of circulating lymphocytes"),
    ("beta", 0.0063, "1/day", "population", "circulating-lymphocyte turnover rate"),
    ("K_C", 0.034, "1/day", "population", "chemotherapy kill rate of circulating lymphocytes"),
    ("delta_C", 1.8328, "1/mg", "fixed", "chemotherapy efficacy coefficient on circulating lymphocytes"),
    ("gamma", 0.5199, "1/day", "population", "chemotherapy drug elimination rate"),
    ("mu_I", 11.7427, "1/day", "population", "IL-2 elimination rate"),
    ("omega", 0.07874, "IU/(cell day)", "population", "IL-2 production by stimulated CD8+ cells"),
    ("phi", 2.38405e-7, "IU/(cell day)", "population", "IL-2 production by circulating lymphocytes"),
    ("zeta", 2503.6, "IU", "population", "half-saturation of IL-2 self-stimulation"),
    ("T0", 1e7, "cells", "patient", "initial tumour cells"),
    ("N0", 2.5e8, "cells", "patient", "initial NK cells"),
    ("L0", 5.268e5, "cells", "patient", "initial CD8+ T cells"),
    ("C0", 2.25e9, "cells", "patient", "initial circulating lymphocytes"),
    ("I0", 1073.0, "IU", "patient", "initial IL-2"),
]


def _parameters() -> list[Parameter]:
    params = [Parameter(n, v, v / 100.0, v * 100.0, unit=u, role=r, description=d) for n, v, u, r, d in _RATES]
    return params + [  # 0 in the BioModels file: identity transform so that 0 is allowed
        Parameter("d", 0.0, 0.0, 10.0, transform="identity", unit="1/day", description="maximal CD8+ kill rate"),
        Parameter("l", 0.0, 0.0, 5.0, transform="identity", unit="-", description="CD8+ kill exponent"),
        Parameter("s", 0.0, 0.0, 10.0, transform="identity", unit="-", description="CD8+ kill steepness"),
    ]


def _cd8_kill(s, p) -> torch.Tensor:
    """D = d (L/T)^l / (s + (L/T)^l), returning 0 (not NaN, with finite gradients) when the numerator is 0."""
    ratio = (s.L / s.T) ** p.l
    num = p.d * ratio
    den = p.s + ratio
    zero = num == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


def depillis2009() -> Model:
    def rhs(t, s, p):
        chemo = lambda K, delta: K * (1.0 - torch.exp(-delta * s.M))  # noqa: E731
        return {
            "T": p.a * s.T * (1.0 - p.b * s.T) - p.c * s.N * s.T - _cd8_kill(s, p) * s.T
            - chemo(p.K_T, p.delta_T) * s.T,
            "N": p.f * (p.e_f * s.C - s.N) + p.p_N * s.N * s.I / (p.g_N + s.I) - p.p * s.N * s.T
            - chemo(p.K_N, p.delta_N) * s.N,
            "L": -p.theta * p.m * s.L / (p.theta + s.I) + p.j * s.T * s.L / (p.k + s.T) - p.q * s.L * s.T
            + (p.r1 * s.N + p.r2 * s.C) * s.T - p.u * s.L**2 * s.C * s.I / (p.kappa + s.I)
            - chemo(p.K_L, p.delta_L) * s.L + p.p_I * s.L * s.I / (p.g_I + s.I),
            "C": p.beta * (p.alpha_over_beta - s.C) - chemo(p.K_C, p.delta_C) * s.C,
            "M": -p.gamma * s.M,
            "I": -p.mu_I * s.I + p.phi * s.C + p.omega * s.L * s.I / (p.zeta + s.I),
        }

    return Model(
        name="depillis2009",
        states=["T", "N", "L", "C", "M", "I"],
        parameters=_parameters(),
        rhs=rhs,
        initial={"T": "T0", "N": "N0", "L": "L0", "C": "C0", "M": 0.0, "I": "I0"},
        observables={"log10_T": log10_observable("T")},
        interventions=[
            Intervention("chemotherapy", "M", "state", "chemotherapy drug dose or infusion (v_M)"),
            Intervention("IL2", "I", "state", "interleukin-2 dose or infusion (v_I)"),
            Intervention("TIL", "L", "state", "tumour-infiltrating lymphocyte infusion (v_L)"),
        ],
        time_unit="day",
        citation=CITATION,
        description="Tumour chemo-immunotherapy: NK and CD8+ cells, circulating lymphocytes, chemotherapy, IL-2",
        default_t_end=30.0,
        log_scale_states=["T", "N", "L", "C", "I"],
    )
