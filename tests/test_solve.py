"""The batched solver against analytic solutions, per-subject semantics and failure isolation."""

import math

import pytest
import torch

import hybridtwin as ht
from hybridtwin.dosing import BatchSchedule, Dose
from hybridtwin.solve import SolverConfig, Status, solve

pytestmark = pytest.mark.usefixtures("float64")


def decay(t, y, p):
    return -p * y


def test_exponential_decay_per_subject_times_and_padding():
    times = torch.tensor([[0.0, 0.5, 1.0, 2.0], [0.25, 3.0, 0.0, 0.0], [1.0, 1.5, 2.5, 4.0]])
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True] * 4])
    k = torch.tensor([[0.7], [2.0], [0.1]])
    sol = solve(decay, torch.ones(3, 1), times, k, mask=mask, config=SolverConfig(rtol=1e-10, atol=1e-13))
    exact = torch.exp(-k * times)
    assert torch.allclose(sol.ys[..., 0][mask], exact[mask], rtol=1e-8, atol=0)
    assert torch.isnan(sol.ys[1, 2:]).all()  # padding is never filled in
    assert sol.ok.all()


def test_dense_output_is_fifth_order_accurate():
    # interpolated outputs must be as accurate as the step endpoints: error shrinks with rtol
    times = torch.linspace(0, 5, 101)
    errs = []
    for rtol in (1e-5, 1e-7, 1e-9):
        sol = solve(decay, torch.ones(1, 1), times, torch.tensor([[1.3]]), config=SolverConfig(rtol=rtol, atol=1e-14))
        errs.append(float((sol.ys[0, :, 0] - torch.exp(-1.3 * times)).abs().max()))
    assert errs[0] < 1e-5 and errs[1] < 1e-7 and errs[2] < 1e-9
    assert errs[2] < errs[1] < errs[0]


def test_rk4_fixed_step_harmonic_oscillator():
    f = lambda t, y, p: torch.stack([y[:, 1], -(p[:, 0] ** 2) * y[:, 0]], dim=1)
    times = torch.linspace(0, 10, 51)
    sol = solve(f, torch.tensor([[1.0, 0.0]]), times, torch.tensor([[2.0]]), config=SolverConfig(method="rk4", dt=0.01))
    assert float((sol.ys[0, :, 0] - torch.cos(2 * times)).abs().max()) < 1e-7


@pytest.mark.parametrize("cfg", [SolverConfig(rtol=1e-9, atol=1e-12), SolverConfig(method="rk4", dt=1e-3),
                                 SolverConfig(backend="torchdiffeq", rtol=1e-9, atol=1e-12)])
def test_bolus_on_decay_matches_superposition(cfg):
    # y' = -k y, y(0) = 1, bolus A at td: y = e^{-kt} + A e^{-k(t - td)} 1[t >= td]
    k, A, td = 0.8, 2.5, 1.3
    times = torch.tensor([0.5, 1.3, 2.0, 4.0])
    sched = BatchSchedule.from_doses([[Dose(td, A, "x")]], ["x"])
    sol = solve(decay, torch.ones(1, 1), times, torch.tensor([[k]]), schedule=sched, config=cfg)
    exact = torch.exp(-k * times) + A * torch.exp(-k * (times - td)) * (times >= td)
    assert torch.allclose(sol.ys[0, :, 0], exact, rtol=1e-6, atol=0)


def test_bolus_adds_exactly_amount_and_infusion_adds_total():
    zero = lambda t, y, p: 0.0 * y
    sched = BatchSchedule.from_doses([[Dose(1.0, 2.0, "x")], [Dose(1.0, 3.0, "x", duration=2.0)]], ["x"])
    times = torch.tensor([0.0, 0.999, 1.0, 2.0, 3.0, 5.0])
    sol = solve(zero, torch.zeros(2, 1), times, torch.zeros(2, 1), schedule=sched)
    assert sol.ys[0, :, 0].tolist() == [0.0, 0.0, 2.0, 2.0, 2.0, 2.0]
    assert torch.allclose(sol.ys[1, :, 0], torch.tensor([0.0, 0.0, 0.0, 1.5, 3.0, 3.0]), rtol=1e-12, atol=1e-12)


def test_infusion_into_decay_matches_analytic():
    # zero-order input R over [a, b] into y' = -k y from y = 0
    k, amount, a, d = 0.5, 4.0, 1.0, 2.0
    R, b = amount / d, a + d
    times = torch.tensor([0.5, 2.0, 3.0, 6.0])
    sched = BatchSchedule.from_doses([[Dose(a, amount, "x", duration=d)]], ["x"])
    sol = solve(decay, torch.zeros(1, 1), times, torch.tensor([[k]]), schedule=sched,
                config=SolverConfig(rtol=1e-10, atol=1e-13))

    def exact(t):
        if t < a:
            return 0.0
        if t < b:
            return R / k * (1 - math.exp(-k * (t - a)))
        return R / k * (1 - math.exp(-k * d)) * math.exp(-k * (t - b))

    assert torch.allclose(sol.ys[0, :, 0], torch.tensor([exact(float(t)) for t in times]), rtol=1e-8, atol=1e-14)


def test_repeated_doses_equal_explicit_list():
    times = torch.linspace(0, 30, 61)
    series = BatchSchedule.from_doses([[Dose(2.0, 1.0, "x", duration=0.5, interval=7.0, additional=3)]], ["x"])
    explicit = BatchSchedule.from_doses([[Dose(2.0 + 7.0 * i, 1.0, "x", duration=0.5) for i in range(4)]], ["x"])
    a = solve(decay, torch.zeros(1, 1), times, torch.tensor([[0.3]]), schedule=series)
    b = solve(decay, torch.zeros(1, 1), times, torch.tensor([[0.3]]), schedule=explicit)
    assert torch.equal(a.ys, b.ys)


def test_result_does_not_depend_on_output_at_dose_time():
    sched = BatchSchedule.from_doses([[Dose(1.7, 1.0, "x")]], ["x"])
    p = torch.tensor([[0.9]])
    with_dose_time = solve(decay, torch.ones(1, 1), torch.tensor([1.0, 1.7, 3.0]), p, schedule=sched)
    without = solve(decay, torch.ones(1, 1), torch.tensor([1.0, 3.0]), p, schedule=sched)
    assert torch.equal(with_dose_time.ys[0, [0, 2]], without.ys[0])


def test_gradcheck_through_bolus_native_and_adjoint():
    times = torch.tensor([0.5, 1.0, 2.0, 3.0])

    def run(k, amount, cfg):
        sched = BatchSchedule.from_doses([[Dose(1.2, amount[0], "x")]], ["x"])
        return solve(decay, torch.ones(1, 1), times, k, schedule=sched, config=cfg).ys[0, :, 0]

    k = torch.tensor([[0.7]], requires_grad=True)
    amount = torch.tensor([1.5], requires_grad=True)
    tight = SolverConfig(rtol=1e-11, atol=1e-13)
    assert torch.autograd.gradcheck(lambda k, a: run(k, a, tight), (k, amount), eps=1e-6, atol=1e-6)
    # analytic gradient of the output at t = 3 w.r.t. the bolus amount: exp(-k (3 - 1.2))
    out = run(k, amount, tight)[-1]
    gk, ga = torch.autograd.grad(out, (k, amount))
    assert math.isclose(float(ga), math.exp(-0.7 * 1.8), rel_tol=1e-8)
    adj = SolverConfig(backend="torchdiffeq", adjoint=True, rtol=1e-11, atol=1e-13)
    gk2, ga2 = torch.autograd.grad(run(k, amount, adj)[-1], (k, amount))
    assert math.isclose(float(gk), float(gk2), rel_tol=1e-6) and math.isclose(float(ga), float(ga2), rel_tol=1e-6)


def _baccam_batch(n, seed=0):
    m = ht.models.get("baccam2006")
    g = torch.Generator().manual_seed(seed)
    theta = m.parameter_space.default_tensor(n)
    for name in ("beta", "k", "delta", "p", "c"):
        i = m.parameter_space.index(name)
        theta[:, i] *= torch.exp(0.5 * torch.randn(n, generator=g))
    return m, theta


def test_batch_invariance_native_is_exact_and_torchdiffeq_within_tolerance():
    m, theta = _baccam_batch(16)
    times = torch.linspace(0, 10, 21)
    y0 = m.initial_state(theta)
    for cfg, tol in ((SolverConfig(rtol=1e-7, atol=1e-6), 1e-12), (SolverConfig(backend="torchdiffeq", rtol=1e-7, atol=1e-6), 1e-4)):
        batch = solve(m, y0, times, theta, config=cfg).ys
        for i in (0, 7, 15):
            alone = solve(m, y0[i : i + 1], times, theta[i : i + 1], config=cfg).ys[0]
            rel = ((alone - batch[i]).abs() / (batch[i].abs() + 1e-3)).max()
            assert float(rel) <= tol, (cfg.backend, i, float(rel))


def test_failing_subject_does_not_poison_batch():
    # y' = p y^2 blows up at t = 1/(p y0): subject 1 diverges before t = 2, the others are fine
    f = lambda t, y, p: p * y * y
    p = torch.tensor([[-1.0], [1.0], [-0.5]])
    times = torch.tensor([0.5, 1.0, 2.0])
    sol = solve(f, torch.ones(3, 1), times, p, config=SolverConfig(rtol=1e-8, atol=1e-10))
    assert sol.status.tolist()[0] == Status.OK and sol.status.tolist()[2] == Status.OK
    assert sol.status.tolist()[1] in (Status.NONFINITE, Status.STEP_TOO_SMALL, Status.MAX_STEPS)
    exact = 1.0 / (1.0 - p * times)
    assert torch.allclose(sol.ys[[0, 2], :, 0], exact[[0, 2]], rtol=1e-6)
    assert torch.isnan(sol.ys[1, 2, 0])  # no fabricated value after the blow-up
    tde = solve(f, torch.ones(3, 1), times, p, config=SolverConfig(backend="torchdiffeq", rtol=1e-8, atol=1e-10, max_steps=2000))
    assert tde.status.tolist()[0] == Status.OK and tde.status.tolist()[2] == Status.OK and tde.status.tolist()[1] != Status.OK


def test_max_steps_is_reported_per_subject():
    p = torch.tensor([[1.0], [1000.0]])  # the stiff subject needs many more steps
    sol = solve(decay, torch.ones(2, 1), torch.tensor([10.0]), p, config=SolverConfig(max_steps=200))
    assert sol.status.tolist() == [Status.OK, Status.MAX_STEPS]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="rk4"), "needs a positive dt"),
        (dict(adjoint=True), "needs backend='torchdiffeq'"),
        (dict(rtol=-1.0), "rtol must be a positive"),
        (dict(method="radau"), "not available"),
        (dict(dt=0.1), "only used by fixed-step"),
    ],
)
def test_contradictory_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SolverConfig(**kwargs)


def test_bad_times_raise_clear_errors():
    y0, p = torch.ones(1, 1), torch.ones(1, 1)
    with pytest.raises(ValueError, match="sorted"):
        solve(decay, y0, torch.tensor([1.0, 0.5]), p)
    with pytest.raises(ValueError, match=">= t0"):
        solve(decay, y0, torch.tensor([-1.0, 0.5]), p)
    with pytest.raises(ValueError, match="finite"):
        solve(decay, y0, torch.tensor([float("nan")]), p)


def test_float32_agrees_with_float64():
    m, theta = _baccam_batch(4)
    times = torch.linspace(0, 10, 11)
    y64 = solve(m, m.initial_state(theta), times, theta, config=SolverConfig(rtol=1e-5, atol=1e-3)).ys
    th32 = theta.float()
    sol32 = solve(m, m.initial_state(th32), times.float(), th32, config=SolverConfig(rtol=1e-5, atol=1e-3))
    assert sol32.ys.dtype == torch.float32 and sol32.ok.all()
    rel = (sol32.ys.double() - y64).abs() / (y64.abs() + 1.0)
    assert float(rel.max()) < 1e-3


def test_dose_table_matches_dose_objects_including_addl():
    import pandas as pd

    frame = pd.DataFrame({"subject_id": ["a", "b", "b"], "time": [1.0, 0.0, 2.0], "amount": [2.0, 1.0, 3.0],
                          "target": ["x", "x", "x"], "duration": [0.0, 0.5, 0.0], "interval": [3.0, None, None],
                          "additional": [2, 0, 0]})
    a = BatchSchedule.from_frame(frame, ["a", "b"], ["x"])
    b = BatchSchedule.from_doses([[Dose(1.0, 2.0, "x", interval=3.0, additional=2)],
                                  [Dose(0.0, 1.0, "x", duration=0.5), Dose(2.0, 3.0, "x")]], ["x"])
    times = torch.linspace(0, 10, 41)
    ya = solve(decay, torch.zeros(2, 1), times, torch.full((2, 1), 0.2), schedule=a).ys
    yb = solve(decay, torch.zeros(2, 1), times, torch.full((2, 1), 0.2), schedule=b).ys
    assert torch.equal(ya, yb)
    with pytest.raises(ValueError, match=r"amount must be finite and >= 0; offending rows \[1\]"):
        BatchSchedule.from_frame(frame.assign(amount=[1.0, -1.0, 1.0]), ["a", "b"], ["x"])
    with pytest.raises(ValueError, match="need an interval"):
        BatchSchedule.from_frame(frame.assign(interval=None), ["a", "b"], ["x"])
