"""The one solve entry point: a batch of subjects, each with its own output times, doses and parameters.

``solve(f, y0, times, params, *, schedule=None, mask=None, config=SolverConfig())`` integrates
``dy/dt = f(t, y, params) + infusion rates`` for B subjects at once and returns a :class:`Solution` with
the states at every subject's own output times and a per-subject :class:`Status`.

Two backends:

- ``"native"`` (default): a batched integrator where **every subject has its own clock, step size, error
  control, dose breakpoints and step counter**. Methods: ``"dopri5"`` (default; explicit Dormand-Prince 5(4)
  with its continuous extension for outputs), ``"rk4"`` (fixed-step classical RK4), ``"rodas4"`` (Hairer &
  Wanner's L-stable, stiffly accurate Rosenbrock method of order 4(3), for stiff subjects: per-subject
  Jacobians by automatic differentiation, one LU factorisation of each subject's S x S matrix per step, its
  own continuous extension for outputs) and ``"auto"`` (every subject starts with dopri5; a subject that
  Hairer's stiffness test flags -- 15 accepted steps held at dopri5's stability limit -- is solved again with
  rodas4, together with the other flagged subjects only, while the rest keep their dopri5 results bit for
  bit). Because all arithmetic is element-wise per subject (or, for rodas4, matrix by matrix), a subject's
  result does not depend on its batch mates (up to the last bit of batched matrix products and vectorised
  transcendental functions inside the vector field, e.g. of neural terms). A
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

A stiff subject next to an ordinary one (``y2`` relaxes onto ``y1`` at rate ``p``; 1e5 makes it stiff). With
``method="auto"`` only the stiff subject is handed to rodas4, after a few dozen dopri5 steps; dopri5 alone would
need about 10 * 1e5 / 3.3 = 300 000 steps for it:

>>> g = lambda t, y, p: torch.stack([-y[:, 0], p[:, 0] * (y[:, 0] - y[:, 1])], dim=1)
>>> y0 = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
>>> p = torch.tensor([[1.0], [1e5]], dtype=torch.float64)
>>> sol = solve(g, y0, torch.tensor([1.0, 10.0]), p, config=SolverConfig(method="auto", rtol=1e-8, atol=1e-12))
>>> sol.status_names(), bool(sol.n_steps[1] < 1000)
(['ok', 'ok'], True)
>>> [round(v, 6) for v in sol.ys[:, 0, 1].tolist()]  # exact: t e^-t and p/(p-1) (e^-t - e^-pt) at t = 1
[0.367879, 0.367883]
"""

from __future__ import annotations

import itertools
import math
import time
import types
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ._solver_status import FIXED_STEP, NATIVE_METHODS, TORCHDIFFEQ_METHODS, Status
from .dosing import BatchSchedule




@dataclass(frozen=True)
class SolverConfig:
    """How to integrate. Frozen and validated at construction.

    method: ``"dopri5"`` (adaptive, default), ``"rk4"`` (fixed step ``dt``), ``"rodas4"`` (adaptive, L-stable
        Rosenbrock, for stiff problems) or ``"auto"`` (dopri5, switching the subjects it detects as stiff to
        rodas4); with ``backend="torchdiffeq"`` any torchdiffeq method name. The default stays ``"dopri5"``:
        ``"auto"`` runs a stiffness test after every step, which costs about 10% on a batch where nothing is
        stiff (1000 ordinary baccam2006 subjects, experiments/results/stiff_subject.md), and it is native-only,
        whereas ``"dopri5"`` is also a torchdiffeq method, so ``SolverConfig(backend="torchdiffeq")`` and every
        existing configuration keep their meaning and their bit-identical results. Use ``"auto"`` when some
        subjects may be stiff (extreme parameter values): it keeps dopri5's results for the others.
    rtol, atol: relative and absolute tolerances; ``atol`` may be one number or one per state.
    dt: step size of fixed-step methods (required for them).
    max_steps: per-subject limit on attempted steps.
    backend: ``"native"`` or ``"torchdiffeq"``.
    adjoint: use torchdiffeq's adjoint method for gradients (requires ``backend="torchdiffeq"``).
    max_seconds: optional wall-time budget of one native solve; subjects still integrating when it is spent
        stop with status ``TIME_BUDGET`` (their outputs before that point are kept, later ones are NaN). Which
        subjects finish in time depends on the machine, so results under a budget are not reproducible.
    fused: ``True`` runs each explicit step (the stages with the vector field inside, the error norm, the step
        control and statuses) as one ``torch.compile``-d graph: Inductor turns it into a few C++ loops on CPU or
        Triton kernels on GPU instead of ~150 separate tensor operations and their Python. A fused dopri5 step
        ends on the next output time rather than passing it (outputs are step ends, so no stages leave the graph:
        ~10 % more steps where outputs are dense, much less memory traffic); for a vector field with a column
        form (:meth:`hybridtwin.Model.vector_field_columns`) and no gradients, the step works on state columns,
        one vectorised loop over subjects. The first solve of a vector field compiles (10-90 s) a graph
        specialised to its batch size; another batch size compiles once more (a dynamic graph for every size);
        later solves, in the same process, reuse them. Results agree with the unfused solver to the tolerance
        (other steps, same method and error control) and are still independent of the batch mates; gradients
        flow through the compiled step. A differentiated fused solve keeps finished subjects in the batch (idle)
        instead of compacting it, so that the cheaper static graph serves it. A fused dopri5 solve makes
        ``fused_block`` steps per compiled call (see below). Where compilation fails (no C++
        compiler, a vector field that cannot be captured as one graph) the solve warns once and runs unfused.
        Native backend, explicit methods (``dopri5``, ``rk4``, and ``auto``'s dopri5 pass) only.
    fused_block: adaptive steps per compiled call of a fused dopri5 solve (default 2). The steps are the same as
        one at a time (a subject that reaches a dose, its end or a repeated output time waits for the rest of the
        block), so results do not depend on it, bit for bit; a block pays the per-call costs that dominate a step
        at small batches (the compiled call's wrapper and guards, its autograd node, the loop's Python) once.
        Measured on 2 cores: training the vaccine_asc twin at batch 64 (``experiments/bench_train.py``), 2 steps
        per call are 1.2-1.4x faster than 1 and 4 slower than 2; a solve without gradients of 64 subjects takes
        37 against 70 ms (vaccine_asc) and 70 against 124 ms (baccam2006), of 10,000 baccam2006 subjects about the
        same. Compilation grows with the block (a cold first training epoch of 116 s at 2 against 83 s at 1;
        a 10,000-subject baccam2006 solve's first call 63 against 44 s), so 1 suits short runs. ``auto``'s
        stiffness-checked pass and fixed-step rk4 make one step per call.

    Example::

        >>> from hybridtwin.solve import SolverConfig
        >>> SolverConfig(fused=True, fused_block=1).fused_block
        1
    """

    method: str = "dopri5"
    rtol: float = 1e-6
    atol: float | tuple[float, ...] = 1e-9
    dt: float | None = None
    max_steps: int = 100_000
    backend: str = "native"
    adjoint: bool = False
    max_seconds: float | None = None
    fused: bool = False
    fused_block: int = 2

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
        if not isinstance(self.fused, bool):
            raise ValueError(f"fused must be True or False, got {self.fused!r}")
        if isinstance(self.fused_block, bool) or not (isinstance(self.fused_block, int) and 1 <= self.fused_block <= 8):
            raise ValueError(f"fused_block must be an integer from 1 to 8 (steps per compiled call), got {self.fused_block!r}")
        if self.fused and (self.backend != "native" or self.method == "rodas4"):
            raise ValueError("fused=True (a compiled explicit step) needs backend='native' and method 'dopri5', 'rk4' "
                             f"or 'auto'; got backend={self.backend!r}, method={self.method!r}")


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
        fused = _fused_stages(f, config) if config.fused else None
        if bind is not None:
            out = _solve_native(bind, y0, times, params, schedule, mask, config, t0, prepared=True, fused=fused)
        else:
            out = _solve_native(f, y0, times, params, schedule, mask, config, t0, fused=fused)
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


def _solve_native(f, y0, times, params, schedule, mask, config, t0, prepared=False, fused=None):
    """Native backend: one pass of :func:`_integrate` with ``config.method``; with ``"auto"``, a dopri5 pass that
    sets aside the subjects its stiffness test flags, then a Rodas4 pass over those subjects only, from ``t0``.

    A flagged subject is solved again from the start (rather than continued from where it was flagged), so its
    result is exactly its ``"rodas4"`` result, whatever its batch mates; its step count and ``max_steps`` budget
    include the dopri5 steps spent before the switch. Unflagged subjects keep their dopri5 results bit for bit.
    """
    deadline = None if config.max_seconds is None else time.perf_counter() + config.max_seconds
    args = (f, config, t0, prepared, deadline)
    if config.method != "auto":
        ys, status, n_steps = _integrate(y0, times, params, schedule, mask, *args, method=config.method, fused=fused)
        return ys, status, n_steps
    ys, status, n_steps = _integrate(y0, times, params, schedule, mask, *args, method="dopri5", detect_stiff=True,
                                     fused=fused)
    idx = (status == _STIFF).nonzero()[:, 0]
    if idx.numel():
        ys_s, status_s, n_steps_s = _integrate(y0[idx], times[idx], params[idx], schedule.select(idx), mask[idx],
                                               *args, method="rodas4", steps_done=n_steps[idx])
        ys = ys.index_copy(0, idx, ys_s)
        status = status.index_copy(0, idx, status_s)
        n_steps = n_steps.index_copy(0, idx, n_steps_s)
    return ys, status, n_steps


# Internal status of a subject that "auto"'s dopri5 pass hands over to Rodas4 (never returned to callers).
_STIFF = -1


def _integrate(y0, times, params, schedule, mask, f, config, t0, prepared, deadline, *, method, detect_stiff=False,
               steps_done=None, fused=None):
    """The native step loop over a shrinking working set of subjects, for one ``method`` ("dopri5", "rk4" or
    "rodas4"); the method's own arithmetic is a stepper object (:class:`_ExplicitRK`, :class:`_Rodas4`).

    Every per-subject quantity (clock ``t``, state ``y``, step ``h``, output pointer, step counter, status,
    schedule rows, bound parameters) lives in tensors indexed by *working* row; ``gidx`` maps a working row
    to its subject. A subject leaves the working set once it is done (reached its last output time) or has
    failed, so after a compaction each step only costs work for the subjects still integrating. Compaction
    only gathers rows; every subject's arithmetic is element-wise, and made of operations whose result does not
    depend on where an element sits in a tensor (see :func:`_fifth_root`), so results do not depend on when (or
    whether) compaction happens, nor on the batch mates.

    ``detect_stiff`` (dopri5 only) gives subjects that the stiffness test flags the status :data:`_STIFF`, which
    takes them out of the working set. ``steps_done`` (B,) starts the step counters (steps already spent).
    ``fused`` (explicit methods): a :class:`_FusedStages` that computes a whole step in one compiled call.
    """
    B, S = y0.shape
    dtype, device = y0.dtype, y0.device
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
    atol_rows = atol.reshape(-1).expand(S).contiguous()  # one per state (the error norm's scale)
    if method == "rodas4":
        stepper = _Rodas4(S, dtype, device)
    else:
        stepper = _ExplicitRK(method == "dopri5", B, dtype, device, detect_stiff)
    adaptive = stepper.adaptive

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

    differentiated = torch.is_grad_enabled() and (y0.requires_grad or params.requires_grad)
    # the column-form fused dopri5 step (see _dp_step_columns): without gradients, for a vector field that has
    # a column form; it reads parameters and states state-major
    columns = fused is not None and fused.columns is not None and method == "dopri5" and not differentiated

    def bind_rows(p):
        nonlocal bound
        bound = bind(p)
        stepper.bind(bind, _state_major(p) if columns else p)

    bound = None
    bind_rows(params)
    sched = schedule

    def rate_at(tt):
        """Infusion rates are constant over a step (steps never cross a breakpoint): read at its start."""
        return sched.infusion_rate(tt, S) if has_infusions else None

    def F(tt, yy, rate=None):
        return bound(tt, yy) if rate is None else bound(tt, yy) + rate

    status_all = torch.zeros(B, dtype=torch.long, device=device)
    n_steps_all = torch.zeros(B, dtype=torch.long, device=device) if steps_done is None else steps_done.clone()
    status = status_all.clone()
    n_steps = n_steps_all.clone()
    done = t >= t_end
    fcur = F(t, y, rate_at(t))
    if adaptive:
        h = _initial_step(lambda tt, yy: F(tt, yy, rate_at(t)), t, y, fcur, t_end, rtol, atol)
    else:
        h = torch.full((B,), float(config.dt), dtype=dtype, device=device)
    last_nonfinite = torch.zeros(B, dtype=torch.bool, device=device)
    OK = int(Status.OK)

    def eager_attempt(tt, yy, fc, hh, rr):
        if not adaptive:
            fc = F(tt, yy, rr)
        y1, en, f_end = stepper.attempt(F, tt, yy, fc, hh, rr, atol_rows, rtol)
        return y1, en, f_end, None

    core_kw = dict(adaptive=adaptive, root=stepper.root, max_growth=stepper.max_growth, max_steps=config.max_steps)
    fused_core = None
    if fused is not None and isinstance(stepper, _ExplicitRK):
        fused_core = lambda *a, **kw: fused(stepper.params, *a, **kw)  # noqa: E731

    # a fused dopri5 solve makes config.fused_block steps per compiled call, writing outputs into a buffer (see
    # _step_block): by working row when differentiated (it never compacts, so working rows are subjects), else by
    # subject and output
    buf = None
    if fused_core is not None and adaptive and T and not detect_stiff and config.fused_block > 1:
        shape = (B, T, S) if differentiated else (B * T + 1, S)
        # requires grad from the first call on, as the buffer the compiled block returns does: a compiled graph is
        # specialised to its inputs' requires_grad, so a plain first buffer would cost a second compilation
        buf = torch.full(shape, float("nan"), dtype=dtype, device=device).requires_grad_(differentiated)
    n_done_next = None
    while True:
        n_work = done.shape[0]
        n_done = int(done.sum()) if n_done_next is None or detect_stiff else n_done_next
        n_done_next = None
        if n_done:  # finished and failed subjects hand their counters back
            status_all[gidx] = status
            n_steps_all[gidx] = n_steps
        if n_done == n_work:
            break
        # compact once enough of the working set is idle (geometric schedule: few compactions, idle rows never more
        # than ~1/8 of the work); gathers rows, so no subject's arithmetic changes. A fused step's compiled graph is
        # specialised to the batch size until that changes (then a dynamic graph serves every size), and a static
        # graph is much cheaper to call, above all with gradients (experiments/bench_train.py): so a fused step
        # never compacts when differentiated (training batches are alike), compacts only once half the rows are
        # idle otherwise, and keeps at least two rows (an idle one as padding; one row is a specialisation too)
        if fused_core is None:
            compact = n_done and (n_done * 8 >= n_work or n_work - n_done <= 8)
        else:
            compact = not differentiated and n_work > 2 and n_done * 2 >= n_work
        if compact:
            keep = (~done).nonzero()[:, 0]
            if fused_core is not None and keep.numel() == 1:
                keep = torch.cat([keep, done.nonzero()[:1, 0]])
            gidx, t, y, h, fcur, ptr = gidx[keep], t[keep], y[keep], h[keep], fcur[keep], ptr[keep]
            status, n_steps, last_nonfinite, done = status[keep], n_steps[keep], last_nonfinite[keep], done[keep]
            t_end, tsorted, order = t_end[keep], tsorted[keep], order[keep]
            stepper.compact(keep)
            if has_breakpoints:
                bps = bps[keep]
                sched = schedule.select(gidx)
            bind_rows(params[gidx])
        if deadline is not None and time.perf_counter() > deadline:
            # out of wall time: every subject still integrating stops here with its own status
            status = torch.where(done, status, int(Status.TIME_BUDGET))
            status_all[gidx] = status
            n_steps_all[gidx] = n_steps
            break
        t_old = t
        rate = rate_at(t)
        core_args = (t, y, h, fcur, done, status, n_steps, last_nonfinite, t_end, bps if has_breakpoints else None,
                     None if adaptive else next_out(), rate, atol_rows, rtol)
        out, counts = None, None
        if fused_core is not None:
            # a fused dopri5 step ends on the next output time when it would pass it (outputs are then the step's
            # end values: no continuous extension, so no stages leave the compiled graph); it also counts the rows
            # that the loop must look at (one read of five numbers instead of a query each)
            if columns:
                core_args = (t, _state_major(y), h, _state_major(fcur)) + core_args[4:]
            outputs = (tsorted, order, ptr, gidx, T) if adaptive and T else None
            block = None if buf is None else (buf, config.fused_block)
            out = fused_core(*core_args, outputs=outputs, stiff=detect_stiff, columns=columns, block=block, **core_kw)
            if out is not None:
                counts = dict(zip(_LOOP_COUNTS, out[-1].tolist()))
                n_done_next = counts["done"]
                if block is not None:
                    ptr, buf = out[14], out[15]
                elif outputs is not None:
                    ptr, flat, on_output = out[14:17]
                    if counts["on_output"]:
                        b = on_output.nonzero()[:, 0]
                        out_idx.append(flat[b])
                        out_val.append(out[0][b])
                out = out[:14]
        if out is None:
            out = _step_core(eager_attempt, *core_args, **core_kw)
        y_new, t_new, t, fcur, h, h_try, n_steps, status, last_nonfinite, done, accept, reached, at_bp, aux = out
        if aux is not None:  # the fused step's stiffness norms
            stepper.set_stages(aux)
        if adaptive and T and counts is None:
            while True:
                sel = accept & (next_out() < t_new)
                if not bool(sel.any()):
                    break
                take(sel, lambda b: stepper.dense(b, (next_out()[b] - t_old[b]) / h_try[b]))
        if at_bp is not None and (bool(at_bp.any()) if counts is None else counts["dose"]):
            y_new = y_new + sched.bolus_at(t_new, S, at_bp)
        if T and (counts is None or counts["end_outputs"]):  # outputs at the step's end, after a dose there
            record_equal(t_new, accept, y_new)
        y = y_new
        # after a breakpoint (a dose; subjects at their end are done) the derivative after the jump
        if adaptive and (bool((reached & ~done).any()) if counts is None else counts["jumped"]):
            jumped = reached & ~done
            fcur = torch.where(jumped[:, None], F(t, y, rate_at(t)), fcur)
        if detect_stiff:
            with torch.no_grad():
                status = torch.where(stepper.stiff(accept, h_try) & (status == OK) & (t < t_end), _STIFF, status)
                done = done | (status != OK)

    if buf is None:
        ys = torch.full((B * T, S), float("nan"), dtype=dtype, device=device)
    else:
        ys = buf.reshape(B * T, S) if buf.dim() == 3 else buf[: B * T]
    if out_idx:
        ys = ys.index_copy(0, torch.cat(out_idx), torch.cat(out_val))  # each slot once; faster than index_put
    return ys.reshape(B, T, S), status_all, n_steps_all


def _step_core(attempt, t, y, h, fcur, done, status, n_steps, last_nonfinite, t_end, bps, nxt, rate, atol, rtol, *,
               adaptive, root, max_growth, max_steps, cap=None):
    """One step of every working row, outputs and dose jumps aside: the step size to try (up to the next
    breakpoint in ``bps`` (n, nb; +inf padded) or ``t_end``, and for fixed steps the next output time ``nxt``),
    ``attempt(t, y, fcur, h_try, rate) -> (y1, error norm, f(t + h, y1), aux)``, acceptance, the new clock,
    state and step size, step counters and statuses. Element-wise per row, so it can be compiled as a whole
    (:class:`_FusedStages`). Returns ``(y_new, t_new, t, fcur, h, h_try, n_steps, status, last_nonfinite, done,
    accept, reached, at_bp, aux)``: ``t_new`` is the attempted end of the step (for outputs), ``t`` the clock
    after it, ``reached`` the accepted steps that ended on their stop (a breakpoint or the end), ``at_bp`` those
    that ended on a breakpoint (None without breakpoints). ``cap`` (n,): a time no step may pass that is not a
    stop (the fused step's next output time): a step that lands on it is not ``reached`` but, like one that
    reached its stop, keeps its step size for the next step.
    """
    OK, NONFINITE, STEP_TOO_SMALL, MAX_STEPS = (int(s) for s in (Status.OK, Status.NONFINITE, Status.STEP_TOO_SMALL,
                                                                 Status.MAX_STEPS))
    active = ~done
    if bps is not None:
        nb = torch.where(bps > t[:, None], bps, float("inf")).amin(dim=1)
        stop = torch.minimum(nb, t_end)
    else:
        nb = None
        stop = t_end
    if nxt is not None:
        stop = torch.minimum(stop, nxt)
    end = stop if cap is None else torch.minimum(stop, cap)
    room = end - t
    hit = h >= room
    h_try = torch.where(active, torch.where(hit, room, h), 0.0)
    y1, en, f_end, aux = attempt(t, y, fcur, h_try, rate)
    with torch.no_grad():
        finite = _rows_finite(y1) & torch.isfinite(en)
        accept = active & finite & (en <= 1.0)
    t_new = torch.where(hit, end, t + h_try)
    y_new = _rows_where(accept, y1, y)
    landed = accept & hit
    reached = landed if cap is None else landed & (end == stop)
    at_bp = None if nb is None else reached & (stop == nb)
    t = torch.where(accept, t_new, t)
    if adaptive:
        fcur = _rows_where(accept, f_end, fcur)
    with torch.no_grad():
        n_steps = n_steps + active.long()
        if adaptive:
            ratio = 0.9 / root(torch.clamp(en, min=1e-10))
            grow = torch.clamp(ratio, 0.2, max_growth)
            shrink = torch.clamp(ratio, 0.2, 0.9)
            factor = torch.where(accept, grow, torch.where(finite, shrink, 0.25))
            h_next = h_try * factor
            h = torch.where(active, torch.where(landed, torch.maximum(h_next, h), h_next), h)
        last_nonfinite = torch.where(active, ~finite, last_nonfinite)
        if adaptive:
            # a step below the clock's resolution fails the subject, rejected or accepted (an accepted step
            # that does not move the clock would repeat forever: rodas4 accepts such steps next to a
            # singularity, where the error relative to the exploding state stays small)
            tiny = 1e-13 * torch.clamp(t.abs(), min=1.0)
            too_small = active & ~landed & (h < tiny)
        else:
            too_small = active & ~finite
        status = torch.where(too_small & last_nonfinite, NONFINITE, status)
        status = torch.where(too_small & ~last_nonfinite, STEP_TOO_SMALL, status)
        over = active & (n_steps >= max_steps) & (status == OK) & (t < t_end)
        status = torch.where(over, MAX_STEPS, status)
        done = done | (t >= t_end) | (status != OK)
    return y_new, t_new, t, fcur, h, h_try, n_steps, status, last_nonfinite, done, accept, reached, at_bp, aux


class _ExplicitRK:
    """Dormand-Prince 5(4) with Shampine's continuous extension (``adaptive``), or classical RK4 (fixed step).

    With ``detect_stiff``, Hairer's stiffness test of DOPRI5 (Hairer, Norsett & Wanner, Solving ODEs I, 2nd ed.
    1993, Sect. II.10 and the code DOPRI5) runs after every accepted step: ``h |lambda|`` is estimated as
    ``h ||k7 - k6|| / ||y1 - y6||`` (both stages are evaluated at ``t + h``), and a subject is flagged stiff once
    that exceeds 3.25 (near the edge of dopri5's stability region on the negative real axis, where a stiff
    problem holds the step) on 15 accepted steps without 6 consecutive accepted steps below it in between.

    With a fused step (:class:`_FusedStages`) the loop makes the step in one compiled call and hands the stages
    over (:meth:`set_stages`); :meth:`attempt` is the unfused step.
    """

    max_growth = 10.0
    root = staticmethod(lambda x: _fifth_root(x))  # the error estimate is of order 4: en ~ h^5

    def __init__(self, adaptive: bool, n: int, dtype, device, detect_stiff: bool = False):
        self.adaptive = adaptive
        self.P = torch.tensor(_DP_P, dtype=dtype, device=device) if adaptive else None
        self.detect = detect_stiff
        self.params = self.norms = None
        if detect_stiff:
            self.n_stiff = torch.zeros(n, dtype=torch.long, device=device)
            self.n_nonstiff = torch.zeros(n, dtype=torch.long, device=device)

    def bind(self, bind, params) -> None:
        self.params = params  # the stages call the loop's own bound vector field; a fused step takes the rows

    def compact(self, keep) -> None:
        if self.detect:
            self.n_stiff, self.n_nonstiff = self.n_stiff[keep], self.n_nonstiff[keep]

    def attempt(self, F, t, y, fcur, h_try, rate, atol, rtol):
        """One step from ``(t, y)`` of size ``h_try``: ``(y1, error norm, f(t + h, y1))``; RK4: ``(y1, 0, None)``.

        The error norm is the RMS over states of the error estimate scaled by ``atol + rtol max(|y|, |y1|)``
        (no gradient)."""
        bound = lambda tt, yy, _p: F(tt, yy, None)  # noqa: E731 (the loop's bound vector field; rate added below)
        if not self.adaptive:
            return _rk4_step(bound, t, y, h_try, None, rate, k1=fcur), torch.zeros_like(t), None
        y1, en, ks, yi = _dp_step(bound, t, y, fcur, h_try, None, rate, atol, rtol, stack=False)
        self.ks, self.K, self.y, self.h, self.y6, self.y1, self.norms = ks, None, y, h_try, yi, y1, None
        return y1, en, ks[6]

    def set_stages(self, aux) -> None:
        """Take the stiffness test's norms ``(||k7 - k6||, ||y1 - y6||)`` of a step made by the fused step (which
        ends its steps on output times: no stages leave the compiled graph); dopri5 only."""
        self.norms = aux

    def dense(self, b, theta):
        """States at ``t + theta h`` of the last (unfused) step, for working rows ``b``."""
        if self.K is None:
            self.K = torch.stack(self.ks, dim=1)  # (n, 7, S)
        q = torch.stack([theta, theta**2, theta**3, theta**4], dim=1) @ self.P.T  # (n, 7)
        return self.y[b] + self.h[b, None] * torch.einsum("ni,nis->ns", q, self.K[b])

    def stiff(self, accept, h_try):
        """Update the stiffness counters after a step; (n,) bool of the rows now flagged stiff."""
        if self.norms is not None:
            num, den = self.norms
        else:
            num = _rms(self.ks[6].detach() - self.ks[5].detach())
            den = _rms(self.y1.detach() - self.y6.detach())
        stiff_step = accept & (den > 0) & (h_try * num > 3.25 * den)
        self.n_stiff = torch.where(stiff_step, self.n_stiff + 1, self.n_stiff)
        self.n_nonstiff = torch.where(stiff_step, 0, torch.where(accept, self.n_nonstiff + 1, self.n_nonstiff))
        self.n_stiff = torch.where(self.n_nonstiff >= 6, 0, self.n_stiff)
        return self.n_stiff >= 15


def _error_norm(err, y, y1, atol, rtol):
    """RMS over states of ``err / (atol + rtol max(|y|, |y1|))``: a step is accepted when this is <= 1."""
    scale = atol + rtol * torch.maximum(y.abs(), y1.abs())
    return _rms(err / scale)


def _dp_step(f, t, y, fcur, h, params, rate, atol, rtol, stack=True):
    """One Dormand-Prince step from ``(t, y)`` with ``fcur = f(t, y)``: ``(y1, error norm (no gradient), stages,
    y6)``, the stages stacked (n, 7, S) or (``stack=False``) as a list. The unfused step
    (:meth:`_ExplicitRK.attempt`) and the fused one (:class:`_FusedStages`, which compiles it) both run this."""
    def F(tt, yy):
        d = f(tt, yy, params)
        return d if rate is None else d + rate

    ks = [fcur]
    hc = h[:, None]
    for c, arow in zip(_DP_C[1:6], _DP_A[1:]):
        yi = y + hc * sum(a * k for a, k in zip(arow, ks) if a != 0.0)
        ks.append(F(t + c * h, yi))
    y1 = y + hc * sum(b * k for b, k in zip(_DP_B, ks) if b != 0.0)
    ks.append(F(t + h, y1))
    with torch.no_grad():
        err = hc * sum(e * k.detach() for e, k in zip(_DP_E, ks) if e != 0.0)
        en = _error_norm(err, y.detach(), y1.detach(), atol, rtol)
    return y1, en, torch.stack(ks, dim=1) if stack else ks, yi


def _dp_step_columns(fc, t, ys, fcols, h, rate, atol, rtol):
    """:func:`_dp_step` on state columns: ``ys``, ``fcols`` and ``rate`` (or None) lists of S (n,) tensors,
    ``fc(t, columns) -> columns`` the vector field in column form (:meth:`hybridtwin.Model.vector_field_columns`).
    Every quantity of the step is then an (n,) column, so a compiled step is one vectorised loop over subjects
    instead of a loop per stage over (n, S) rows. Same arithmetic per element as :func:`_dp_step` (the mean over
    states of the error norm is a sum divided by S). Returns ``(y1, error norm, stages, y6)`` as columns."""
    S = len(ys)

    def F(tt, cols):
        d = list(fc(tt, cols))
        return d if rate is None else [a + r for a, r in zip(d, rate)]

    def combine(coefs, stages):
        return [ys[i] + h * sum(c * k[i] for c, k in zip(coefs, stages) if c != 0.0) for i in range(S)]

    ks = [list(fcols)]
    yi = ys
    for c, arow in zip(_DP_C[1:6], _DP_A[1:]):
        yi = combine(arow, ks)
        ks.append(F(t + c * h, yi))
    y1 = combine(_DP_B, ks)
    ks.append(F(t + h, y1))
    with torch.no_grad():
        acc = 0.0
        for i in range(S):
            err = h * sum(e * k[i].detach() for e, k in zip(_DP_E, ks) if e != 0.0)
            x = err / (atol[i] + rtol * torch.maximum(ys[i].detach().abs(), y1[i].detach().abs()))
            acc = acc + x * x
        en = torch.sqrt(acc / S)
    return y1, en, ks, yi


def _rows_where(cond, a, b):
    """``a`` where ``cond`` (n,) else ``b``, for (n, S) states or lists of S state columns."""
    if isinstance(a, list):
        return [torch.where(cond, x, z) for x, z in zip(a, b)]
    return torch.where(cond[:, None], a, b)


def _rows_finite(y) -> torch.Tensor:
    """(n,) bool: every state of the row finite, for (n, S) states or lists of S state columns."""
    if isinstance(y, list):
        out = torch.isfinite(y[0])
        for c in y[1:]:
            out = out & torch.isfinite(c)
        return out
    return torch.isfinite(y).all(dim=1)


def _rms_diff(a, b) -> torch.Tensor:
    """RMS over states of ``a - b`` (no gradient), for (n, S) states or lists of S state columns."""
    if isinstance(a, list):
        return torch.sqrt(sum((x.detach() - z.detach()) ** 2 for x, z in zip(a, b)) / len(a))
    return _rms(a.detach() - b.detach())


def _state_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` (n, S) laid out state by state ((S, n) memory, transposed), as a column-form fused step reads its
    states and parameters: each column one contiguous run. No copy when it already is."""
    return x if x.stride(0) == 1 and (x.shape[1] < 2 or x.stride(1) == x.shape[0]) else x.T.contiguous().T


def _state_rows(out: tuple) -> tuple:
    """A column-form step's result with its states and derivatives (``out[0]``, ``out[3]``, lists of S columns) back
    as (n, S) rows laid out state-major."""
    return (torch.stack(out[0]).T, *out[1:3], torch.stack(out[3]).T, *out[4:])


def _landed_outputs(accept, reached, cap, t_new, tsorted, order, ptr, T):
    """The steps that ended on an output (not on a stop, where a dose may come first), that output's column, the
    advanced pointers, and the steps whose end the loop must record (a stop, or an output time that repeats)."""
    on_output = accept & ~reached & (cap == t_new)
    slot = order.gather(1, torch.clamp(ptr, max=T - 1)[:, None])[:, 0]
    ptr = ptr + on_output.long()
    rest = reached | (on_output & (tsorted.gather(1, ptr[:, None])[:, 0] == t_new))
    return on_output, slot, ptr, rest


def _step_block(attempt, a, outputs, block, *, adaptive, **kw):
    """``block = (buffer, n)``: ``n`` adaptive steps of every working row in one compiled call. Per-call costs (the
    compiled call's wrapper and guards, its autograd node, the loop's Python) dominate a step at training batch
    sizes, and a block pays them once per ``n`` steps.

    Outputs that a step lands on are written into ``buffer`` inside the graph: (B, T, S) by working row for a
    differentiated solve (which never compacts, so working rows are subjects), else (B * T + 1, S) by subject and
    output (``gidx``), rows that write nothing going to the last. A row whose step needs the
    loop -- it reached a stop (a dose or its end: a bolus comes before the outputs there, and the derivative is
    recomputed after the jump) or landed on a repeated output time -- is frozen for the rest of the block, as if it
    were done; the loop then handles it exactly as after a single step, so every row makes the same steps as with
    single-step calls. Returns :func:`_step_core`'s tuple with, per row, the event step's values (``t_new`` and
    ``accept`` of the frozen rows, for the loop's recording), then ``(buffer, counts)``.
    """
    t, y, h, fcur, done, status, n_steps, last_nonfinite, t_end, bps, nxt, rate, atol, rtol = a
    tsorted, order, ptr, gidx, T = outputs
    buf, n = block
    flat = buf.dim() == 2  # (B * T + 1, S) by subject and output, the last row a sink for rows that write nothing
    slots = torch.arange(T, device=t.device)
    none = torch.zeros_like(done)
    frozen, ev_reached, ev_bp = none, none, none
    for _ in range(n):
        cap = tsorted.gather(1, ptr[:, None])[:, 0]
        out = _step_core(attempt, t, y, h, fcur, done | frozen, status, n_steps, last_nonfinite, t_end, bps, nxt,
                         rate, atol, rtol, adaptive=adaptive, cap=cap, **kw)
        y, t_new, t, fcur, h, h_try, n_steps, status, last_nonfinite, done_step, accept, reached, at_bp, _ = out
        done = done | (done_step & ~frozen)
        on_output, slot, ptr_next, rest = _landed_outputs(accept, reached, cap, t_new, tsorted, order, ptr, T)
        if flat:
            rows = torch.stack(y, dim=1) if isinstance(y, list) else y
            buf = buf.index_put((torch.where(on_output, gidx * T + slot, buf.shape[0] - 1),), rows)
        else:
            write = on_output[:, None] & (slots[None, :] == slot[:, None])
            buf = torch.where(write[:, :, None], y[:, None, :], buf)
        ptr = ptr_next
        frozen = frozen | rest
        ev_reached = ev_reached | reached
        if at_bp is not None:
            ev_bp = ev_bp | at_bp
    at_bp = ev_bp if bps is not None else None
    counts = torch.stack([done.sum(), none.sum(), (ev_reached & ~done).sum(), frozen.sum(), ev_bp.sum()])
    # the frozen rows' clock is their event step's end; they were accepted there
    return (y, t, t, fcur, h, h_try, n_steps, status, last_nonfinite, done, frozen, ev_reached, at_bp, None, ptr,
            buf, counts)


#: what a fused step counts for the loop: rows done, steps ended on an output, steps ended on a breakpoint before
#: the end (their derivative is recomputed after the jump), steps whose end outputs the loop records, dose jumps
_LOOP_COUNTS = ("done", "on_output", "jumped", "end_outputs", "dose")


def _rk4_step(f, t, y, h, params, rate, k1=None):
    """One classical RK4 step: ``y1`` (``k1``: f(t, y) when already known). Unfused and fused steps run this."""
    def F(tt, yy):
        d = f(tt, yy, params)
        return d if rate is None else d + rate

    hc = h[:, None]
    k1 = F(t, y) if k1 is None else k1
    k2 = F(t + 0.5 * h, y + hc * (0.5 * k1))
    k3 = F(t + 0.5 * h, y + hc * (0.5 * k2))
    k4 = F(t + h, y + hc * k3)
    return y + hc / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


class _FusedStages:
    """A vector field's whole explicit step (:func:`_step_core` with :func:`_dp_step` or :func:`_rk4_step`
    inside), compiled once by ``torch.compile`` with a dynamic batch size.

    ``owner`` is the object whose method is the vector field (a :class:`~hybridtwin.Model`, a twin's dynamics),
    passed to the compiled step as an argument so that one compilation serves every solve of that object.
    Called like :func:`_step_core` (without ``attempt``) with the working rows' parameters first; returns None
    (after one warning) when compilation fails, and the caller then makes the step unfused.
    """

    def __init__(self, func, owner=None, columns=None):
        self.func, self.owner, self.columns = func, owner, columns
        self.compiled: dict = {}  # device type -> compiled step
        # dynamo keeps its compiled graphs (and counts recompilations against its limit) per code object: each
        # vector field gets its own copy of the step's code, so that models do not share one cache and limit
        code = _FusedStages._body.__code__.replace(co_name=f"_fused_step_{next(_FUSED_IDS)}")
        self._step = types.MethodType(types.FunctionType(code, _FusedStages._body.__globals__, code.co_name,
                                                         _FusedStages._body.__defaults__), self)
        self.failed: str | None = None

    def _body(self, owner, params, *a, adaptive, outputs=None, stiff=False, columns=False, block=None, **kw):
        f = self.func if owner is None else (lambda tt, yy, pp: self.func(owner, tt, yy, pp))
        atol, rtol = a[-2], a[-1]
        if columns:  # the column form (see _dp_step_columns): states, derivatives and rates as lists of columns
            pcols = params.unbind(1)
            fc = lambda tt, cols: self.columns(owner, tt, cols, pcols)  # noqa: E731
            a = list(a)
            for i in (1, 3, 11):  # y, fcur, rate
                a[i] = None if a[i] is None else list(a[i].unbind(1))

        def attempt(t, y, fcur, h, rate):
            if not adaptive:
                return _rk4_step(f, t, y, h, params, rate), torch.zeros_like(t), None, None
            if columns:
                y1, en, K, y6 = _dp_step_columns(fc, t, y, fcur, h, rate, atol, rtol)
                k5, k6 = K[5], K[6]
            else:
                y1, en, K, y6 = _dp_step(f, t, y, fcur, h, params, rate, atol, rtol)
                k5, k6 = K[:, 5], K[:, 6]
            aux = None
            if stiff:  # the stiffness test's two norms (see _ExplicitRK.stiff), not the stages
                with torch.no_grad():
                    aux = (_rms_diff(k6, k5), _rms_diff(y1, y6))
            return y1, en.detach(), k6, aux

        if block is not None:
            out = _step_block(attempt, a, outputs, block, adaptive=adaptive, **kw)
            return _state_rows(out) if columns else out
        cap = None
        if outputs is not None:  # the next output time: no step passes it (see _integrate)
            tsorted, order, ptr, gidx, T = outputs
            cap = tsorted.gather(1, ptr[:, None])[:, 0]
        out = _step_core(attempt, *a, adaptive=adaptive, cap=cap, **kw)
        if columns:
            out = _state_rows(out)
        t_new, done, accept, reached, at_bp = out[1], out[9], out[10], out[11], out[12]
        none = torch.zeros_like(done)
        rest, on_output, extra = reached, none, ()  # rest: steps whose end the loop must record (after a dose)
        if outputs is not None:
            # the steps that ended on an output: their output's flat index and the advanced pointer; the loop
            # records their end values
            on_output, slot, ptr, rest = _landed_outputs(accept, reached, cap, t_new, tsorted, order, ptr, T)
            extra = (ptr, gidx * T + slot, on_output)
        # what the loop must look at, counted here (one read instead of a query each; see _LOOP_COUNTS)
        counts = torch.stack([done.sum(), on_output.sum(), (reached & ~done).sum(), rest.sum(),
                              (none if at_bp is None else at_bp).sum()])
        return out + extra + (counts,)

    def __call__(self, params, *a, **kw):
        if self.failed is not None:
            return None
        kind = params.device.type
        fn = self.compiled.get(kind)
        if fn is None:
            # automatic dynamic shapes: a static graph for the first batch size, one dynamic graph once it changes;
            # the C++ call wrapper is measured on CPU only (on a GPU, Inductor's default Python wrapper)
            fn = self.compiled[kind] = torch.compile(self._step, fullgraph=True,
                                                     options=_FUSED_COMPILE_OPTIONS if kind == "cpu" else {})
        try:
            # one vector field's variants (with and without gradients, doses, infusions; static and dynamic batch
            # size; dopri5 and rk4; dtypes) can exceed dynamo's default of 8 graphs per code object
            with torch._functorch.config.patch(activation_memory_budget=_FUSED_ACTIVATION_BUDGET), \
                    torch._dynamo.config.patch(recompile_limit=_FUSED_RECOMPILE_LIMIT):
                return fn(self.owner, params, *a, **kw)
        except Exception as e:  # noqa: BLE001 -- any compiler failure: warn once, step unfused (which re-raises
            # an error of the vector field itself unchanged)
            import warnings

            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            self.failed = f"{type(e).__name__}: {' / '.join(dict.fromkeys(lines[:1] + lines[-1:]))}"
            warnings.warn(f"fused=True: the solver step could not be compiled ({self.failed[:300]}); "
                          "solving unfused", RuntimeWarning, stacklevel=5)
            return None


#: Inductor options of the fused step: the C++ call wrapper halves the per-call overhead of a training step
#: (experiments/bench_train.py), at about twice the compilation time
_FUSED_COMPILE_OPTIONS = {"cpp_wrapper": True}
#: share of the forward's activations the compiled backward may keep (AOTAutograd's partitioner recomputes the
#: rest): fewer saved tensors make a differentiated step cheaper to call (vaccine_asc twin, batch 64, one thread:
#: 0.35-0.40 s/epoch at 0.5 against 0.43-0.55 at the default 1.0; experiments/bench_train.py)
_FUSED_ACTIVATION_BUDGET = 0.5
#: compiled graphs one vector field may accumulate (see _FusedStages.__call__)
_FUSED_RECOMPILE_LIMIT = 64
_FUSED_IDS = itertools.count()

_FUSED_CACHE: dict = {}


def _fused_stages(f, config) -> _FusedStages:
    """The (cached) :class:`_FusedStages` of vector field ``f``: per owner object and function for methods."""
    import weakref

    owner, func = getattr(f, "__self__", None), getattr(f, "__func__", f)
    key = (id(owner) if owner is not None else id(func), id(func))
    hit = _FUSED_CACHE.get(key)
    if hit is not None and hit[0]() is (owner if owner is not None else func):
        return hit[1]
    columns = None
    if owner is not None and getattr(type(owner), "vector_field", None) is func:
        columns = getattr(type(owner), "vector_field_columns", None)
    fused = _FusedStages(func, owner, columns)
    # a weak reference to the owner so that a stale entry (the object was collected, its id reused) is detected;
    # the entry itself is dropped when its owner is collected
    ref = weakref.ref(owner if owner is not None else func, lambda _r, k=key: _FUSED_CACHE.pop(k, None))
    _FUSED_CACHE[key] = (ref, fused)
    return fused


# Rodas4: Hairer & Wanner, Solving Ordinary Differential Equations II, 2nd ed. (Springer 1996), Sect. IV.7 (and
# their code RODAS, coefficient set 1). A 6-stage Rosenbrock method of order 4 with an embedded order-3 solution,
# L-stable and stiffly accurate: the order-3 solution is the argument of the 6th stage and the order-4 one adds the
# 6th stage to it, so the 6th stage is the error estimate. Stage i solves, with J = df/dy and f_t = df/dt at the
# start of the step,   (I / (gamma h) - J) u_i = f(t + alpha_i h, y + sum_j a_ij u_j) + sum_j (c_ij / h) u_j
# + d_i h f_t,   and y1 = y + sum_{j<6} a_6j u_j + u_6 (a_6j = (a_5j, 1)).
_RO_GAMMA = 0.25
_RO_ALPHA = (0.0, 0.386, 0.21, 0.63, 1.0, 1.0)
_RO_D = (0.25, -0.1043, 0.1035, -0.3620000000000023e-01, 0.0, 0.0)
_RO_A = (
    (),
    (0.1544000000000000e+01,),
    (0.9466785280815826e+00, 0.2557011698983284e+00),
    (0.3314825187068521e+01, 0.2896124015972201e+01, 0.9986419139977817e+00),
    (0.1221224509226641e+01, 0.6019134481288629e+01, 0.1253708332932087e+02, -0.6878860361058950e+00),
    (0.1221224509226641e+01, 0.6019134481288629e+01, 0.1253708332932087e+02, -0.6878860361058950e+00, 1.0),
)
_RO_C = (
    (),
    (-0.5668800000000000e+01,),
    (-0.2430093356833875e+01, -0.2063599157091915e+00),
    (-0.1073529058151375e+00, -0.9594562251023355e+01, -0.2047028614809616e+02),
    (0.7496443313967647e+01, -0.1024680431464352e+02, -0.3399990352819905e+02, 0.1170890893206160e+02),
    (0.8083246795921522e+01, -0.7981132988064893e+01, -0.3152159432874371e+02, 0.1631930543123136e+02,
     -0.6058818238834054e+01),
)
# continuous extension (dense output) coefficients of the same code: D2 and D3 from the first 5 stages
_RO_DENSE = (
    (0.1012623508344586e+02, -0.7487995877610167e+01, -0.3480091861555747e+02, -0.7992771707568823e+01,
     0.1025137723295662e+01),
    (-0.6762803392801253e+00, 0.6087714651680015e+01, 0.1643084320892478e+02, 0.2476722511418386e+02,
     -0.6594389125716872e+01),
)


class _LUSolve(torch.autograd.Function):
    """``x = W^-1 b`` for (n, S, S) ``W`` from its LU factors (computed once per step, without autograd), with the
    gradient of ``torch.linalg.solve``: ``gb = W^-T g`` and ``gW = -gb x^T``. (Differentiating through
    ``torch.linalg.lu_factor`` and ``lu_solve`` instead unpacks the factors in every backward step, with
    ``tril``/``triu`` kernels that are 1000x slower than the rest when torch runs several threads on a busy
    machine.)"""

    @staticmethod
    def forward(W, LU, pivots, b):
        return torch.linalg.lu_solve(LU, pivots, b[..., None])[..., 0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, LU, pivots, _ = inputs
        ctx.save_for_backward(LU, pivots, output)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        LU, pivots, x = ctx.saved_tensors
        gb = torch.linalg.lu_solve(LU, pivots, g[..., None], adjoint=True)[..., 0]
        return -gb[:, :, None] * x[:, None, :], None, None, gb


class _Rodas4:
    """The Rodas4 stepper: per-subject Jacobians by automatic differentiation, one LU per step for the 6 stages.

    ``J = df/dy`` and ``f_t = df/dt`` of every working row come from one reverse-mode pass (``torch.func.vjp``)
    through the vector field evaluated on S copies of each row, copy j pulling back the unit cotangent ``e_j``
    (which gives row j of ``J`` and ``df_j/dt``). ``torch.func`` keeps that inner differentiation apart from the
    caller's autograd graph, so ``J`` is exact and itself differentiable (the gradient of the discrete solution
    includes its dependence through ``J``) and a step's cost does not grow with the history of the solve.
    (Forward mode would need S + 1 evaluations' worth of work too, but torch's forward-mode AD falls back to
    slow Python decompositions for products of a dual and a plain tensor, e.g. ``parameter * state``.)
    The (n, S, S) systems are factorised once per step by ``torch.linalg.lu_factor_ex`` and solved per stage by
    ``torch.linalg.lu_solve`` (:class:`_LUSolve`); both work matrix by matrix, so a subject's step does not depend
    on its batch mates. Outputs between steps come from Rodas4's own continuous extension (third order). (Cubic
    Hermite interpolation from ``f(t, y)`` and ``f(t + h, y1)`` would not do: on a stiff component a state error
    ``delta`` within the tolerance makes an error ``|lambda| delta`` in ``f``, which Hermite multiplies by the
    -- large -- step.)
    """

    adaptive = True
    max_growth = 6.0
    root = staticmethod(lambda x: torch.sqrt(torch.sqrt(x)))  # the error estimate is of order 3: en ~ h^4

    def __init__(self, S: int, dtype, device):
        self.S = S
        self.eye = torch.eye(S, dtype=dtype, device=device)

    def bind(self, bind, params) -> None:
        self.copies = bind(params.repeat_interleave(self.S, dim=0))
        self.cotangents = self.eye.repeat(params.shape[0], 1)

    def compact(self, keep) -> None:
        pass  # the loop re-binds the parameters of the kept rows (``bind``)

    def jacobian(self, t, y):
        """(J, f_t): (n, S, S) ``df/dy`` and (n, S) ``df/dt`` at ``(t, y)``, differentiable by autograd."""
        n, S = y.shape
        _, pullback = torch.func.vjp(self.copies, t.repeat_interleave(S, dim=0), y.repeat_interleave(S, dim=0))
        gt, gy = pullback(self.cotangents)
        return gy.reshape(n, S, S), gt.reshape(n, S)

    def attempt(self, F, t, y, fcur, h_try, rate, atol, rtol):
        """One step from ``(t, y)`` of size ``h_try``: ``(y1, error norm, f(t + h, y1))`` (see _ExplicitRK)."""
        J, ft = self.jacobian(t, y)
        h = torch.where(h_try > 0, h_try, torch.ones_like(h_try))  # idle rows (h_try = 0) get a harmless step
        hc = h[:, None]
        W = torch.diag_embed((1.0 / (_RO_GAMMA * hc)).expand(-1, self.S)) - J
        with torch.no_grad():
            LU, pivots, _ = torch.linalg.lu_factor_ex(W)
        us = []
        for alpha, d, arow, crow in zip(_RO_ALPHA, _RO_D, _RO_A, _RO_C):
            if us:
                yi = y + sum(a * u for a, u in zip(arow, us))
                rhs = F(t + alpha * h, yi, rate) + sum(c * u for c, u in zip(crow, us)) / hc
            else:
                rhs = fcur
            if d != 0.0:
                rhs = rhs + (d * hc) * ft
            if torch.is_grad_enabled() and (W.requires_grad or rhs.requires_grad):
                us.append(_LUSolve.apply(W, LU, pivots, rhs))
            else:  # (autograd.Function.apply costs ~0.1 ms a call even when nothing is differentiated)
                us.append(torch.linalg.lu_solve(LU, pivots, rhs[..., None])[..., 0])
        y1 = yi + us[-1]
        f1 = F(t + h, y1, rate)
        self.y, self.y1, self.us = y, y1, us
        with torch.no_grad():
            en = _error_norm(us[-1].detach(), y.detach(), y1.detach(), atol, rtol)
        return y1, en, f1

    def dense(self, b, theta):
        """Rodas4's continuous extension (order 3, built from the stages, hence stable on stiff components) at
        ``t + theta h``, for working rows ``b``: ``(1 - s) y + s (y1 + (1 - s) (D2 + s D3))``."""
        s, us = theta[:, None], [u[b] for u in self.us[:5]]
        d2 = sum(c * u for c, u in zip(_RO_DENSE[0], us))
        d3 = sum(c * u for c, u in zip(_RO_DENSE[1], us))
        return (1.0 - s) * self.y[b] + s * (self.y1[b] + (1.0 - s) * (d2 + s * d3))


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
