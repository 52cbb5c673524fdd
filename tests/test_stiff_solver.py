"""The L-stable Rosenbrock method (``method="rodas4"``) and the automatic switch to it (``method="auto"``)."""

import math
import sys

import numpy as np
import pytest
import torch

import hybridtwin as ht
from hybridtwin.dosing import BatchSchedule, Dose
from hybridtwin.solve import SolverConfig, Status, solve

pytestmark = pytest.mark.usefixtures("float64")
solve_module = sys.modules["hybridtwin.solve"]


def linear(matrix):
    return lambda t, y, p: y @ matrix.T


def stiff_linear_matrix(fast=-1e5):
    """A 2x2 system with eigenvalues -1 and ``fast`` and non-trivial eigenvectors (both modes in both states)."""
    V = torch.tensor([[1.0, 1.0], [1.0, -2.0]])
    return V @ torch.diag(torch.tensor([-1.0, fast])) @ torch.linalg.inv(V)


def relax(t, y, p):
    """y1' = -y1, y2' = p (y1 - y2): y2 follows y1 at rate p (stiff for large p)."""
    return torch.stack([-y[:, 0], p[:, 0] * (y[:, 0] - y[:, 1])], dim=1)


def robertson(t, y, p):
    a, b, c = y.unbind(-1)
    return torch.stack([-p[:, 0] * a + p[:, 1] * b * c,
                        p[:, 0] * a - p[:, 1] * b * c - p[:, 2] * b**2,
                        p[:, 2] * b**2], dim=-1)


def forced(t, y, p):
    """Nonlinear, non-autonomous, mildly stiff (rate 50) two-state system."""
    return torch.stack([-p[:, 0] * y[:, 0] + p[:, 1] * y[:, 1] ** 2,
                        p[:, 0] * y[:, 0] - 50.0 * y[:, 1] + 0.1 * torch.sin(3.0 * t)], dim=-1)


def test_rodas4_linear_stiff_system_matches_matrix_exponential_in_few_steps():
    M = stiff_linear_matrix()
    y0 = torch.tensor([[1.0, 2.0]])
    times = torch.tensor([1e-4, 0.01, 0.5, 1.0, 5.0])
    exact = torch.stack([torch.linalg.matrix_exp(M * t) @ y0[0] for t in times])
    sol = solve(linear(M), y0, times, torch.zeros(1, 1), config=SolverConfig(method="rodas4", rtol=1e-8, atol=1e-10))
    assert sol.ok.all()
    assert float((sol.ys[0] - exact).abs().max()) < 1e-8
    assert int(sol.n_steps[0]) < 400
    # dopri5 is held at its stability limit (h ~ 3.3e-5) by the fast mode once it has decayed; rodas4 is not
    short = torch.tensor([1e-4, 0.01, 0.1])
    exact_short = torch.stack([torch.linalg.matrix_exp(M * t) @ y0[0] for t in short])
    cfg = dict(rtol=1e-8, atol=1e-10)
    ro = solve(linear(M), y0, short, torch.zeros(1, 1), config=SolverConfig(method="rodas4", **cfg))
    assert ro.ok.all() and float((ro.ys[0] - exact_short).abs().max()) < 1e-8
    budget = 10 * int(ro.n_steps[0])  # dopri5 needs ~0.1 / 3.3e-5 = 3000 steps
    dp = solve(linear(M), y0, short, torch.zeros(1, 1), config=SolverConfig(method="dopri5", max_steps=budget, **cfg))
    assert dp.status_names() == ["max_steps"]


def test_rodas4_is_l_stable_on_huge_steps():
    # Prothero-Robinson: y' = -lambda (y - cos t) - sin t, y = cos t. With lambda = 1e8 every step is ~1e8 times
    # dopri5's stability limit; an L-stable, stiffly accurate method damps the stiff mode completely
    f = lambda t, y, p: -p * (y - torch.cos(t)[:, None]) - torch.sin(t)[:, None]
    sol = solve(f, torch.ones(1, 1), torch.tensor([10.0]), torch.tensor([[1e8]]),
                config=SolverConfig(method="rodas4", rtol=1e-6, atol=1e-9))
    assert sol.ok.all() and int(sol.n_steps[0]) < 50
    assert abs(float(sol.ys[0, 0, 0]) - math.cos(10.0)) < 1e-7


def test_rodas4_uses_the_time_derivative_of_a_non_autonomous_field():
    # y' = -y + 10 sin(10 t): without the d_i h df/dt terms the method drops to first order (max_steps here)
    f = lambda t, y, p: -y + 10 * torch.sin(10 * t)[:, None]
    times = torch.linspace(0.25, 2.0, 8)
    exact = 100 / 101 * torch.exp(-times) + (10 * torch.sin(10 * times) - 100 * torch.cos(10 * times)) / 101
    sol = solve(f, torch.zeros(1, 1), times, torch.zeros(1, 1),
                config=SolverConfig(method="rodas4", rtol=1e-6, atol=1e-9, max_steps=2000))
    assert sol.ok.all()
    assert float((sol.ys[0, :, 0] - exact).abs().max()) < 1e-5


def test_rodas4_robertson_matches_radau_reference():
    solve_ivp = pytest.importorskip("scipy.integrate").solve_ivp
    k = (0.04, 1e4, 3e7)
    times = np.array([0.4, 4.0, 10.0, 40.0])

    def rhs(t, y):
        r1, r2, r3 = k[0] * y[0], k[1] * y[1] * y[2], k[2] * y[1] ** 2
        return [-r1 + r2, r1 - r2 - r3, r3]

    ref = solve_ivp(rhs, (0.0, 40.0), [1.0, 0.0, 0.0], method="Radau", rtol=1e-10, atol=1e-16, t_eval=times)
    assert ref.success
    sol = solve(robertson, torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor(times), torch.tensor([k]),
                config=SolverConfig(method="rodas4", rtol=1e-8, atol=(1e-10, 1e-14, 1e-10)))
    assert sol.ok.all()
    rel = (sol.ys[0].numpy() - ref.y.T) / np.abs(ref.y.T)
    assert np.abs(rel).max() < 1e-6, rel
    assert int(sol.n_steps[0]) < 1000


@pytest.mark.parametrize("method", ["rodas4", "auto"])
def test_bolus_and_infusion_match_dopri5(method):
    # y' = -k y, a bolus of 2.5 at t = 1.3 and an infusion of 0.8 per unit time over [0.5, 2.5)
    decay = lambda t, y, p: -p * y
    k, A, rate, t1, t2, td = 0.8, 2.5, 0.8, 0.5, 2.5, 1.3
    times = torch.tensor([0.25, 0.5, 1.0, 1.3, 2.0, 2.5, 3.0, 4.0])
    sched = BatchSchedule.from_doses([[Dose(td, A, "x"), Dose(t1, rate * (t2 - t1), "x", duration=t2 - t1)]], ["x"])

    def run(m, rtol):
        return solve(decay, torch.ones(1, 1), times, torch.tensor([[k]]), schedule=sched,
                     config=SolverConfig(method=m, rtol=rtol, atol=1e-12))

    sol, ref = run(method, 1e-9), run("dopri5", 1e-11)
    assert sol.ok.all()
    in_inf = torch.clamp(torch.minimum(times, torch.tensor(t2)) - t1, min=0.0)
    after = torch.clamp(times - t2, min=0.0)
    exact = (torch.exp(-k * times) + A * torch.exp(-k * (times - td)) * (times >= td)
             + rate / k * (1 - torch.exp(-k * in_inf)) * torch.exp(-k * after))
    assert torch.allclose(ref.ys[0, :, 0], exact, rtol=1e-9, atol=0)
    assert torch.allclose(sol.ys[0, :, 0], exact, rtol=1e-7, atol=0)
    assert float(sol.ys[0, 3, 0] - sol.ys[0, 2, 0]) > 2.0  # the output at the bolus time is after the bolus


def test_rodas4_subject_alone_equals_subject_in_a_batch():
    # per-subject parameters, output grids (with padding), doses and stiffness; subjects finish at different
    # times, so the working set is compacted while the others go on
    p = torch.tensor([[3.0, 1.5], [0.5, 0.2], [30.0, 4.0], [1.0, 1.0], [8.0, 0.1]])
    y0 = torch.tensor([[1.0, 0.2], [0.5, 0.5], [2.0, 0.0], [0.1, 1.0], [1.0, 1.0]])
    times = torch.tensor([[0.2, 0.5, 1.0, 2.0], [0.1, 0.3, 0.0, 0.0], [0.5, 1.0, 1.5, 2.5],
                          [0.05, 0.1, 0.15, 0.2], [0.5, 1.0, 2.0, 3.0]])
    mask = torch.ones(times.shape, dtype=torch.bool)
    mask[1, 2:] = False
    sched = BatchSchedule.from_doses([[Dose(0.5, 0.7, "a")], [], [Dose(0.3, 2.0, "b", duration=1.0)],
                                      [Dose(0.1, 1.0, "b")], [Dose(1.0, 0.5, "a", interval=1.0, additional=2)]],
                                     ["a", "b"])
    cfg = SolverConfig(method="rodas4", rtol=1e-6, atol=1e-9)
    batch = solve(forced, y0, times, p, schedule=sched, mask=mask, config=cfg)
    assert batch.ok.all()
    for b in range(5):
        one = solve(forced, y0[b:b + 1], times[b:b + 1], p[b:b + 1], schedule=sched.select(torch.tensor([b])),
                    mask=mask[b:b + 1], config=cfg)
        assert torch.equal(one.ys[0].nan_to_num(7.0), batch.ys[b].nan_to_num(7.0)), b
        assert int(one.n_steps[0]) == int(batch.n_steps[b])


@pytest.mark.slow
def test_auto_switches_only_the_stiff_subject():
    y0 = torch.tensor([[1.0, 0.0]] * 4)
    p = torch.tensor([[1.0], [2.0], [1e5], [0.5]])
    times = torch.tensor([0.01, 0.5, 1.0, 3.0])
    A, td = 2.0, 0.7  # a bolus into y1 for every subject: the switched subject takes its schedule along
    sched = BatchSchedule.from_doses([[Dose(td, A, "y1")]] * 4, ["y1", "y2"])
    cfg = dict(rtol=1e-8, atol=1e-12)
    auto = solve(relax, y0, times, p, schedule=sched, config=SolverConfig(method="auto", **cfg))
    assert auto.ok.all()
    ordinary = torch.tensor([0, 1, 3])
    dopri = solve(relax, y0[ordinary], times, p[ordinary], schedule=sched.select(ordinary),
                  config=SolverConfig(method="dopri5", **cfg))
    assert torch.equal(auto.ys[ordinary], dopri.ys)  # bit-identical: never switched
    assert torch.equal(auto.n_steps[ordinary], dopri.n_steps)
    # dopri5 needs ~3 / 3.3e-5 = 90 000 steps for the stiff subject; auto needs a few hundred in all
    one = torch.tensor([2])
    stuck = solve(relax, y0[one], times, p[one], schedule=sched.select(one),
                  config=SolverConfig(method="dopri5", max_steps=3000, **cfg))
    assert stuck.status_names() == ["max_steps"]
    assert int(auto.n_steps[2]) < 1000
    # the switched subject is solved from the start by rodas4, exactly as rodas4 solves it alone
    alone = solve(relax, y0[one], times, p[one], schedule=sched.select(one),
                  config=SolverConfig(method="rodas4", **cfg))
    assert torch.equal(auto.ys[2], alone.ys[0])
    assert int(auto.n_steps[2]) > int(alone.n_steps[0])  # its dopri5 steps before the switch are counted
    k = p[2, 0]
    after = torch.clamp(times - td, min=0.0)
    exact = k / (k - 1) * (torch.exp(-times) - torch.exp(-k * times)
                           + A * (times >= td) * (torch.exp(-after) - torch.exp(-k * after)))
    assert torch.allclose(auto.ys[2, :, 1], exact, rtol=1e-7, atol=0)


def test_auto_on_a_batch_without_stiffness_is_dopri5_bit_for_bit():
    m = ht.models.get("vaccine_asc")
    theta = m.parameter_space.default_tensor(3)
    theta[:, 0] *= torch.tensor([0.8, 1.0, 1.25])
    sched = BatchSchedule.from_doses([[Dose(0.0, 1.0, "Ag"), Dose(28.0, 1.0, "Ag")]] * 3, m.all_state_names)
    times = torch.tensor([0.0, 14.0, 28.0, 56.0])
    args = (m, m.initial_state(theta), times, theta)
    auto = solve(*args, schedule=sched, config=SolverConfig(method="auto"))
    dopri = solve(*args, schedule=sched, config=SolverConfig(method="dopri5"))
    assert torch.equal(auto.ys, dopri.ys) and torch.equal(auto.n_steps, dopri.n_steps)


def test_gradient_through_rodas4_matches_finite_differences():
    times = torch.tensor([0.2, 0.5, 1.0])
    y0 = torch.tensor([[1.0, 0.2]])
    sched = BatchSchedule.from_doses([[Dose(0.5, 0.7, "a"), Dose(0.3, 2.0, "b", duration=1.0)]], ["a", "b"])
    cfg = SolverConfig(method="rodas4", rtol=1e-6, atol=1e-8)

    def loss(p):
        return (solve(forced, y0, times, p, schedule=sched, config=cfg).ys ** 2).sum()

    p = torch.tensor([[3.0, 1.5]], requires_grad=True)
    grad, = torch.autograd.grad(loss(p), p)
    eps = 1e-6
    with torch.no_grad():
        fd = torch.tensor([[(loss(p + e) - loss(p - e)) / (2 * eps) for e in eps * torch.eye(2)]])
    # 1e-5: leaving out the dependence of the Jacobian on the parameters (and states) is off by ~2e-3 here
    assert torch.allclose(grad, fd, rtol=1e-5, atol=0), (grad, fd)


def test_rodas4_statuses():
    # y = 1 / (1 - t) is infinite at t = 1. Next to the singularity rodas4 keeps accepting ever smaller steps (the
    # error relative to the exploding state stays small): they must end in step_too_small, not loop for ever
    blow_up = lambda t, y, p: y**2
    times = torch.tensor([0.5, 2.0])
    sol = solve(blow_up, torch.ones(2, 1), times, torch.zeros(2, 1),
                config=SolverConfig(method="rodas4", rtol=1e-4, atol=1e-6))
    assert sol.status_names() == ["step_too_small"] * 2 and int(sol.n_steps[0]) < 1000
    assert abs(float(sol.ys[0, 0, 0]) - 2.0) < 1e-3 and torch.isnan(sol.ys[:, 1]).all()
    few = solve(robertson, torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([40.0]), torch.tensor([[0.04, 1e4, 3e7]]),
                config=SolverConfig(method="rodas4", max_steps=5))
    assert few.status_names() == ["max_steps"] and int(few.n_steps[0]) == 5
    nan_field = lambda t, y, p: torch.where(t[:, None] > 0.3, torch.full_like(y, float("nan")), -y)
    bad = solve(nan_field, torch.ones(1, 1), torch.tensor([0.1, 1.0]), torch.zeros(1, 1),
                config=SolverConfig(method="rodas4"))
    assert bad.status_names() == ["nonfinite"] and torch.isfinite(bad.ys[0, 0]).all()


def test_auto_time_budget_covers_both_passes():
    # the stiff subject is flagged, then runs out of the (tiny) wall-time budget in its rodas4 pass or before
    y0 = torch.tensor([[1.0, 0.0]] * 2)
    sol = solve(relax, y0, torch.tensor([1.0, 1e4]), torch.tensor([[1.0], [1e7]]),
                config=SolverConfig(method="auto", max_seconds=1e-3))
    assert sol.status_names()[1] == "time_budget"
    assert int(sol.status.min()) >= 0  # the internal hand-over status never leaks out


def test_method_names_are_validated():
    for m in ("rodas4", "auto"):
        assert SolverConfig(method=m).method == m
    with pytest.raises(ValueError, match="method 'rodas' is not available"):
        SolverConfig(method="rodas")
    with pytest.raises(ValueError, match="not available with backend 'torchdiffeq'"):
        SolverConfig(method="auto", backend="torchdiffeq")
    with pytest.raises(ValueError, match="not available with backend 'torchdiffeq'"):
        SolverConfig(method="rodas4", backend="torchdiffeq")
    with pytest.raises(ValueError, match="dt is only used by fixed-step methods"):
        SolverConfig(method="rodas4", dt=0.1)
    with pytest.raises(ValueError, match="method 'stiff' is not available"):
        ht.simulate("baccam2006", [0.0, 1.0], method="stiff")


def test_simulate_accepts_the_new_methods():
    times = np.linspace(0, 10, 11)
    dopri = ht.simulate("baccam2006", times)
    auto = ht.simulate("baccam2006", times, method="auto")
    rodas = ht.simulate("baccam2006", times, method="rodas4", rtol=1e-6)
    assert auto.equals(dopri)  # a non-stiff subject keeps dopri5's result bit for bit
    assert rodas.attrs["status"] == {0: "ok"}
    np.testing.assert_allclose(rodas["log10_V"], dopri["log10_V"], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_auto_on_a_stiff_baccam_subject_among_ordinary_ones():
    # the scenario of experiments/bench_stiff.py at a small scale: beta x 1e4 for one subject
    m = ht.models.get("baccam2006")
    theta = m.parameter_space.default_tensor(6)
    theta[:, m.parameter_space.index("k")] *= torch.linspace(0.8, 1.2, 6)
    theta[5, m.parameter_space.index("beta")] *= 1e4
    times = torch.linspace(0, 10, 41)
    cfg = dict(rtol=1e-8, atol=tuple(max(1e-12, 1e-12 * float(v)) for v in m.initial_state(theta).abs().amax(0)))
    with torch.no_grad():
        auto = solve(m, m.initial_state(theta), times, theta, config=SolverConfig(method="auto", **cfg))
        dopri = solve(m, m.initial_state(theta[:5]), times, theta[:5], config=SolverConfig(**cfg))
        tight = solve(m, m.initial_state(theta[5:]), times, theta[5:],
                      config=SolverConfig(method="rodas4", rtol=1e-10, atol=tuple(a * 1e-2 for a in cfg["atol"])))
    assert auto.ok.all()
    assert torch.equal(auto.ys[:5], dopri.ys)
    assert int(auto.n_steps[5]) < 5000  # dopri5 needs ~70 000 steps for this subject
    V = m.all_state_names.index("V")
    assert torch.allclose(auto.ys[5, :, V], tight.ys[0, :, V], rtol=1e-5, atol=1e-6)
