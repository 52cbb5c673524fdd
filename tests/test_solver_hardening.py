"""Solver hardening: a stiff subject does not stall its batch (active-set compaction), results stay
batch-invariant and differentiable through compaction, the wall-time budget, closure gradients under the
torchdiffeq adjoint, and model-code errors propagating instead of becoming statuses."""

import math
import time

import pytest
import torch

import hybridtwin as ht
from hybridtwin.dosing import BatchSchedule, Dose
from hybridtwin.neural import MechanisticDynamics, NeuralClosure
from hybridtwin.solve import SolverConfig, Status, solve

pytestmark = pytest.mark.usefixtures("float64")


def _baccam(n, stiff=(), seed=0, sd=0.5):
    """``n`` baccam2006 subjects with log-normally varied rates; those in ``stiff`` get beta x 1e4."""
    m = ht.models.get("baccam2006")
    g = torch.Generator().manual_seed(seed)
    theta = m.parameter_space.default_tensor(n)
    for name in ("beta", "k", "delta", "p", "c"):
        i = m.parameter_space.index(name)
        theta[:, i] *= torch.exp(sd * torch.randn(n, generator=g, dtype=theta.dtype))
    for b in stiff:
        theta[b, m.parameter_space.index("beta")] *= 1e4
    return m, theta


class CountingField:
    """A plain ``f(t, y, p)`` that counts the subject-rows it is evaluated on (the solver's work)."""

    def __init__(self, f):
        self.f, self.rows, self.calls = f, 0, 0

    def __call__(self, t, y, p):
        self.rows += y.shape[0]
        self.calls += 1
        return self.f(t, y, p)


def _rel(a, b, floor=1e-3):
    ok = torch.isfinite(b)
    assert torch.equal(ok, torch.isfinite(a))
    return float(((a - b).abs() / (b.abs() + floor))[ok].max())


# -- 1. active-set compaction ------------------------------------------------------------------------------------
def test_work_is_proportional_to_subjects_still_integrating():
    # 40 ordinary subjects finish in a few hundred steps; the stiff one runs into max_steps. Without compaction
    # every step of the stiff subject evaluates the whole batch (41 x 3000 x 7 rows); with it, the finished
    # subjects leave and the total work is close to the sum of the subjects' own steps.
    m, theta = _baccam(41, stiff=[17])
    times = torch.linspace(0, 10, 21)
    field = CountingField(m.vector_field)
    cfg = SolverConfig(rtol=1e-7, atol=1e-6, max_steps=3000)
    sol = solve(field, m.initial_state(theta), times, theta, config=cfg)
    assert sol.status[17] == Status.MAX_STEPS and int(sol.n_steps[17]) == 3000
    others = torch.arange(41) != 17
    assert sol.ok[others].all() and int(sol.n_steps[others].max()) < 1000
    own_work = 7 * int(sol.n_steps.sum())  # dopri5: 6 new evaluations per step, +1 at output/dose stops
    assert field.rows <= 1.25 * own_work + 10 * 41, (field.rows, own_work)
    assert field.rows < 0.3 * 41 * 3000 * 6


@pytest.mark.slow
def test_subject_alone_equals_subject_next_to_a_stiff_one():
    m, theta = _baccam(12, stiff=[3])
    times = torch.linspace(0, 10, 41)
    y0 = m.initial_state(theta)
    cfg = SolverConfig(rtol=1e-8, atol=1e-6, max_steps=4000)
    batch = solve(m, y0, times, theta, config=cfg)
    assert batch.status[3] == Status.MAX_STEPS
    for i in (0, 2, 4, 11):
        alone = solve(m, y0[i : i + 1], times, theta[i : i + 1], config=cfg)
        assert int(alone.n_steps[0]) == int(batch.n_steps[i])  # the very same step sequence
        assert _rel(alone.ys[0], batch.ys[i]) <= 1e-12
        assert _rel(alone.ys[0], batch.ys[i], floor=1e-300) <= 1e-12
    # and without the stiff subject in the batch
    rest = torch.arange(12) != 3
    clean = solve(m, y0[rest], times, theta[rest], config=cfg)
    assert _rel(clean.ys, batch.ys[rest]) <= 1e-12 and torch.equal(clean.n_steps, batch.n_steps[rest])


@pytest.mark.slow
def test_batch_invariance_with_wide_parameter_spread():
    # a wide spread makes some subjects' error estimates land near the accept threshold; the step-size
    # controller must give bit-identical steps wherever a subject sits in the batch
    m, theta = _baccam(64, seed=3, sd=1.0)
    times = torch.linspace(0, 10, 21)
    y0 = m.initial_state(theta)
    cfg = SolverConfig(rtol=1e-7, atol=1e-6, max_steps=5000)
    batch = solve(m, y0, times, theta, config=cfg)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    shuffled = solve(m, y0[perm], times, theta[perm], config=cfg)
    assert torch.equal(shuffled.n_steps, batch.n_steps[perm])
    assert _rel(shuffled.ys, batch.ys[perm], floor=1e-300) <= 1e-12
    for i in range(0, 64, 9):
        alone = solve(m, y0[i : i + 1], times, theta[i : i + 1], config=cfg)
        assert int(alone.n_steps[0]) == int(batch.n_steps[i])
        assert _rel(alone.ys[0], batch.ys[i], floor=1e-300) <= 1e-12


def test_compaction_keeps_doses_and_per_subject_output_times():
    # subjects end at very different times (so they leave the working set one after another) and keep
    # their own boluses and infusions after the batch has been compacted
    v = ht.models.get("vaccine_asc")
    n = 10
    theta = v.parameter_space.default_tensor(n)
    sched = BatchSchedule.from_doses(
        [[Dose(0.0, 1.0, "Ag"), Dose(7.0 + 3 * i, 1.0, "Ag"), Dose(20.0 + i, 0.5, "Ag", duration=2.0)]
         for i in range(n)], v.all_state_names)
    ends = torch.tensor([5.0, 10.0, 21.5, 30.0, 45.0, 60.0, 90.0, 120.0, 150.0, 180.0])
    times = ends[:, None] * torch.linspace(0.1, 1.0, 8)[None, :]
    mask = torch.ones_like(times, dtype=torch.bool)
    mask[2, 5:] = False
    y0 = v.initial_state(theta)
    cfg = SolverConfig(rtol=1e-8, atol=1e-10)
    batch = solve(v, y0, times, theta, schedule=sched, mask=mask, config=cfg)
    assert batch.ok.all() and torch.isnan(batch.ys[2, 5:]).all()
    for i in range(n):
        alone = solve(v, y0[i : i + 1], times[i : i + 1], theta[i : i + 1], schedule=sched.select(torch.tensor([i])),
                      mask=mask[i : i + 1], config=cfg)
        assert int(alone.n_steps[0]) == int(batch.n_steps[i])
        assert _rel(alone.ys[0], batch.ys[i], floor=1e-300) <= 1e-12


def test_gradients_through_compaction_match_analytic():
    # y' = -k y, y(0) = 1, bolus A at td; outputs end at different times per subject so that the working set
    # is compacted several times during the solve: d y(t)/dk and d y(t)/dA are known in closed form
    n = 12
    k = torch.linspace(0.3, 1.4, n)[:, None].clone().requires_grad_(True)
    td = torch.linspace(0.2, 1.3, n)
    amount = torch.linspace(0.5, 2.0, n).requires_grad_(True)
    ends = torch.linspace(0.5, 4.0, n)
    times = ends[:, None] * torch.tensor([0.25, 0.5, 1.0])[None, :]

    def schedule(a):
        s = BatchSchedule.from_doses([[Dose(float(td[i]), 1.0, "x")] for i in range(n)], ["x"])
        s.bolus_amount = a[:, None] * s.bolus_amount
        return s

    field = CountingField(lambda t, y, p: -p * y)
    sol = solve(field, torch.ones(n, 1), times, k, schedule=schedule(amount),
                config=SolverConfig(rtol=1e-11, atol=1e-13))
    after = (times >= td[:, None]).double()
    kk, aa = k.detach(), amount.detach()[:, None]
    exact = torch.exp(-kk * times) + aa * after * torch.exp(-kk * (times - td[:, None]))
    assert torch.allclose(sol.ys[..., 0], exact, rtol=1e-9, atol=0)
    gk, ga = torch.autograd.grad(sol.ys[..., 0].sum(), (k, amount))
    dk = -times * torch.exp(-kk * times) - aa * after * (times - td[:, None]) * torch.exp(-kk * (times - td[:, None]))
    da = after * torch.exp(-kk * (times - td[:, None]))
    assert torch.allclose(gk[:, 0], dk.sum(1), rtol=1e-8, atol=1e-12)
    assert torch.allclose(ga, da.sum(1), rtol=1e-8, atol=1e-12)
    assert field.rows < n * field.calls  # the working set did shrink


@pytest.mark.slow  # several seconds of Lightning/solver work: `make test-all` (default suite time)
def test_gradients_alone_equal_gradients_next_to_a_stiff_subject():
    m, theta = _baccam(6, stiff=[1])
    times = torch.linspace(0, 8, 9)
    cfg = SolverConfig(rtol=1e-8, atol=1e-6, max_steps=2500)
    theta = theta.clone().requires_grad_(True)
    batch = solve(m, m.initial_state(theta.detach()), times, theta, config=cfg)
    i = 4
    (g_batch,) = torch.autograd.grad(torch.log(batch.ys[i, :, 3].clamp(min=1e-12)).sum(), theta)
    th_i = theta.detach()[i : i + 1].clone().requires_grad_(True)
    alone = solve(m, m.initial_state(th_i.detach()), times, th_i, config=cfg)
    (g_alone,) = torch.autograd.grad(torch.log(alone.ys[0, :, 3].clamp(min=1e-12)).sum(), th_i)
    assert torch.allclose(g_batch[i], g_alone[0], rtol=1e-10, atol=1e-300)
    assert float(g_batch[i].abs().max()) > 0
    others = torch.ones(6, dtype=torch.bool)
    others[i] = False
    assert float(g_batch[others].abs().max()) == 0.0  # no leakage between subjects


@pytest.mark.slow
def test_fixed_step_rk4_with_compaction():
    f = lambda t, y, p: torch.stack([y[:, 1], -(p[:, 0] ** 2) * y[:, 0]], dim=1)
    w = torch.tensor([[1.0], [2.0], [3.0], [0.5]])
    ends = torch.tensor([1.0, 2.5, 5.0, 4.0])
    times = ends[:, None] * torch.linspace(0.2, 1.0, 5)[None, :]
    cfg = SolverConfig(method="rk4", dt=2e-3)
    sol = solve(f, torch.tensor([[1.0, 0.0]] * 4), times, w, config=cfg)
    assert float((sol.ys[..., 0] - torch.cos(w * times)).abs().max()) < 1e-8
    for i in range(4):
        alone = solve(f, torch.tensor([[1.0, 0.0]]), times[i : i + 1], w[i : i + 1], config=cfg)
        assert torch.equal(alone.ys[0], sol.ys[i])


# -- wall-time budget ----------------------------------------------------------------------------------------------
def test_time_budget_stops_only_the_subjects_still_running():
    # subject 1 needs ~1e6 steps of an explicit method; the others a few dozen
    k = torch.tensor([[1.0], [1e6], [0.5]])
    times = torch.tensor([0.5, 1.0, 10.0])
    start = time.perf_counter()
    sol = solve(lambda t, y, p: -p * y, torch.ones(3, 1), times, k, config=SolverConfig(max_seconds=0.5))
    assert time.perf_counter() - start < 30
    assert sol.status.tolist() == [Status.OK, Status.TIME_BUDGET, Status.OK]
    assert sol.status_names()[1] == "time_budget"
    assert torch.isnan(sol.ys[1, -1]).all()
    assert torch.allclose(sol.ys[[0, 2], :, 0], torch.exp(-k[[0, 2]] * times), rtol=1e-5)
    assert 0 < int(sol.n_steps[1]) < 100_000


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_seconds=0.0), "max_seconds must be a positive"),
    (dict(max_seconds=-1.0), "max_seconds must be a positive"),
    (dict(max_seconds=float("inf")), "max_seconds must be a positive"),
    (dict(max_seconds=True), "max_seconds must be a positive"),
    (dict(max_seconds=1.0, backend="torchdiffeq"), "only supported by backend='native'"),
])
def test_time_budget_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SolverConfig(**kwargs)


# -- 3. adjoint gradients reach neural closure weights ---------------------------------------------------------------
def _hybrid():
    torch.manual_seed(0)
    closures = [NeuralClosure("S", ["M", "Ag"], constraint="nonnegative", scale=10.0, hidden=(8,)),
                NeuralClosure("beta_S", ["M"], mode="replace", hidden=(8,))]
    dyn = MechanisticDynamics("vaccine_asc", closures).double()
    with torch.no_grad():  # move off the exact-mechanistic start so every weight has a gradient
        for c in dyn.closures:
            for p in c.net.parameters():
                p.normal_(std=0.3)
        dyn.closures[0].amplitude.fill_(0.5)
    return dyn


@pytest.mark.parametrize("as_method", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_adjoint_gives_closure_weights_the_native_gradient(as_method):
    dyn = _hybrid()
    m = dyn.model
    theta = m.parameter_space.default_tensor(3)
    theta = theta * torch.tensor([1.0, 1.2, 0.8])[:, None] ** torch.linspace(0, 1, theta.shape[1])
    sched = BatchSchedule.from_doses([[Dose(0.0, 1.0, "Ag"), Dose(14.0 + 7 * i, 1.0, "Ag")] for i in range(3)],
                                     m.all_state_names)
    times = torch.linspace(1.0, 40.0, 9)
    y0 = m.initial_state(theta)
    field = dyn.vector_field if as_method else dyn

    def grads(cfg):
        dyn.zero_grad()
        sol = solve(field, y0, times, theta, schedule=sched, config=cfg)
        assert sol.ok.all()
        sol.ys.sum().backward()
        return {n: p.grad.clone() if p.grad is not None else None for n, p in dyn.named_parameters()}

    native = grads(SolverConfig(rtol=1e-8, atol=1e-8))
    adjoint = grads(SolverConfig(backend="torchdiffeq", adjoint=True, rtol=1e-8, atol=1e-8))
    assert len(native) >= 6
    for name, g in native.items():
        assert g is not None and float(g.abs().max()) > 0, name
        assert adjoint[name] is not None, f"{name}: no gradient under the adjoint"
        scale = float(g.abs().max())
        assert float((adjoint[name] - g).abs().max()) <= 1e-5 * scale, name


# -- 4. model-code errors propagate, numerical failures become statuses ----------------------------------------------
def _shape_bug(t, y, p):
    return y @ torch.ones(3, 3, dtype=y.dtype)  # y is (B, 2): a shape error in the model code


def _type_bug(t, y, p):
    return -p * y + "1"


def _value_bug(t, y, p):
    if float(t.max()) > 0.5:
        raise ValueError("model refuses t > 0.5")
    return -p * y


def _assert_bug(t, y, p):
    assert y.shape[1] == 3, "model expects 3 states"
    return -p * y


CONFIGS = [SolverConfig(), SolverConfig(method="rk4", dt=0.01), SolverConfig(backend="torchdiffeq"),
           SolverConfig(backend="torchdiffeq", method="rk4", dt=0.01), SolverConfig(backend="torchdiffeq", adjoint=True)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.backend}-{c.method}-{'adj' if c.adjoint else 'ad'}")
@pytest.mark.parametrize("bug, exc, match", [(_shape_bug, RuntimeError, "mat1 and mat2|shape|size"),
                                             (_type_bug, TypeError, "unsupported operand|must be|not supported"),
                                             (_value_bug, ValueError, "refuses"),
                                             (_assert_bug, AssertionError, "expects 3 states")])
def test_errors_in_the_model_code_propagate(cfg, bug, exc, match):
    y0, p = torch.ones(4, 2), torch.ones(4, 1)
    with pytest.raises(exc, match=match):
        solve(bug, y0, torch.tensor([0.25, 1.0]), p, config=cfg)


def test_model_error_in_one_subject_is_not_bisected_into_a_status():
    calls = []

    def f(t, y, p):
        calls.append(y.shape[0])
        if bool((p[:, 0] > 5).any()):
            raise RuntimeError("shape '[2, 3]' is invalid for input of size 5")
        return -p * y

    p = torch.tensor([[1.0], [2.0], [9.0], [1.5]])
    with pytest.raises(RuntimeError, match="is invalid for input"):
        solve(f, torch.ones(4, 1), torch.tensor([1.0]), p, config=SolverConfig(backend="torchdiffeq"))
    assert calls == [4]  # raised from the first call: no bisection into sub-batches


def test_torchdiffeq_numerical_failures_still_become_statuses():
    decay = lambda t, y, p: -p * y
    p = torch.tensor([[1.0], [1e5], [2.0]])
    sol = solve(decay, torch.ones(3, 1), torch.tensor([1.0, 5.0]), p,
                config=SolverConfig(backend="torchdiffeq", max_steps=300))
    assert sol.status.tolist() == [Status.OK, Status.MAX_STEPS, Status.OK]
    assert torch.isnan(sol.ys[1]).all()
    assert torch.allclose(sol.ys[[0, 2], :, 0], torch.exp(-p[[0, 2]] * torch.tensor([1.0, 5.0])), rtol=1e-5)
    blow = lambda t, y, p: p * y * y  # subject 1 reaches infinity at t = 1
    sol = solve(blow, torch.ones(2, 1), torch.tensor([0.5, 2.0]), torch.tensor([[-1.0], [1.0]]),
                config=SolverConfig(backend="torchdiffeq", rtol=1e-8, atol=1e-10))
    assert sol.status[0] == Status.OK
    assert sol.status[1] in (Status.STEP_TOO_SMALL, Status.NONFINITE, Status.MAX_STEPS)
    assert math.isclose(float(sol.ys[0, 1, 0]), 1.0 / 3.0, rel_tol=1e-6)
