"""Baker et al. (2013): cytokine-mediated inflammation in rheumatoid arthritis, bistable flare/remission.

Baker M, Denman-Johnson S, Brook BS, Gaywood I, Owen MR. Mathematical modelling of cytokine-mediated
inflammation in rheumatoid arthritis. Math Med Biol 30(4):311-337 (2013). BioModels BIOMD0000000550.

Equations (dimensionless; p pro-inflammatory, a anti-inflammatory cytokine)::

    dp/dt = -gamma p + (alpha1 + alpha2 (1 - Eff(C_bio)) p^2/(1 + p^2)) / (1 + a^2)
    da/dt = -a + alpha4 p^2/(alpha3^2 + p^2)

The defaults start at the healthy steady state. Healthy and inflamed steady states coexist for about
7.5 < alpha2 < 15.5, where a transient pulse of p (a dose into ``p``) switches healthy -> flare.

hybridtwin extension (off by default): a biologic / immunosuppressant in drug compartment ``C_bio``
(first-order elimination ``k_el``) lowers the self-amplification alpha2 by ``(1 - Eff)``,
``Eff = Emax C/(EC50 + C)``, which is 0 while ``C_bio = 0``. Illustrative PK/PD settings, not fitted.
"""

from __future__ import annotations

from ..dosing import Dose
from ..parameters import Parameter
from .base import emax_drug_parameters, emax_effect, Intervention, Model

CITATION = (
    "Baker M, Denman-Johnson S, Brook BS, Gaywood I, Owen MR. Mathematical modelling of cytokine-mediated "
    "inflammation in rheumatoid arthritis. Math Med Biol 30(4):311-337 (2013). doi:10.1093/imammb/dqs026. "
    "BioModels BIOMD0000000550"
)


def baker2013() -> Model:
    params = [
        Parameter("alpha1", 0.025, 1e-5, 10.0, unit="-", description="basal pro-inflammatory production"),
        Parameter("alpha2", 1.0, 1e-3, 100.0, unit="-", description="self-amplification of pro-inflammatory cytokine"),
        Parameter("alpha3", 0.5, 1e-3, 100.0, unit="-", role="population",
                  description="half-saturation of anti-inflammatory induction"),
        Parameter("alpha4", 3.5, 1e-3, 100.0, unit="-", role="population",
                  description="maximal anti-inflammatory production"),
        Parameter("gamma", 1.25, 1e-3, 100.0, unit="-", description="pro-inflammatory decay rate"),
        Parameter("p0", 0.0203298264712407, 1e-8, 100.0, unit="-", role="fixed",
                  description="initial pro-inflammatory cytokine (healthy steady state)"),
        Parameter("a0", 0.00577667577789773, 1e-8, 100.0, unit="-", role="fixed",
                  description="initial anti-inflammatory cytokine (healthy steady state)"),
    ] + emax_drug_parameters(0.05, 0.9, "biologic", time_unit="1/time")

    def rhs(t, s, p):
        effect = emax_effect(s.C_bio, p)
        p2 = s.p**2
        return {
            "p": -p.gamma * s.p + (p.alpha1 + p.alpha2 * (1.0 - effect) * p2 / (1.0 + p2)) / (1.0 + s.a**2),
            "a": -s.a + p.alpha4 * p2 / (p.alpha3**2 + p2),
            "C_bio": -p.k_el * s.C_bio,
        }

    return Model(
        name="baker2013",
        states=["p", "a"],
        parameters=params,
        rhs=rhs,
        initial={"p": "p0", "a": "a0"},
        compartments=["C_bio"],
        interventions=[Intervention("biologic", "C_bio", "drug", "biologic lowering alpha2 by (1 - Eff) (extension)")],
        time_unit="dimensionless",
        citation=CITATION,
        description="Rheumatoid-arthritis cytokine balance with bistable healthy and inflamed (flare) states",
        default_t_end=50.0,
        example_doses=[Dose(5.0, 2.0, "p")],  # a pulse of p: with the default alpha2 = 1 it decays back (monostable)
    )
