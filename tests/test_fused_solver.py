"""The fused (torch.compile-d) solver step against the unfused one, analytic solutions and its fallbacks.

Compiling a step takes seconds (a C++ compiler run per graph), so the default suite compiles one small graph
(a two-state model with doses, forward only); gradients, the built-in models, RK4 and ``auto`` are slow tests.
"""

import importlib
import warnings

import numpy as np
import pytest
import torch

import hybridtwin as ht
from hybridtwin.dosing import BatchSchedule, Dose
from hybridtwin.solve import SolverConfig, Status, solve

pytestmark = pytest.mark.usefixtures("float64")


def chain(t, y, p):
    """x -> z at rate p0, z cleared at rate p1 (analytic solution below)."""
    return torch.stack([-p[:, 0] * y[:, 0], p[:, 0] * y[:, 0] - p[:, 1] * y[:, 1]], dim=1)


def chain_exact(t, a, b, x0=1.0):
    return x0 * np.exp(-a * t), x0 * a / (b - a) * (np.exp(-a * t) - np.exp(-b * t))


def _problem(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.exp(0.3 * torch.randn(n, 2, generator=g)) * torch.tensor([1.0, 0.4])
    times = torch.linspace(0.0, 12.0, 31)
    # every third subject gets a bolus into x at a subject-specific time (a breakpoint inside the output grid)
    doses = [[Dose(2.0 + 0.1 * i, 0.5, "x")] if i % 3 == 0 else [] for i in range(n)]
    return torch.ones(n, 2) * torch.tensor([1.0, 0.0]), times, p, BatchSchedule.from_doses(doses, ["x", "z"])


def test_fused_step_matches_unfused_and_analytic_and_is_batch_invariant(monkeypatch):
    # the default suite compiles without Inductor's C++ call wrapper (half the compile time); the slow tests below
    # use the library's own options
    monkeypatch.setattr(importlib.import_module("hybridtwin.solve"), "_FUSED_COMPILE_OPTIONS", {})
    y0, times, p, sched = _problem()
    cfg = dict(rtol=1e-8, atol=1e-10)
    plain = solve(chain, y0, times, p, schedule=sched, config=SolverConfig(**cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to the unfused step would warn: not here
        fused = solve(chain, y0, times, p, schedule=sched, config=SolverConfig(**cfg, fused=True))
    assert fused.status.tolist() == plain.status.tolist() and bool(fused.ok.all())
    # the same method and error control, but a fused step ends on the next output time instead of passing it:
    # other steps, so equal to the tolerance (not to rounding), with at most one extra step per output
    assert torch.allclose(fused.ys, plain.ys, rtol=1e-6, atol=1e-8)
    extra = fused.n_steps - plain.n_steps
    assert int(extra.min()) >= -1 and int(extra.max()) <= times.numel()
    # subjects without a dose against the analytic solution
    t = times.numpy()
    for i in (1, 2, 4):
        x, z = chain_exact(t, float(p[i, 0]), float(p[i, 1]))
        np.testing.assert_allclose(fused.ys[i, :, 0].numpy(), x, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(fused.ys[i, :, 1].numpy(), z, rtol=1e-6, atol=1e-9)
    # a subject alone gives bit for bit its result in the batch (same compiled graph, element-wise arithmetic)
    alone = solve(chain, y0[[3, 6]], times, p[[3, 6]], schedule=sched.select(torch.tensor([3, 6])),
                  config=SolverConfig(**cfg, fused=True))
    assert torch.equal(alone.ys, fused.ys[[3, 6]])


def test_fused_outputs_at_repeated_times_and_doses_on_output_times(monkeypatch):
    # outputs are the ends of steps: a repeated output time gets the same value each time, and an output at a
    # dose time is taken after the dose (right-continuous), as the unfused solver does
    monkeypatch.setattr(importlib.import_module("hybridtwin.solve"), "_FUSED_COMPILE_OPTIONS", {})
    y0, _, p, _ = _problem(n=6)
    times = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.5, 2.5, 2.5, 3.0, 7.0, 7.0])
    sched = BatchSchedule.from_doses([[Dose(2.5, 0.5, "x")], [], [Dose(1.0, 1.0, "x")], [], [Dose(0.3, 1.0, "z")], []],
                                     ["x", "z"])
    cfg = dict(rtol=1e-8, atol=1e-10)
    plain = solve(chain, y0, times, p, schedule=sched, config=SolverConfig(**cfg))
    fused = solve(chain, y0, times, p, schedule=sched, config=SolverConfig(**cfg, fused=True))
    assert bool(fused.ok.all()) and not bool(torch.isnan(fused.ys).any())
    assert torch.allclose(fused.ys, plain.ys, rtol=1e-6, atol=1e-8)
    for a, b in ((1, 2), (4, 5), (4, 6), (8, 9)):
        assert torch.equal(fused.ys[:, a], fused.ys[:, b])
    # the dose of 0.5 into x at 2.5 is in the outputs at 2.5 (vs. the subject without one, same parameters start)
    x_before = fused.ys[0, 3, 0] * torch.exp(-0.5 * p[0, 0])
    assert abs(float(fused.ys[0, 4, 0] - x_before) - 0.5) < 1e-6


@pytest.mark.slow
def test_fused_column_form_of_a_model_keeps_statuses_and_batch_invariance(monkeypatch):
    # a Model's fused step without gradients runs on state columns (Model.vector_field_columns): a subject that
    # blows up (y' = k y^2, at t = 1/k) fails with the unfused solver's status and loses only its later
    # outputs; the others match y = 1/(1 - k t), alone or in the batch, through compactions of the working set
    solve_module = importlib.import_module("hybridtwin.solve")
    monkeypatch.setattr(solve_module, "_FUSED_COMPILE_OPTIONS", {})
    blowup = ht.Model("blowup_columns", ["y"], [ht.Parameter("k", 0.1, 0.0, 10.0)],
                      rhs=lambda t, s, p: {"y": p.k * s.y ** 2}, initial={"y": 1.0})
    k = torch.tensor([[0.1], [1.0], [0.3], [0.05], [0.45], [0.2]])
    times = torch.tensor([0.25, 0.5, 1.5, 2.0])
    y0 = torch.ones(6, 1)
    cfg = dict(rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        plain = solve(blowup, y0, times, k, config=SolverConfig(**cfg))
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # compiled, not fallen back
            fused = solve(blowup, y0, times, k, config=SolverConfig(**cfg, fused=True))
        alone = solve(blowup, y0[[2, 5]], times, k[[2, 5]], config=SolverConfig(**cfg, fused=True))
    assert solve_module._fused_stages(blowup.vector_field, SolverConfig(fused=True)).columns is not None
    assert fused.status.tolist() == plain.status.tolist()
    assert fused.status[1] != Status.OK and bool(fused.ok[[0, 2, 3, 4, 5]].all())
    assert bool(torch.isnan(fused.ys[1, 2:]).all()) and not bool(torch.isnan(fused.ys[1, :2]).any())
    exact = 1.0 / (1.0 - k * times)
    ok = torch.tensor([0, 2, 3, 4, 5])
    assert torch.allclose(fused.ys[ok, :, 0], exact[ok], rtol=1e-7)
    assert torch.equal(alone.ys, fused.ys[[2, 5]])


def test_uncompilable_vector_field_warns_once_and_solves_unfused():
    def with_numpy(t, y, p):  # Python control flow on tensor values: cannot be captured as one graph
        return -p * y if float(y.sum()) >= 0 else p * y

    y0, times = torch.ones(3, 1), torch.linspace(0, 2, 5)
    p = torch.tensor([[0.5], [1.0], [2.0]])
    with pytest.warns(RuntimeWarning, match="could not be compiled.*solving unfused"):
        sol = solve(with_numpy, y0, times, p, config=SolverConfig(rtol=1e-9, atol=1e-12, fused=True))
    assert torch.allclose(sol.ys[..., 0], torch.exp(-p * times), rtol=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the failure is remembered: no second warning
        solve(with_numpy, y0, times, p, config=SolverConfig(rtol=1e-9, atol=1e-12, fused=True))


def test_error_in_vector_field_propagates_unchanged():
    def broken(t, y, p):
        raise ValueError("model bug: negative volume")

    with pytest.raises(ValueError, match="model bug: negative volume"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        solve(broken, torch.ones(2, 1), torch.tensor([1.0]), torch.ones(2, 1), config=SolverConfig(fused=True))


@pytest.mark.parametrize("kwargs, message", [
    (dict(fused=True, method="rodas4"), "fused=True"),
    (dict(fused=True, backend="torchdiffeq"), "fused=True"),
    (dict(fused="yes"), "fused must be True or False"),
    (dict(fused=True, fused_block=0), "fused_block must be an integer from 1 to 8"),
    (dict(fused=True, fused_block=2.0), "fused_block must be an integer"),
    (dict(fused=True, fused_block=True), "fused_block must be an integer"),
    (dict(fused=True, fused_block=9), "fused_block must be an integer from 1 to 8"),
])
def test_fused_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SolverConfig(**kwargs)


@pytest.mark.slow  # ~1 min: compiles forward and backward graphs
def test_fused_gradients_match_unfused():
    y0, times, p, sched = _problem(n=16)

    def grads(fused):
        q = p.clone().requires_grad_(True)
        sol = solve(chain, y0, times, q, schedule=sched, config=SolverConfig(rtol=1e-8, atol=1e-10, fused=fused))
        loss = (sol.ys[..., 1] ** 2).sum()
        loss.backward()
        return loss.detach(), q.grad

    (l0, g0), (l1, g1) = grads(False), grads(True)
    # the fused steps end on output times (other steps than unfused): equal to the tolerance (rtol 1e-8)
    assert torch.allclose(l0, l1, rtol=1e-7)
    assert torch.allclose(g0, g1, rtol=1e-6, atol=1e-10)


@pytest.mark.slow  # ~1.5 min: compiles forward and backward graphs of one and of three steps
def test_differentiated_fused_blocks_of_steps_make_exactly_the_single_steps():
    # a differentiated fused solve makes several steps per compiled call (fused_block), freezing a row that reaches
    # a dose, its end or a repeated output time until the loop has handled it: every row must make the very steps
    # of one-step calls (outputs equal, gradients to rounding, same statuses and step counts), including outputs
    # at repeated times and at dose times, and doses at subject-specific times between outputs
    y0, times, p, _ = _problem(n=12)
    times = torch.cat([times, torch.tensor([6.0, 6.0, 2.0])]).sort().values
    sched = BatchSchedule.from_doses([[Dose(2.0, 0.5, "x"), Dose(4.4 + 0.1 * i, 0.3, "z")] if i % 2 == 0 else []
                                      for i in range(12)], ["x", "z"])

    def run(fused, block):
        q = p.clone().requires_grad_(True)
        cfg = SolverConfig(rtol=1e-8, atol=1e-10, fused=fused, fused_block=block)
        # initial states that depend on the parameters (as a twin's do): every call's inputs require grad
        sol = solve(chain, y0 + 0.0 * q[:, :1], times, q, schedule=sched, config=cfg)
        ((sol.ys[..., 1] ** 2).sum() + sol.ys[..., 0].sum()).backward()
        return sol, q.grad

    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    solve_mod = importlib.import_module("hybridtwin.solve")
    code = solve_mod._fused_stages(chain, SolverConfig(fused=True))._step.__code__
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # compiled, not fallen back
        one, g1 = run(True, 1)
        graphs = len(_debug_get_cache_entry_list(code))
        three, g3 = run(True, 3)
        # one new graph serves every call of the three-step solve: the first call's output buffer requires grad
        # like the later ones' (a compiled graph is specialised to its inputs' requires_grad; other tests in this
        # process may have compiled graphs of `chain` before)
        assert len(_debug_get_cache_entry_list(code)) == graphs + 1
    plain, g0 = run(False, 1)
    assert torch.equal(three.ys, one.ys) and not bool(torch.isnan(one.ys).any())
    assert torch.equal(three.status, one.status) and torch.equal(three.n_steps, one.n_steps)
    assert torch.allclose(g3, g1, rtol=1e-12, atol=1e-13)
    # and both agree with the unfused solver to its tolerance (the fused steps end on output times)
    assert torch.allclose(one.ys, plain.ys, rtol=1e-6, atol=1e-8)
    assert torch.allclose(g1, g0, rtol=1e-5, atol=1e-8)


@pytest.mark.slow  # ~2 min: compiles the column-form step of a built-in model in blocks of one and three
def test_fused_blocks_without_gradients_make_exactly_the_single_steps_through_compaction():
    # without gradients a built-in model's fused step runs on state columns and the loop compacts finished subjects
    # away; blocks write outputs by subject, so they must give bit for bit the outputs, statuses and step counts of
    # one step per call, with boluses, infusions (constant rates inside a block: their ends are stops) and subjects
    # that end at different times
    import pandas as pd

    m = ht.models.get("vaccine_asc")
    rng = np.random.default_rng(1)
    n, d = 30, m.default_parameters()
    params = pd.DataFrame({k: d[k] * np.exp(0.2 * rng.standard_normal(n)) for k in ["alpha_S", "delta_Ab"]})
    theta = m.parameter_space.tensor_from([{**d, **row} for row in params.to_dict("records")], dtype=torch.float64)
    doses = pd.DataFrame({"subject_id": np.repeat(np.arange(n), 2), "time": np.c_[np.zeros(n), rng.uniform(20, 40, n)].ravel(),
                          "amount": 1.0, "target": "Ag", "duration": np.tile([0.0, 2.0], n)})
    target_map = {k: iv.target for k, iv in m.interventions.items()}
    sched = BatchSchedule.from_frame(doses, list(range(n)), m.all_state_names, target_map, dtype=torch.float64)
    times = torch.linspace(0.0, 120.0, 25)
    mask = torch.arange(25)[None, :] < torch.as_tensor(rng.integers(8, 26, n))[:, None]  # ends from day 35 to 120

    def run(block):
        with torch.no_grad():
            return solve(m, m.initial_state(theta), times, theta, schedule=sched, mask=mask,
                         config=SolverConfig(rtol=1e-6, fused=True, fused_block=block))

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # compiled, not fallen back
        one, three = run(1), run(3)
    assert bool(one.ok.all()) and not bool(torch.isnan(one.ys[mask]).any())
    assert torch.equal(torch.nan_to_num(three.ys, nan=-1.0), torch.nan_to_num(one.ys, nan=-1.0))
    assert torch.equal(three.status, one.status) and torch.equal(three.n_steps, one.n_steps)


@pytest.mark.slow  # ~2 min: compiles the step of two built-in models
@pytest.mark.parametrize("method", ["dopri5", "auto"])
def test_fused_builtin_models_with_boluses_and_infusions(method):
    import pandas as pd

    rng = np.random.default_rng(0)
    m = ht.models.get("vaccine_asc")
    n, d = 60, m.default_parameters()
    params = pd.DataFrame({k: d[k] * np.exp(0.2 * rng.standard_normal(n)) for k in ["alpha_S", "delta_Ab"]})
    params.insert(0, "subject_id", np.arange(n))
    doses = pd.DataFrame({"subject_id": np.repeat(np.arange(n), 2),
                          "time": np.c_[np.zeros(n), rng.uniform(20, 40, n)].ravel(), "amount": 1.0,
                          "target": "Ag", "duration": np.tile([0.0, 2.0], n)})  # a bolus, then an infusion
    times = np.linspace(0, 120, 25)
    a = ht.simulate(m, times, params=params, doses=doses, rtol=1e-6, method=method, progress=False)
    b = ht.simulate(m, times, params=params, doses=doses, rtol=1e-6, method=method, progress=False, fused=True)
    assert a.attrs["status"] == b.attrs["status"]
    x, y = a[m.state_names].to_numpy(), b[m.state_names].to_numpy()
    # equal to the tolerance (rtol 1e-6; the fused steps end on output times)
    assert np.nanmax(np.abs(x - y) / np.maximum(np.abs(x), 1e-3 * np.nanmax(np.abs(x), axis=0))) < 1e-4


@pytest.mark.slow  # ~1 min
def test_fused_rk4_matches_unfused():
    y0, times, p, sched = _problem(n=10)
    cfg = dict(method="rk4", dt=0.01)
    a = solve(chain, y0, times, p, schedule=sched, config=SolverConfig(**cfg))
    b = solve(chain, y0, times, p, schedule=sched, config=SolverConfig(**cfg, fused=True))
    assert torch.allclose(a.ys, b.ys, rtol=1e-12, atol=1e-14)


@pytest.mark.slow  # ~1 min: a twin's dynamics with a neural closure, forward and backward compiled
def test_fused_twin_with_closure_matches_unfused_including_closure_gradients():
    import dataclasses

    from test_surrogate import _twin_with_closure

    twin, cohort = _twin_with_closure()
    batch = twin.dataset(cohort).batch()

    def run(fused):
        twin.solver_config = dataclasses.replace(twin.solver_config, fused=fused)
        twin.zero_grad()
        theta = twin.theta(twin.mu.detach()[None].expand(len(batch), -1).clone())
        g, status = twin.observables_at(theta, batch)
        (g ** 2).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in twin.dynamics.parameters() if p.grad is not None])
        return g.detach(), status, grads

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # compiled, not fallen back
        (g0, s0, w0), (g1, s1, w1) = run(False), run(True)
    assert torch.equal(s0, s1) and w0.numel() > 0
    # equal to the twin's solver tolerance (the fused steps end on output times)
    rtol = twin.solver_config.rtol
    assert torch.allclose(g0, g1, rtol=100 * rtol, atol=100 * rtol * float(g0.abs().max()))
    assert torch.allclose(w0, w1, rtol=1e3 * rtol, atol=1e3 * rtol * float(w0.abs().max()))


def test_each_vector_field_gets_its_own_compiled_code():
    # dynamo caches graphs and counts recompilations per code object; vector fields sharing one would share the
    # limit of 8 and, past it, fall back to unfused solves (seen with several models in one process)
    solve_module = importlib.import_module("hybridtwin.solve")
    m1, m2 = ht.models.get("baccam2006"), ht.models.get("vaccine_asc")
    a, b = (solve_module._fused_stages(m.vector_field, SolverConfig(fused=True)) for m in (m1, m2))
    assert a is solve_module._fused_stages(m1.vector_field, SolverConfig(fused=True))  # cached per model
    assert a._step.__code__ is not b._step.__code__
    assert a._step.__code__.co_code == b._step.__code__.co_code  # the same step
