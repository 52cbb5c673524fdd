"""torchdiffeq backend of :func:`hybridtwin.solve` (any torchdiffeq method, optional adjoint).

The batch is integrated as one system between the union of all subjects' breakpoints (bolus times,
infusion starts and ends), with outputs at the union of all subjects' output times; each subject then
reads its own times back. The shared adaptive step makes a subject's result depend on its batch mates
within the tolerance. If torchdiffeq fails on the batch (step underflow, step limit), the batch is split in
halves recursively so that only the failing subjects are marked. Only torchdiffeq's own numerical failures
count (step-size underflow, non-finite state, ``max_num_steps``); an exception raised by the vector field
(shape error, ``TypeError``, ...) is a bug in the model code and propagates unchanged. ``n_steps`` reports the
number of vector field evaluations of the shared solve that produced each subject's result.

With ``adjoint=True`` the adjoint covers the parameters ``params`` (when they require gradients), the dose
amounts and infusion rates, and the trainable parameters of the dynamics when it is a ``torch.nn.Module``
(e.g. a :class:`hybridtwin.neural.MechanisticDynamics` with neural closures, or a bound method of one).
"""

from __future__ import annotations

import torch

from torch import nn

from .dosing import BatchSchedule
from ._solver_status import FIXED_STEP, Status

_MODEL_ERROR = "_hybridtwin_raised_by_vector_field"


def _failure_code(exc: BaseException) -> Status | None:
    """The status of a genuine torchdiffeq failure, or None for anything else (which must propagate)."""
    if getattr(exc, _MODEL_ERROR, False) or not isinstance(exc, (AssertionError, RuntimeError)):
        return None
    msg = str(exc)
    if "max_num_steps exceeded" in msg:
        return Status.MAX_STEPS
    if "non-finite values in state" in msg:
        return Status.NONFINITE
    if "underflow in dt" in msg:  # a NaN step size comes from a NaN error estimate
        return Status.NONFINITE if "nan" in msg.split("underflow in dt", 1)[1].lower() else Status.STEP_TOO_SMALL
    return None


def module_parameters(dynamics) -> list[torch.Tensor]:
    """Trainable parameters of ``dynamics`` when it is an ``nn.Module`` or a bound method of one."""
    owner = dynamics if isinstance(dynamics, nn.Module) else getattr(dynamics, "__self__", None)
    if not isinstance(owner, nn.Module):
        return []
    return [p for p in owner.parameters() if p.requires_grad]


def solve_torchdiffeq(f, y0, times, params, schedule: BatchSchedule, mask, config, t0, dynamics=None):
    """``f(t, y, params)`` is the vector field; ``dynamics`` the object the caller passed (its module
    parameters join the adjoint)."""
    B, S = y0.shape
    try:
        ys, nfe = _solve_batch(f, y0, times, params, schedule, mask, config, t0, dynamics)
    except (AssertionError, RuntimeError) as exc:
        code = _failure_code(exc)
        if code is None:
            if getattr(exc, _MODEL_ERROR, False):
                try:
                    delattr(exc, _MODEL_ERROR)
                except AttributeError:
                    pass
            raise
        if B == 1:
            nan = torch.full((1, times.shape[1], S), float("nan"), dtype=y0.dtype, device=y0.device)
            return (nan, torch.full((1,), int(code), dtype=torch.long, device=y0.device),
                    torch.zeros(1, dtype=torch.long, device=y0.device))
        half = B // 2
        parts = [slice(0, half), slice(half, B)]
        outs = [
            solve_torchdiffeq(f, y0[sl], times[sl], params[sl], schedule.select(torch.arange(B, device=y0.device)[sl]),
                              mask[sl], config, t0, dynamics)
            for sl in parts
        ]
        return tuple(torch.cat([o[i] for o in outs]) for i in range(3))
    finite = torch.isfinite(torch.where(mask[..., None], ys, torch.zeros_like(ys))).all(dim=(1, 2))
    status = torch.where(finite, int(Status.OK), int(Status.NONFINITE)).to(torch.long)
    return ys, status, torch.full((B,), nfe, dtype=torch.long)


def _solve_batch(f, y0, times, params, schedule, mask, config, t0, dynamics=None):
    from torchdiffeq import odeint, odeint_adjoint

    B, S = y0.shape
    dtype, device = y0.dtype, y0.device
    valid = times[mask]
    t_end = float(valid.max()) if valid.numel() else t0
    bps = schedule.breakpoints()
    bps = bps[torch.isfinite(bps) & (bps > t0) & (bps < t_end)]
    grid = torch.unique(torch.cat([valid, bps, torch.tensor([t0], dtype=dtype, device=device)]))
    edges = torch.unique(torch.cat([torch.tensor([t0, t_end], dtype=dtype, device=device), bps]))
    atol = torch.as_tensor(config.atol, dtype=dtype, device=device)
    kwargs = dict(rtol=config.rtol, atol=float(atol) if atol.numel() == 1 else atol, method=config.method)
    if config.method in FIXED_STEP:
        kwargs["options"] = {"step_size": config.dt}
    else:
        kwargs["options"] = {"max_num_steps": config.max_steps}
    nfe = [0]

    all_b = torch.ones(B, dtype=torch.bool, device=device)
    y = y0 + schedule.bolus_at(torch.full((B,), t0, dtype=dtype, device=device), S, all_b)
    states = {0: y}
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
        rate = schedule.infusion_rate(torch.full((B,), a, dtype=dtype, device=device), S)

        def func(t, yy, rate=rate):
            nfe[0] += 1
            try:
                return f(t.expand(B), yy, params) + rate
            except Exception as exc:  # the model's own error: mark it so that it is not taken for a solver failure
                try:
                    setattr(exc, _MODEL_ERROR, True)
                except AttributeError:
                    pass
                raise

        seg = grid[(grid >= a) & (grid <= b)]
        if config.adjoint:
            extra = tuple(x for x in (params, rate, schedule.bolus_amount, *module_parameters(dynamics))
                          if x.requires_grad)
            traj = odeint_adjoint(func, y, seg, adjoint_params=extra, **kwargs)
        else:
            traj = odeint(func, y, seg, **kwargs)
        idx = torch.searchsorted(grid, seg)
        for j, i in enumerate(idx.tolist()[1:], start=1):
            states[i] = traj[j]
        y = traj[-1] + schedule.bolus_at(torch.full((B,), b, dtype=dtype, device=device), S, all_b)
        states[int(idx[-1])] = y
    stacked = torch.stack([states[i] for i in range(len(grid))], dim=1)  # (B, G, S)
    pos = torch.searchsorted(grid, torch.where(mask, times, torch.full_like(times, t0)).contiguous())
    ys = stacked.gather(1, pos[..., None].expand(-1, -1, S))
    ys = torch.where(mask[..., None], ys, torch.full_like(ys, float("nan")))
    return ys, nfe[0]
