"""Built-in models vs an independent plain-numpy transcription of shared/reference/immune-models.md.

Each transcription below is typed from the reference file (not from the library) and returns, per state, the
list of additive terms of its derivative. The library's ``Model.vector_field`` must equal their sum to 1e-12
relative to the magnitude of the terms (sum of |terms|: a plain relative error is meaningless where the terms
cancel, e.g. at a steady state). The published parameter values and initial conditions are typed here too, so a
wrong default in the library is caught. ``test_models_reference.py`` integrates these transcriptions with scipy.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

import hybridtwin.models as hm

# ----------------------------------------------------------------------------------------------------------------
# transcriptions: rhs(y, p) -> {state: [terms]} with y, p dicts of floats or numpy arrays
# ----------------------------------------------------------------------------------------------------------------


def baccam2006(y, p):
    inf = p["beta"] * y["T"] * y["V"]
    return {"T": [-inf], "I1": [inf, -p["k"] * y["I1"]], "I2": [p["k"] * y["I1"], -p["delta"] * y["I2"]],
            "V": [p["p"] * y["I2"], -p["c"] * y["V"]]}


def baccam2006_tcl(y, p):
    inf = p["beta"] * y["T"] * y["V"]
    return {"T": [-inf], "I": [inf, -p["delta"] * y["I"]], "V": [p["p"] * y["I"], -p["c"] * y["V"]]}


def hernandez_vargas2012(y, p):
    S_H = p["delta_H"] * p["U_H0"]
    S_K = p["delta_K"] * p["K0"]
    UH, UE, UI, UR, V, IFN, K = (y[k] for k in ("U_H", "U_E", "U_I", "U_R", "V", "IFN", "K"))
    return {
        "U_H": [S_H, -p["k_I"] * UH * V, -p["k_R"] * UH * IFN, -p["delta_H"] * UH],
        "U_E": [p["k_I"] * UH * V, -p["k_E"] * UE, -p["q_K"] * UE * K],
        "U_I": [p["k_E"] * UE, -p["delta_I"] * UI, -p["q_K"] * UI * K],
        "U_R": [p["k_R"] * UH * IFN, -p["delta_R"] * UR],
        "V": [p["p_V"] * UI, -p["delta_V"] * V],
        "IFN": [p["a_I"] * UI, -p["delta_IFN"] * IFN],
        "K": [S_K, p["phi_K"] * UI, -p["delta_K"] * K],
    }


def reynolds2006(y, p):
    P, N, D, CA = y["P"], y["N"], y["D"], y["CA"]

    def f(v):
        return v / (1 + (CA / p["c_inf"]) ** 2)

    def f_s(v):
        return v**6 / (p["x_dn"] ** 6 + v**6)

    R = f(p["k_nn"] * N + p["k_np"] * P + p["k_nd"] * D)
    g = f(N + p["k_cnd"] * D)
    return {
        "P": [p["k_pg"] * P * (1 - P / p["P_inf"]), -p["k_pm"] * p["s_m"] * P / (p["mu_m"] + p["k_mp"] * P),
              -p["k_pn"] * f(N) * P],
        "N": [p["s_nr"] * R / (p["mu_nr"] + R), -p["mu_n"] * N],
        "D": [p["k_dn"] * f_s(f(N)), -p["mu_d"] * D],
        "CA": [p["s_c"], p["k_cn"] * g / (1 + g), -p["mu_c"] * CA],
    }


def kuznetsov1994(y, p):
    E, T = y["E"], y["T"]
    return {"E": [p["s"], p["p"] * E * T / (p["g"] + T), -p["m"] * E * T, -p["d"] * E],
            "T": [p["a"] * T * (1 - p["b"] * T), -p["n"] * E * T]}


def depillis2009(y, p):
    T, N, L, C, M, I = (y[k] for k in ("T", "N", "L", "C", "M", "I"))
    ratio = (L / T) ** p["l"]
    D = p["d"] * ratio / (p["s"] + ratio)

    def kill(K, delta):
        return K * (1 - np.exp(-delta * M))

    return {
        "T": [p["a"] * T * (1 - p["b"] * T), -p["c"] * N * T, -D * T, -kill(p["K_T"], p["delta_T"]) * T],
        "N": [p["f"] * (p["e_f"] * C - N), p["p_N"] * N * I / (p["g_N"] + I), -p["p"] * N * T,
              -kill(p["K_N"], p["delta_N"]) * N],
        "L": [-p["theta"] * p["m"] * L / (p["theta"] + I), p["j"] * T * L / (p["k"] + T), -p["q"] * L * T,
              (p["r1"] * N + p["r2"] * C) * T, -p["u"] * L**2 * C * I / (p["kappa"] + I),
              -kill(p["K_L"], p["delta_L"]) * L, p["p_I"] * L * I / (p["g_I"] + I)],
        "C": [p["beta"] * (p["alpha_over_beta"] - C), -kill(p["K_C"], p["delta_C"]) * C],
        "M": [-p["gamma"] * M],
        "I": [-p["mu_I"] * I, p["phi"] * C, p["omega"] * L * I / (p["zeta"] + I)],
    }


def vaccine_asc(y, p):
    Ag, M, S, L, Ab = (y[k] for k in ("Ag", "M", "S", "L", "Ab"))
    stim = Ag / (p["K_Ag"] + Ag)
    return {
        "Ag": [-p["delta_Ag"] * Ag],
        "M": [p["rho_M"] * stim * (1 - M / p["M_max"])],
        "S": [(p["alpha_S"] + p["beta_S"] * M) * stim, -p["delta_S"] * S],
        "L": [(p["alpha_L"] + p["beta_L"] * M) * stim, -p["delta_L"] * L],
        "Ab": [p["theta_S"] * S, p["theta_L"] * L, -p["delta_Ab"] * Ab],
    }


def baker2013(y, p):
    P, A = y["p"], y["a"]
    return {"p": [-p["gamma"] * P, (p["alpha1"] + p["alpha2"] * P**2 / (1 + P**2)) / (1 + A**2)],
            "a": [-A, p["alpha4"] * P**2 / (p["alpha3"] ** 2 + P**2)]}


def alexander_wahl2011(y, p):
    A, R, E, G = y["A"], y["R"], y["E"], y["G"]
    return {
        "A": [p["f"] * p["v"] * G, -p["mu_A"] * A, -p["b1"] * A, -p["sigma1"] * A * R],
        "R": [p["beta"] * A, p["pi1"] * E * A, -p["mu_R"] * R],
        "E": [p["lambda_E"] * A, -p["mu_E"] * E],
        "G": [-p["v"] * G, p["gamma"] * E, -p["mu_G"] * G],
    }


def sarscov2_cd8(y, p):
    V, T = y["V"], y["T"]
    return {"V": [p["p"] * V * (1 - V / p["K_V"]), -p["c_T"] * V * T, -p["c"] * V],
            "T": [p["delta_T"] * p["T0"], p["r"] * T * V ** p["m"] / (V ** p["m"] + p["k_T"] ** p["m"]),
                  -p["delta_T"] * T]}


# ----------------------------------------------------------------------------------------------------------------
# published values (immune-models.md), initial conditions, time units, typical state magnitudes
# ----------------------------------------------------------------------------------------------------------------

SPECS = {
    "baccam2006": dict(
        rhs=baccam2006, unit="day", states=["T", "I1", "I2", "V"],
        published=dict(beta=3.2e-5, k=4.0, delta=5.2, p=4.6e-2, c=5.2, T0=4e8, V0=0.75),
        initial=dict(T=4e8, I1=0.0, I2=0.0, V=0.75), scale=[4e8, 1e7, 1e7, 1e5]),
    "baccam2006_tcl": dict(
        rhs=baccam2006_tcl, unit="day", states=["T", "I", "V"],
        published=dict(beta=3.2e-5, delta=5.2, p=4.6e-2, c=5.2, T0=4e8, V0=0.75),
        initial=dict(T=4e8, I=0.0, V=0.75), scale=[4e8, 1e7, 1e5]),
    "hernandez_vargas2012": dict(
        rhs=hernandez_vargas2012, unit="day", states=["U_H", "U_E", "U_I", "U_R", "V", "IFN", "K"],
        published=dict(k_I=0.003, k_R=7.0, k_E=0.5, q_K=3e-6, phi_K=0.001, a_I=3e-6, p_V=0.01, delta_H=0.01,
                       delta_I=0.01, delta_R=0.01, delta_IFN=4.0, delta_K=0.04, delta_V=5.2, U_H0=5e8, K0=8e5,
                       V0=0.001),
        initial=dict(U_H=5e8, U_E=0.0, U_I=0.0, U_R=0.0, V=0.001, IFN=0.0, K=8e5),
        scale=[5e8, 1e7, 1e6, 1e8, 1e4, 10.0, 8e5]),
    "reynolds2006": dict(
        rhs=reynolds2006, unit="hour", states=["P", "N", "D", "CA"],
        published=dict(k_pg=0.3, P_inf=20.0, k_pm=0.6, s_m=0.005, mu_m=0.002, k_mp=0.01, k_pn=1.8, k_np=0.1,
                       k_nn=0.01, k_nd=0.02, s_nr=0.08, mu_nr=0.12, mu_n=0.05, k_dn=0.35, x_dn=0.06, mu_d=0.02,
                       c_inf=0.28, s_c=0.0125, k_cn=0.04, k_cnd=48.0, mu_c=0.1, P0=1.0, CA0=0.125),
        initial=dict(P=1.0, N=0.0, D=0.0, CA=0.125), scale=[1.0, 0.2, 3.0, 0.5]),
    "kuznetsov1994": dict(
        rhs=kuznetsov1994, unit="day", states=["E", "T"],
        published=dict(s=1.3e4, p=0.1245, g=2.019e7, m=3.422e-10, d=0.0412, a=0.18, b=2.0e-9, n=1.101e-7,
                       E0=3.2e5, T0=5e6),
        initial=dict(E=3.2e5, T=5e6), scale=[1e6, 1e7]),
    "depillis2009": dict(
        rhs=depillis2009, unit="day", states=["T", "N", "L", "C", "M", "I"],
        published=dict(a=0.431, b=1.02e-9, c=2.9077e-13, K_T=0.9, delta_T=1.8328, e_f=0.111, f=0.0125,
                       p=2.794e-13, p_N=0.068, g_N=250360.0, K_N=0.0675, delta_N=1.8328, m=0.009,
                       theta=0.0025036, q=3.422e-10, r1=2.9077e-11, r2=5.8467e-13, p_I=2.971, g_I=2503.6,
                       u=4.417e-14, kappa=2503.6, j=0.01245, k=2.019e7, K_L=0.0486, delta_L=1.8328,
                       alpha_over_beta=2.25e9, beta=0.0063, K_C=0.034, delta_C=1.8328, gamma=0.5199,
                       mu_I=11.7427, omega=0.07874, phi=2.38405e-7, zeta=2503.6, d=0.0, l=0.0, s=0.0,
                       T0=1e7, N0=2.5e8, L0=5.268e5, C0=2.25e9, I0=1073.0),
        initial=dict(T=1e7, N=2.5e8, L=5.268e5, C=2.25e9, M=0.0, I=1073.0),
        scale=[1e7, 2.5e8, 5e5, 2.25e9, 1.0, 1e3]),
    "vaccine_asc": dict(
        rhs=vaccine_asc, unit="day", states=["Ag", "M", "S", "L", "Ab"],
        published=dict(delta_Ab=0.025, delta_S=0.231, delta_L=0.000316, Ag0=0.0),
        initial=dict(Ag=0.0, M=0.0, S=0.0, L=0.0, Ab=0.0), scale=[1.0, 0.5, 1e3, 20.0, 1e4],
        ours=["delta_Ag", "K_Ag", "rho_M", "M_max", "alpha_S", "beta_S", "alpha_L", "beta_L", "theta_S", "theta_L",
              "M0", "S0", "L0", "Ab0"]),
    "baker2013": dict(
        rhs=baker2013, unit="dimensionless", states=["p", "a"],
        published=dict(alpha1=0.025, alpha2=1.0, alpha3=0.5, alpha4=3.5, gamma=1.25,
                       p0=0.0203298264712407, a0=0.00577667577789773),
        initial=dict(p=0.0203298264712407, a=0.00577667577789773), scale=[0.5, 1.0]),
    "alexander_wahl2011": dict(
        rhs=alexander_wahl2011, unit="day", states=["A", "R", "E", "G"],
        published=dict(v=0.0025, f=1e-4, gamma=2000.0, beta=200.0, pi1=0.016, lambda_E=1000.0, mu_A=0.25,
                       mu_R=0.25, mu_E=0.25, mu_G=5.0, b1=0.25, sigma1=3e-6, A0=1.0, G0=1e8),
        initial=dict(A=1.0, R=0.0, E=0.0, G=1e8), scale=[1.0, 1e3, 5e3, 1e6]),
    "sarscov2_cd8": dict(
        rhs=sarscov2_cd8, unit="day", states=["V", "T"],
        published=dict(c=2.4, k_T=1.26e8, m=2.0, delta_T=0.01, K_V=1e11, V0=0.31),
        initial=dict(V=0.31), scale=[1e8, 1e7], ours=["p", "c_T", "r", "T0"]),
}

BUILT_INS = list(SPECS)
NEW_MODELS = [n for n in BUILT_INS if not n.startswith("baccam")]


def transcription_params(name: str) -> dict[str, float]:
    """Published values from this file; the few values that are hybridtwin's own choices come from the model."""
    spec = SPECS[name]
    p = dict(spec["published"])
    defaults = hm.get(name).default_parameters()
    for k in spec.get("ours", []):
        p[k] = defaults[k]
    return p


def published_initial(name: str) -> dict[str, float]:
    init = dict(SPECS[name]["initial"])
    if name == "sarscov2_cd8":  # T(0) = T0 is not given in the reference file: hybridtwin's choice
        init["T"] = hm.get(name).default_parameters()["T0"]
    return init


def summed(terms: dict, states: list[str]):
    """(derivative, magnitude) arrays of shape (..., S) from a transcription's terms."""
    d = np.stack([np.sum(np.stack(np.broadcast_arrays(*terms[s])), axis=0) for s in states], axis=-1)
    mag = np.stack([np.sum(np.abs(np.stack(np.broadcast_arrays(*terms[s]))), axis=0) for s in states], axis=-1)
    return d, mag


def library_field(name: str, Y: np.ndarray, params: list[dict]) -> np.ndarray:
    """Library vector field at published states Y (B, S), drug compartments empty, for per-row parameters."""
    model = hm.get(name)
    theta = model.parameter_space.tensor_from(params)
    y = torch.zeros(Y.shape[0], len(model.all_state_names), dtype=torch.float64)
    y[:, : Y.shape[1]] = torch.as_tensor(Y)
    return model.vector_field(torch.zeros(Y.shape[0], dtype=torch.float64), y, theta)[:, : Y.shape[1]].numpy()


# ----------------------------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------------------------


def test_all_built_ins_registered():
    assert set(BUILT_INS) <= set(hm.available())


@pytest.mark.parametrize("name", BUILT_INS)
def test_names_defaults_initial_state_and_metadata(name):
    spec, model = SPECS[name], hm.get(name)
    assert model.state_names == spec["states"]
    assert model.time_unit == spec["unit"]
    defaults = model.default_parameters()
    used = set(spec["published"]) | set(spec.get("ours", []))
    assert used <= set(model.parameter_names), used - set(model.parameter_names)
    for k, v in spec["published"].items():
        assert defaults[k] == v, f"{name}.{k}: default {defaults[k]} != published {v}"
    y0 = model.initial_state(model.parameter_space.default_tensor())[0].numpy()
    expected = published_initial(name)
    np.testing.assert_array_equal(y0[: len(model.state_names)], [expected[s] for s in model.state_names])
    np.testing.assert_array_equal(y0[len(model.state_names):], 0.0)  # drug compartments start empty
    assert model.citation and model.description and model.default_t_end > 0
    for prm in model.parameter_space:
        assert prm.unit and prm.description, f"{name}.{prm.name} needs a unit and a description"
        if prm.transform == "log":
            assert prm.lower is not None and prm.lower > 0 and prm.upper is not None, f"{name}.{prm.name} bounds"
        if "extension" in prm.description:
            assert prm.role == "fixed", f"{name}.{prm.name}: intervention settings are fixed"
    for c in model.compartment_names:  # every compartment parameter is a documented, fixed extension
        assert any("(extension)" in prm.description for prm in model.parameter_space)


@pytest.mark.parametrize("name", BUILT_INS)
def test_vector_field_matches_transcription(name):
    spec = SPECS[name]
    model = hm.get(name)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    base = transcription_params(name)
    states = spec["states"]

    # the published initial state plus ~20 random positive states with perturbed parameters
    init = published_initial(name)
    Y = [np.array([init[s] for s in states])]
    P = [base]
    for _ in range(20):
        Y.append(np.array(spec["scale"]) * np.exp(rng.uniform(-2.5, 2.5, len(states))))
        p = {}
        for prm in model.parameter_space:
            v = base.get(prm.name, prm.default)
            if v != 0.0:
                v = float(np.clip(v * math.exp(rng.uniform(-0.5, 0.5)), prm.lower, prm.upper))
            else:  # parameters that are 0 by default (de Pillis d, l, s; initial amounts): draw them positive
                v = float(rng.uniform(0.05, 1.0) * min(prm.upper, 3.0))
            p[prm.name] = v
        P.append(p)
    Y = np.stack(Y)
    got = library_field(name, Y, P)
    ydict = {s: Y[:, i] for i, s in enumerate(states)}
    pdict = {k: np.array([row[k] for row in P]) for k in P[0] if all(k in row for row in P)}
    want, mag = summed(spec["rhs"](ydict, pdict), states)
    assert np.all(np.isfinite(got))
    err = np.abs(got - want) / np.maximum(mag, 1e-300)
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err.max() <= 1e-12, f"{name}: state {states[worst[1]]} sample {worst[0]}: {got[worst]} vs {want[worst]}"


@pytest.mark.parametrize("name", [n for n in BUILT_INS if hm.get(n).compartment_names])
def test_empty_drug_compartment_has_no_effect_and_decays(name):
    model = hm.get(name)
    theta = model.parameter_space.default_tensor(2)
    y = model.initial_state(theta)
    y[1, len(model.state_names):] = 0.0  # identical rows, compartments empty: the published model
    f = model.vector_field(torch.zeros(2, dtype=torch.float64), y, theta)
    assert torch.equal(f[0], f[1])
    y[1, len(model.state_names):] = 2.0  # a dosed compartment eliminates first-order
    f = model.vector_field(torch.zeros(2, dtype=torch.float64), y, theta)
    k_el = theta[1, model.parameter_space.index("k_el")]
    assert torch.allclose(f[1, len(model.state_names):], -k_el * 2.0, rtol=1e-14)


def test_intervention_effects_point_the_right_way():
    def field(name, state, drug, params=None):
        m = hm.get(name)
        th = m.parameter_space.tensor_from(params)
        y = m.initial_state(th)
        y[0, m.all_state_names.index(drug[0])] = drug[1]
        return float(m.vector_field(torch.zeros(1, dtype=torch.float64), y, th)[0, m.all_state_names.index(state)])

    # checkpoint inhibitor reduces effector inactivation -> higher dE/dt
    assert field("kuznetsov1994", "E", ("C_ici", 5.0)) > field("kuznetsov1994", "E", ("C_ici", 0.0))
    # antibiotic adds pathogen kill -> lower dP/dt, by exactly k_abx C P
    m = hm.get("reynolds2006").default_parameters()
    diff = field("reynolds2006", "P", ("C_abx", 0.0)) - field("reynolds2006", "P", ("C_abx", 2.0))
    assert diff == pytest.approx(m["k_abx"] * 2.0 * m["P0"], rel=1e-12)
    # the biologic lowers alpha2 -> lower dp/dt in an inflamed state
    infl = {"alpha2": 10.0, "p0": 1.0}
    assert field("baker2013", "p", ("C_bio", 3.0), infl) < field("baker2013", "p", ("C_bio", 0.0), infl)


def test_reproduction_numbers_from_defaults():
    d = hm.get("alexander_wahl2011").default_parameters()
    r0 = d["f"] * d["v"] * d["lambda_E"] * d["gamma"] / ((d["mu_G"] + d["v"]) * (d["b1"] + d["mu_A"]) * d["mu_E"])
    assert round(r0, 2) == 0.80
    from hybridtwin.models.alexander_wahl2011 import basic_reproduction_number

    assert basic_reproduction_number(d) == pytest.approx(r0, rel=1e-15)
    b = hm.get("baccam2006").default_parameters()
    assert round(b["beta"] * b["p"] * b["T0"] / (b["c"] * b["delta"]), 1) == 21.8


def test_kuznetsov_nondimensional_constants():
    """x = E/E0, y = T/T0, tau = n T0 t with E0 = T0 = 1e6 turns the equations into
    dx/dtau = sigma + rho x y/(eta + y) - mu x y - delta x,  dy/dtau = alpha y (1 - beta y) - x y with
    sigma = s/(n E0 T0), rho = p/(n T0), eta = g/T0, mu = m/n, delta = d/(n T0), alpha = a/(n T0), beta = b T0."""
    q = hm.get("kuznetsov1994").default_parameters()
    E0 = T0 = 1e6
    derived = dict(sigma=q["s"] / (q["n"] * E0 * T0), rho=q["p"] / (q["n"] * T0), eta=q["g"] / T0, mu=q["m"] / q["n"],
                   delta=q["d"] / (q["n"] * T0), alpha=q["a"] / (q["n"] * T0), beta=q["b"] * T0)
    printed = dict(sigma=0.1181, rho=1.131, eta=20.19, mu=0.00311, delta=0.3743, alpha=1.636, beta=0.002)
    for k, v in printed.items():
        assert derived[k] == pytest.approx(v, rel=1e-3), k  # the paper prints 4 digits (alpha: 1.6349 vs 1.636)
    from hybridtwin.models.kuznetsov1994 import nondimensional

    lib = nondimensional(q)
    for k, v in derived.items():
        assert lib[k] == pytest.approx(v, rel=1e-14)
    # and the scaled field really is the dimensional one: dx/dtau = (dE/dt) / (E0 n T0)
    x, yy = 0.7, 3.0
    f = kuznetsov1994({"E": x * E0, "T": yy * T0}, q)
    dx = (derived["sigma"] + derived["rho"] * x * yy / (derived["eta"] + yy) - derived["mu"] * x * yy
          - derived["delta"] * x)
    dy = derived["alpha"] * yy * (1 - derived["beta"] * yy) - x * yy
    assert sum(f["E"]) / (E0 * q["n"] * T0) == pytest.approx(dx, rel=1e-12)
    assert sum(f["T"]) / (T0 * q["n"] * T0) == pytest.approx(dy, rel=1e-12)


def test_depillis_cd8_kill_term_is_safe_when_off():
    """d = l = s = 0 (BioModels defaults): D = 0 exactly, finite values and gradients, also at L = 0."""
    model = hm.get("depillis2009")
    vals = model.parameter_space.default_tensor(3)
    vals[2, model.parameter_space.index("l")] = 1.5  # l > 0 but d = s = 0: still no kill, no 0/0
    theta = vals.clone().requires_grad_(True)
    y = model.initial_state(vals)
    y[1, model.state_names.index("L")] = 0.0  # (L/T)^l with L = 0
    f = model.vector_field(torch.zeros(3, dtype=torch.float64), y, theta)
    assert torch.isfinite(f).all()
    f.sum().backward()
    assert torch.isfinite(theta.grad).all()
    p = model.default_parameters()
    for row in range(3):
        T, N = y[row, 0].item(), y[row, 1].item()
        assert f[row, 0].item() == pytest.approx(p["a"] * T * (1 - p["b"] * T) - p["c"] * N * T, rel=1e-14)


def test_baker_default_state_is_a_steady_state():
    model = hm.get("baker2013")
    theta = model.parameter_space.default_tensor()
    f = model.vector_field(torch.zeros(1, dtype=torch.float64), model.initial_state(theta), theta)
    assert f.abs().max().item() < 1e-12
