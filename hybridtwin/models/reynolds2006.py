"""Reynolds et al. (2006): reduced model of the acute inflammatory response (sepsis), time in hours.

Reynolds A, Rubin J, Clermont G, Day J, Vodovotz Y, Ermentrout GB. A reduced mathematical model of the acute
inflammatory response: I. Derivation of model and analysis of anti-inflammation. J Theor Biol 242:220-236
(2006). BioModels BIOMD0000000714.

Equations (P pathogen, N = N* activated phagocytes, D tissue damage, CA = C_A anti-inflammatory mediator)::

    f(V)   = V / (1 + (CA / c_inf)^2)
    f_s(V) = V^6 / (x_dn^6 + V^6)
    R      = f(k_nn N + k_np P + k_nd D)
    dP/dt  = k_pg P (1 - P/P_inf) - k_pm s_m P / (mu_m + k_mp P) - k_pn f(N) P  [- k_abx C_abx P]
    dN/dt  = s_nr R / (mu_nr + R) - mu_n N
    dD/dt  = k_dn f_s(f(N)) - mu_d D
    dCA/dt = s_c + k_cn f(N + k_cnd D) / (1 + f(N + k_cnd D)) - mu_c CA

Interventions: the paper's anti-inflammatory therapy is a bolus or infusion into ``CA`` (a dose into that
state). hybridtwin extension (off by default): an antibiotic in drug compartment ``C_abx`` (first-order
elimination ``k_el``) adds first-order pathogen kill ``k_abx C_abx P``, which is 0 while ``C_abx = 0``.
"""

from __future__ import annotations

from ..parameters import Parameter
from .base import Intervention, Model

CITATION = (
    "Reynolds A, Rubin J, Clermont G, Day J, Vodovotz Y, Ermentrout GB. A reduced mathematical model of the "
    "acute inflammatory response: I. Derivation of model and analysis of anti-inflammation. J Theor Biol "
    "242:220-236 (2006). doi:10.1016/j.jtbi.2006.02.016. BioModels BIOMD0000000714"
)


def _rate(name, default, lo, hi, unit, description, role="population"):
    return Parameter(name, default, lo, hi, unit=unit, role=role, description=description)


def reynolds2006() -> Model:
    params = [
        _rate("k_pg", 0.3, 0.01, 5.0, "1/h", "pathogen growth rate (0.6 in some paper scenarios)", "patient"),
        _rate("P_inf", 20.0, 1.0, 1e3, "10^6 cells/cc", "pathogen carrying capacity"),
        _rate("k_pm", 0.6, 1e-3, 10.0, "1/h", "pathogen kill by the local non-specific response"),
        _rate("s_m", 0.005, 1e-5, 1.0, "units/h", "source of the local non-specific response"),
        _rate("mu_m", 0.002, 1e-5, 1.0, "1/h", "decay of the local non-specific response"),
        _rate("k_mp", 0.01, 1e-5, 1.0, "1/(10^6 cells/cc h)", "exhaustion of the local response by pathogen"),
        _rate("k_pn", 1.8, 0.01, 50.0, "1/(N* units h)", "pathogen kill by activated phagocytes", "patient"),
        _rate("k_np", 0.1, 1e-4, 10.0, "N* units/(10^6 cells/cc)", "phagocyte activation by pathogen"),
        _rate("k_nn", 0.01, 1e-5, 10.0, "-", "phagocyte activation by activated phagocytes"),
        _rate("k_nd", 0.02, 1e-5, 10.0, "N* units/D units", "phagocyte activation by damage"),
        _rate("s_nr", 0.08, 1e-4, 10.0, "N* units/h", "maximal phagocyte activation rate"),
        _rate("mu_nr", 0.12, 1e-4, 10.0, "-", "half-saturation of phagocyte activation"),
        _rate("mu_n", 0.05, 1e-4, 5.0, "1/h", "activated-phagocyte decay rate"),
        _rate("k_dn", 0.35, 1e-3, 10.0, "D units/h", "maximal damage rate by activated phagocytes", "patient"),
        _rate("x_dn", 0.06, 1e-3, 10.0, "N* units", "half-saturation of damage (Hill exponent 6)"),
        _rate("mu_d", 0.02, 1e-4, 5.0, "1/h", "damage repair rate"),
        _rate("c_inf", 0.28, 1e-3, 10.0, "CA units", "anti-inflammatory inhibition scale"),
        _rate("s_c", 0.0125, 1e-5, 1.0, "CA units/h", "anti-inflammatory mediator source"),
        _rate("k_cn", 0.04, 1e-4, 10.0, "CA units/h", "maximal anti-inflammatory production"),
        _rate("k_cnd", 48.0, 0.01, 1e4, "N* units/D units", "damage weight in anti-inflammatory production"),
        _rate("mu_c", 0.1, 1e-4, 10.0, "1/h", "anti-inflammatory mediator decay rate"),
        _rate("P0", 1.0, 1e-4, 20.0, "10^6 cells/cc", "initial pathogen load (size of the insult)", "patient"),
        _rate("CA0", 0.125, 1e-4, 10.0, "CA units", "initial anti-inflammatory level (= s_c / mu_c)", "fixed"),
        _rate("k_el", 0.1, 1e-3, 10.0, "1/h", "antibiotic elimination rate (extension; t1/2 ~ 7 h)", "fixed"),
        _rate("k_abx", 0.5, 1e-4, 100.0, "1/(drug units h)", "antibiotic pathogen kill per drug unit (extension)",
              "fixed"),
    ]

    def rhs(t, s, p):
        def f(v):
            return v / (1.0 + (s.CA / p.c_inf) ** 2)

        fN = f(s.N)
        R = f(p.k_nn * s.N + p.k_np * s.P + p.k_nd * s.D)
        fs = fN**6 / (p.x_dn**6 + fN**6)
        g = f(s.N + p.k_cnd * s.D)
        return {
            "P": p.k_pg * s.P * (1.0 - s.P / p.P_inf) - p.k_pm * p.s_m * s.P / (p.mu_m + p.k_mp * s.P)
            - p.k_pn * fN * s.P - p.k_abx * s.C_abx * s.P,
            "N": p.s_nr * R / (p.mu_nr + R) - p.mu_n * s.N,
            "D": p.k_dn * fs - p.mu_d * s.D,
            "CA": p.s_c + p.k_cn * g / (1.0 + g) - p.mu_c * s.CA,
            "C_abx": -p.k_el * s.C_abx,
        }

    return Model(
        name="reynolds2006",
        states=["P", "N", "D", "CA"],
        parameters=params,
        rhs=rhs,
        initial={"P": "P0", "N": 0.0, "D": 0.0, "CA": "CA0"},
        compartments=["C_abx"],
        interventions=[
            Intervention("anti_inflammatory", "CA", "state", "bolus or infusion of anti-inflammatory mediator"),
            Intervention("antibiotic", "C_abx", "drug", "antibiotic adding first-order pathogen kill (extension)"),
        ],
        time_unit="hour",
        citation=CITATION,
        description="Acute inflammatory response to a pathogen insult: pathogen, phagocytes, damage, anti-inflammation",
        default_t_end=168.0,
        log_scale_states=["P"],
    )
