"""The one solve entry point: a batch of subjects, each with its own output times, doses and parameters.

``solve(f, y0, times, params, *, schedule=None, mask=None, config=SolverConfig())`` integrates
``dy/dt = f(t, y, params) + infusion rates`` for B subjects at once and returns a :class:`Solution` with
the states at every subject's own output times and a per-subject :class:`Status`.

Two backends:

- ``"native"`` (default): a batched explicit Runge-Kutta integrator where **every subject has its own
  clock, step size, error control, dose breakpoints and step counter** (Dormand-Prince 5(4) with its
  continuous extension for outputs, or fixed-step classical RK4). Because all arithmetic is element-wise
  per subject, a subject's result does not depend on its batch mates (up to the last bit of batched matrix
  products and vectorised transcendental functions inside the vector field, e.g. of neural terms). A
  subject that produces non-finite values, needs a step below the resolution of its clock, or exceeds
  ``max_steps`` is frozen with its status; its missing outputs are NaN and masked out; the others
  proceed. Subjects that have finished (reached their last output time) or failed leave the working set,
  so the cost of a step is proportional to the subjects still integrating: a stiff subject that needs 100x
  more steps than its batch mates costs about what it would cost alone, not 100 times the whole batch.
  ``max_seconds`` optionally bounds the wall time of a solve (status ``TIME_BUDGET`` for the subjects it
  stops). Gradients flow by automatic differentiation through the steps (discretise-then-optimise),
  including dose jumps.
- ``"torchdiffeq"``: any torchdiffeq method, optionally with the adjoint (``adjoint=True``). Subjects are
  integrated together between the union of all breakpoints in the batch, with one shared adaptive step
  whose error norm covers the whole batch; a subject's result therefore depends on its batch mates through
  the step sequence, within the solver tolerance. A batch where torchdiffeq fails (step-size underflow,
  non-finite state, too many steps) is bisected to find the failing subjects.

Only numerical failures become statuses. An exception raised by the vector field itself (a shape error, a
``TypeError``, a ``ValueError``...) is a bug in the model code and propagates unchanged, with either backend.

Dose semantics: integration stops exactly at every dose time of a subject; an output requested at a bolus
time reports the state *after* the bolus (right-continuous trajectories); infusions are constant rates
between their start (inclusive) and end (exclusive).

Example
-------
>>> import torch
>>> from hybridtwin.solve import solve, SolverConfig
>>> f = lambda t, y, p: -p * y                       # exponential decay, one state
>>> sol = solve(f, torch.ones(2, 1, dtype=torch.float64), torch.tensor([[1.0, 2.0], [0.5, 3.0]]),
...             torch.tensor([[1.0], [2.0]], dtype=torch.float64), config=SolverConfig(rtol=1e-10, atol=1e-12))
>>> [round(v, 6) for v in sol.ys[0, :, 0].tolist()]
[0.367879, 0.135335]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ._solver_status import FIXED_STEP, NATIVE_METHODS, TORCHDIFFEQ_METHODS, Status
from .dosing import BatchSchedule




@dataclass(frozen=True)
class SolverConfig:
    """How to integrate. Frozen and validated at construction.

    method: ``"dopri5"`` (adaptive, default) or ``"rk4"`` (fixed step ``dt``); with
        ``backend="torchdiffeq"`` any torchdiffeq method name.
    rtol, atol: relative and absolute tolerances; ``atol`` may be one number or one per state.
    dt: step size of fixed-step methods (required for them).
    max_steps: per-subject limit on attempted steps.
    backend: ``"native"`` or ``"torchdiffeq"``.
    adjoint: use torchdiffeq's adjoint method for gradients (requires ``backend="torchdiffeq"``).
    max_seconds: optional wall-time budget of one native solve; subjects still integrating when it is spent
        stop with status ``TIME_BUDGET`` (their outputs before that point are kept, later ones are NaN). Which
        subjects finish in time depends on the machine, so results under a budget are not reproducible.
    """

    method: str = "dopri5"
    rtol: float = 1e-6
    atol: float | tuple[float, ...] = 1e-9
    dt: float | None = None
    max_steps: int = 100_000
    backend: str = "native"
    adjoint: bool = False
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("native", "torchdiffeq"):
            raise ValueError(f"backend must be 'native' or 'torchdiffeq', got {self.backend!r}")
        allowed = NATIVE_METHODS if self.backend == "native" else TORCHDIFFEQ_METHODS
        if self.method not in allowed:
            raise ValueError(f"method {self.method!r} is not available with backend {self.backend!r}; choose from {allowed}")
        if self.adjoint and self.backend != "torchdiffeq":
            raise ValueError("adjoint=True needs backend='torchdiffeq' (the native backend differentiates through its steps)")
        if not (isinstance(self.rtol, (int, float)) and math.isfinite(self.rtol) and self.rtol > 0):
            raise ValueError(f"rtol must be a positive number, got {self.rtol!r}")
        atol = self.atol if isinstance(self.atol, (tuple, list)) else (self.atol,)
        if not all(isinstance(a, (int, float)) and math.isfinite(a) and a > 0 for a in atol):
            raise ValueError(f"atol must be positive number(s), got {self.atol!r}")
        if isinstance(self.atol, list):
            object.__setattr__(self, "atol", tuple(float(a) for a in self.atol))
        if self.method in FIXED_STEP:
            if self.dt is None or not (math.isfinite(self.dt) and self.dt > 0):
                raise ValueError(f"fixed-step method {self.method!r} needs a positive dt, got {self.dt!r}")
        elif self.dt is not None:
            raise ValueError(f"dt is only used by fixed-step methods {FIXED_STEP}; {self.method!r} chooses its own steps")
        if isinstance(self.max_steps, bool) or not (isinstance(self.max_steps, int) and self.max_steps > 0):
            raise ValueError(f"max_steps must be a positive integer, got {self.max_steps!r}")
        if self.max_seconds is not None:
            number = isinstance(self.max_seconds, (int, float)) and not isinstance(self.max_seconds, bool)
            if not (number and math.isfinite(self.max_seconds) and self.max_seconds > 0):
                raise ValueError(f"max_seconds must be a positive number of seconds or None, got {self.max_seconds!r}")
            if self.backend != "native":
                raise ValueError("max_seconds (a wall-time budget) is only supported by backend='native'")


@dataclass
class Solution:
    """States at each subject's output times.

    ys: (B, T, S) states (NaN where ``mask`` is False or the subject failed before that time)
    times: (B, T) output times; mask: (B, T) valid outputs; status: (B,) :class:`Status` codes;
    n_steps: (B,) attempted steps per subject.
    """

    ys: torch.Tensor
    times: torch.Tensor
    mask: torch.Tensor
    status: torch.Tensor
    n_steps: torch.Tensor
    state_names: list[str] = field(default_factory=list)

    @property
    def ok(self) -> torch.Tensor:
        return self.status == Status.OK

    def status_names(self) -> list[str]:
        return [Status(int(s)).name.lower() for s in self.status.tolist()]


# Dormand & Prince (1980) 5(4) tableau; continuous extension after Shampine (1986).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)
_DP_P = (
    (1.0, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432),
    (0.0, 0.0, 0.0, 0.0),
    (0.0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799),
    (0.0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072),
    (0.0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632),
    (0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844),
    (0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423),
)


def solve(
    vector_field: Callable,
    y0: torch.Tensor,
    times: torch.Tensor,
    params: torch.Tensor,
    *,
    schedule: BatchSchedule | None = None,
    mask: torch.Tensor | None = None,
    config: SolverConfig = SolverConfig(),
    t0: float = 0.0,
    state_names: Sequence[str] | None = None,
) -> Solution:
    """Integrate a batch of subjects; see the module docstring.

    vector_field: ``f(t, y, params) -> dy`` with ``t`` (B,), ``y`` (B, S), ``params`` (B, P); a
        :class:`hybridtwin.Model` may be passed (its ``vector_field`` is used).
    y0: (B, S) initial states at ``t0``. times: (B, T) or (T,) output times, sorted per subject, >= t0.
    params: (B, P) per-subject parameters. schedule: per-subject doses. mask: (B, T) bool of valid
        (non-padding) output times.
    """
    bind = getattr(vector_field, "bind", None)
    f = getattr(vector_field, "vector_field", vector_field)
    if state_names is None:
        state_names = list(getattr(vector_field, "all_state_names", []))
    y0, times, params, mask, schedule = _check_inputs(y0, times, params, mask, schedule, t0)
    if config.backend == "torchdiffeq":
        from ._torchdiffeq_backend import solve_torchdiffeq

        out = solve_torchdiffeq(f, y0, times, params, schedule, mask, config, t0, dynamics=vector_field)
    else:
        if bind is not None:
            out = _solve_native(bind, y0, times, params, schedule, mask, config, t0, prepared=True)
        else:
            out = _solve_native(f, y0, times, params, schedule, mask, config, t0)
    ys, status, n_steps = out
    return Solution(ys, times, mask, status, n_steps, list(state_names))


def _check_inputs(y0, times, params, mask, schedule, t0):
    if not torch.is_tensor(y0) or y0.dim() != 2:
        raise ValueError(f"y0 must be a (B, S) tensor, got {type(y0).__name__} {tuple(getattr(y0, 'shape', ()))}")
    B = y0.shape[0]
    times = torch.as_tensor(times, dtype=y0.dtype, device=y0.device)
    if times.dim() == 1:
        times = times.expand(B, -1)
    if times.dim() != 2 or times.shape[0] != B:
        raise ValueError(f"times must be (T,) or (B, T) with B = {B}, got shape {tuple(times.shape)}")
    if not torch.is_tensor(params) or params.dim() != 2 or params.shape[0] != B:
        raise ValueError(f"params must be a (B, P) tensor with B = {B}, got {tuple(getattr(params, 'shape', ()))}")
    if mask is None:
        mask = torch.ones(times.shape, dtype=torch.bool, device=times.device)
    elif mask.shape != times.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from times shape {tuple(times.shape)}")
    mask = mask.to(torch.bool)
    tv = torch.where(mask, times, torch.full_like(times, t0))
    if not torch.isfinite(tv).all():
        raise ValueError("output times must be finite (mark padding with mask=False instead of inf/NaN)")
    if (tv < t0).any():
        b = int((tv < t0).any(dim=1).nonzero()[0])
        raise ValueError(f"output times must be >= t0 = {t0}; subject {b} has {times[b][(tv[b] < t0)].tolist()}")
    big = torch.where(mask, times, torch.full_like(times, float("inf")))
    running = torch.cummax(torch.where(mask, times, torch.full_like(times, -float("inf"))), dim=1).values
    if (mask & (times < running)).any():
        b = int((mask & (times < running)).any(dim=1).nonzero()[0])
        raise ValueError(f"output times must be sorted within each subject; subject {b} is not: {big[b].tolist()}")
    if schedule is None:
        schedule = BatchSchedule.empty(B, dtype=y0.dtype, device=y0.device)
    elif schedule.batch_size != B:
        raise ValueError(f"schedule has {schedule.batch_size} subjects but y0 has {B}")
    else:
        schedule = schedule.to(dtype=y0.dtype, device=y0.device)
    early = (schedule.bolus_time < t0) | (schedule.inf_start < t0)
    if early.any():
        raise ValueError(f"doses before the start time t0 = {t0} cannot be simulated (subject {int(early.any(1).nonzero()[0])})")
    return y0, times, params, mask, schedule


def _rms(x: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.mean(x * x, dim=-1))


def _solve_native(f, y0, times, params, schedule, mask, config, t0, prepared=False):
    """The native step loop over a shrinking working set of subjects.

    Every per-subject quantity (clock ``t``, state ``y``, step ``h``, output pointer, step counter, status,
    schedule rows, bound parameters) lives in tensors indexed by *working* row; ``gidx`` maps a working row
    to its subject. A subject leaves the working set once it is done (reached its last output time) or has
    failed, so after a compaction each step only costs work for the subjects still integrating. Compaction
    only gathers rows; every subject's arithmetic is element-wise, and made of operations whose result does not
    depend on where an element sits in a tensor (see :func:`_fifth_root`), so results do not depend on when (or
    whether) compaction happens, nor on the batch mates.
    """
    B, S = y0.shape
    dtype, device = y0.dtype, y0.device
    deadline = None if config.max_seconds is None else time.perf_counter() + config.max_seconds
    inf = torch.tensor(float("inf"), dtype=dtype, device=device)
    tout = torch.where(mask, times, inf)
    T = tout.shape[1]
    if T:
        t_end = torch.where(mask, times, torch.full_like(times, t0)).amax(dim=1)
    else:
        t_end = torch.full((B,), t0, dtype=dtype, device=device)
    bps = schedule.breakpoints()
    atol = torch.as_tensor(config.atol, dtype=dtype, device=device)
    if atol.dim() == 1 and atol.numel() not in (1, S):
        raise ValueError(f"atol has {atol.numel()} entries but the system has {S} states")
    rtol = config.rtol
    adaptive = config.method == "dopri5"

    t = torch.full((B,), float(t0), dtype=dtype, device=device)
    all_b = torch.ones(B, dtype=torch.bool, device=device)
    y = y0 + schedule.bolus_at(t, S, all_b)
    out_idx, out_val = [], []
    # outputs are visited in time order through a per-subject pointer (padding sorts last as +inf)
    tsorted, order = torch.sort(tout, dim=1, stable=True)
    tsorted = torch.cat([tsorted, torch.full((B, 1), float("inf"), dtype=dtype, device=device)], dim=1)
    ptr = torch.zeros(B, dtype=torch.long, device=device)
    gidx = torch.arange(B, device=device)  # working row -> subject

    def next_out() -> torch.Tensor:
        return tsorted.gather(1, ptr[:, None])[:, 0]

    def take(sel: torch.Tensor, values_fn) -> None:
        """Record outputs at the pointer for working rows in ``sel`` and advance their pointers."""
        nonlocal ptr
        b = sel.nonzero()[:, 0]
        out_idx.append(gidx[b] * T + order[b, ptr[b]])
        out_val.append(values_fn(b))
        ptr = ptr + sel.long()

    def record_equal(tt: torch.Tensor, ok: torch.Tensor, values: torch.Tensor) -> None:
        while True:
            sel = ok & (next_out() == tt)
            if not bool(sel.any()):
                return
            take(sel, lambda b: values[b])

    if T:
        record_equal(t, all_b, y)

    has_infusions = bool(torch.isfinite(schedule.inf_start).any())
    has_breakpoints = bool(torch.isfinite(bps).any())

    def bind(p):
        return f(p) if prepared else (lambda tt, yy: f(tt, yy, p))

    bound = bind(params)
    sched = schedule

    def rate_at(tt):
        """Infusion rates are constant over a step (steps never cross a breakpoint): read at its start."""
        return sched.infusion_rate(tt, S) if has_infusions else None

    def F(tt, yy, rate=None):
        return bound(tt, yy) if rate is None else bound(tt, yy) + rate

    status_all = torch.zeros(B, dtype=torch.long, device=device)
    n_steps_all = torch.zeros(B, dtype=torch.long, device=device)
    status = status_all.clone()
    n_steps = n_steps_all.clone()
    done = t >= t_end
    fcur = F(t, y, rate_at(t))
    if adaptive:
        h = _initial_step(lambda tt, yy: F(tt, yy, rate_at(t)), t, y, fcur, t_end, rtol, atol)
    else:
        h = torch.full((B,), float(config.dt), dtype=dtype, device=device)
    zero = torch.zeros((), dtype=dtype, device=device)
    last_nonfinite = torch.zeros(B, dtype=torch.bool, device=device)
    P = torch.tensor(_DP_P, dtype=dtype, device=device) if adaptive else None
    OK, NONFINITE, STEP_TOO_SMALL, MAX_STEPS = (int(s) for s in (Status.OK, Status.NONFINITE, Status.STEP_TOO_SMALL,
                                                                 Status.MAX_STEPS))

    while True:
        n_work = done.shape[0]
        n_done = int(done.sum())
        if n_done:  # finished and failed subjects hand their counters back
            status_all[gidx] = status
            n_steps_all[gidx] = n_steps
        if n_done == n_work:
            break
        if n_done and (n_done * 8 >= n_work or n_work - n_done <= 8):
            # compact once enough of the working set is idle (geometric schedule: few compactions, idle rows
            # never more than ~1/8 of the work); gathers rows, so no subject's arithmetic changes
            keep = (~done).nonzero()[:, 0]
            gidx, t, y, h, fcur, ptr = gidx[keep], t[keep], y[keep], h[keep], fcur[keep], ptr[keep]
            status, n_steps, last_nonfinite, done = status[keep], n_steps[keep], last_nonfinite[keep], done[keep]
            t_end, tsorted, order = t_end[keep], tsorted[keep], order[keep]
            if has_breakpoints:
                bps = bps[keep]
                sched = schedule.select(gidx)
            bound = bind(params[gidx])
        if deadline is not None and time.perf_counter() > deadline:
            # out of wall time: every subject still integrating stops here with its own status
            status = torch.where(done, status, int(Status.TIME_BUDGET))
            status_all[gidx] = status
            n_steps_all[gidx] = n_steps
            break
        active = ~done
        if has_breakpoints:
            nb = torch.where(bps > t[:, None], bps, inf).amin(dim=1)
            stop = torch.minimum(nb, t_end)
        else:
            nb = None
            stop = t_end
        if not adaptive:
            stop = torch.minimum(stop, next_out())
        room = stop - t
        hit = h >= room
        h_try = torch.where(active, torch.where(hit, room, h), zero)
        rate = rate_at(t)
        if not adaptive:
            fcur = F(t, y, rate)
        ks = [fcur]
        hc = h_try[:, None]
        tableau = zip(_DP_C[1:6], _DP_A[1:]) if adaptive else zip((0.5, 0.5, 1.0), ((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)))
        for c, arow in tableau:
            yi = y + hc * sum(a * k for a, k in zip(arow, ks) if a != 0.0)
            ks.append(F(t + c * h_try, yi, rate))
        if adaptive:
            y1 = y + hc * sum(b * k for b, k in zip(_DP_B, ks) if b != 0.0)
            k7 = F(t + h_try, y1, rate)
            ks.append(k7)
            err = hc * sum(e * k for e, k in zip(_DP_E, ks) if e != 0.0)
            with torch.no_grad():
                scale = atol + rtol * torch.maximum(y.detach().abs(), y1.detach().abs())
                en = _rms(err.detach() / scale)
        else:
            y1 = y + hc / 6.0 * (ks[0] + 2.0 * ks[1] + 2.0 * ks[2] + ks[3])
            en = torch.zeros_like(t)
        with torch.no_grad():
            finite = torch.isfinite(y1.detach()).all(dim=1) & torch.isfinite(en)
            accept = active & finite & (en <= 1.0)
        t_new = torch.where(hit, stop, t + h_try)
        if adaptive and T:
            K = None
            while True:
                sel = accept & (next_out() < t_new)
                if not bool(sel.any()):
                    break
                if K is None:
                    K = torch.stack(ks, dim=1)  # (n, 7, S)

                def interpolate(b):
                    theta = (next_out()[b] - t[b]) / h_try[b]
                    q = torch.stack([theta, theta**2, theta**3, theta**4], dim=1) @ P.T  # (n, 7)
                    return y[b] + h_try[b, None] * torch.einsum("ni,nis->ns", q, K[b])

                take(sel, interpolate)
        y_new = torch.where(accept[:, None], y1, y)
        if has_breakpoints:
            at_bp = accept & hit & (stop == nb)
            if bool(at_bp.any()):
                y_new = y_new + sched.bolus_at(t_new, S, at_bp)
        if T:
            record_equal(t_new, accept, y_new)
        t = torch.where(accept, t_new, t)
        y = y_new
        if adaptive:
            fcur = torch.where(accept[:, None], k7, fcur)
            if bool((accept & hit).any()):
                fcur = torch.where((accept & hit)[:, None], F(t, y, rate_at(t)), fcur)
        with torch.no_grad():
            n_steps += active.long()
            if adaptive:
                ratio = 0.9 / _fifth_root(torch.clamp(en, min=1e-10))
                grow = torch.clamp(ratio, 0.2, 10.0)
                shrink = torch.clamp(ratio, 0.2, 0.9)
                factor = torch.where(accept, grow, torch.where(finite, shrink, 0.25))
                h_next = h_try * factor
                h = torch.where(active, torch.where(accept & hit, torch.maximum(h_next, h), h_next), h)
            last_nonfinite = torch.where(active, ~finite, last_nonfinite)
            if adaptive:
                tiny = 1e-13 * torch.clamp(t.abs(), min=1.0)
                too_small = active & ~accept & (h < tiny)
            else:
                too_small = active & ~finite
            status = torch.where(too_small & last_nonfinite, NONFINITE, status)
            status = torch.where(too_small & ~last_nonfinite, STEP_TOO_SMALL, status)
            over = active & (n_steps >= config.max_steps) & (status == OK) & (t < t_end)
            status = torch.where(over, MAX_STEPS, status)
            done = done | (t >= t_end) | (status != OK)

    ys = torch.full((B * T, S), float("nan"), dtype=dtype, device=device)
    if out_idx:
        ys = ys.index_put((torch.cat(out_idx),), torch.cat(out_val))
    return ys.reshape(B, T, S), status_all, n_steps_all


def _fifth_root(x: torch.Tensor) -> torch.Tensor:
    """``x ** (13/64)`` (~ ``x ** 0.2``) for x > 0 from correctly rounded operations only (sqrt and products).

    Used by the step-size controller instead of ``x ** 0.2`` because torch's vectorised ``pow`` and its scalar
    loop (which serves the tail of a batch that does not fill a SIMD register) can differ in the last bit; near
    ``en = 1`` that flips an accept/reject decision, so a subject's whole step sequence -- and its result at
    the tolerance level -- would depend on its position in the batch. Square roots are exact to the last bit
    everywhere, so a subject's steps are bitwise identical alone, in any batch and after any compaction.
    The exponent 13/64 = 0.203 instead of 1/5 is immaterial to the controller.
    """
    r8 = torch.sqrt(torch.sqrt(torch.sqrt(x)))  # x^(1/8)
    r16 = torch.sqrt(r8)
    r64 = torch.sqrt(torch.sqrt(r16))
    return r8 * r16 * r64


def _initial_step(F, t, y, f0, t_end, rtol, atol):
    """Hairer, Norsett & Wanner's starting-step heuristic, per subject."""
    with torch.no_grad():
        y, f0 = y.detach(), f0.detach()
        scale = atol + rtol * y.abs()
        d0, d1 = _rms(y / scale), _rms(f0 / scale)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
        f1 = F(t + h0, y + h0[:, None] * f0).detach()
        d2 = _rms((f1 - f0) / scale) / h0
        dmax = torch.maximum(d1, d2)
        h1 = torch.where(dmax <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), _fifth_root(0.01 / dmax))
        h = torch.minimum(100 * h0, h1)
        span = t_end - t
        h = torch.where(span > 0, torch.minimum(h, span), h)
        return torch.where(torch.isfinite(h) & (h > 0), h, torch.full_like(h, 1e-6))
