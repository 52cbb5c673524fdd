"""``hybridtwin.simulate``: named inputs in, a tidy pandas table out.

Example
-------
>>> import numpy as np
>>> import hybridtwin as ht
>>> df = ht.simulate("baccam2006", np.linspace(0, 10, 41))
>>> list(df.columns)
['time', 'T', 'I1', 'I2', 'V', 'log10_V']
>>> round(float(df["log10_V"].max()), 2)
5.88
>>> cohort = ht.simulate("vaccine_asc", [0, 14, 28, 56],
...                      params=__import__("pandas").DataFrame({"subject_id": ["a", "b"], "delta_Ab": [0.02, 0.03]}),
...                      doses=[ht.Dose(0, 1.0, "Ag"), ht.Dose(28, 1.0, "Ag")])
>>> cohort.shape[0]
8
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from . import models as _models
from .dosing import BatchSchedule, Dose
from .models.base import Model
from .solve import SolverConfig, Status, solve


#: ``df.attrs["status"]`` of a subject whose log10-observed state went negative beyond numerical noise
NEGATIVE_STATE = "negative_state"

#: A log10-observed state counts as negative beyond numerical noise below ``-NEGATIVE_STATE_ATOL_FACTOR * atol``
#: of that state. Legitimately decaying states (e.g. viral load after clearance) overshoot zero by up to about
#: 2 x atol under dopri5 (measured on virtual cohorts of every built-in model at rtol 1e-6 to 1e-8); a factor
#: of 10 keeps those out while any real sign error (orders of magnitude larger) is still caught.
NEGATIVE_STATE_ATOL_FACTOR = 10.0


def check_times(times, what: str = "times") -> np.ndarray:
    """Validate a 1-D output time grid: finite, >= 0, strictly increasing."""
    try:
        arr = np.asarray(times, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numbers, got {times!r}") from None
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D sequence, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{what} must be finite; got {arr[bad].tolist()} at positions {np.nonzero(bad)[0].tolist()}")
    if (arr < 0).any():
        raise ValueError(f"{what} must be >= 0 (time 0 is the start of the simulation); got {arr[arr < 0].tolist()}")
    d = np.diff(arr)
    if (d <= 0).any():
        i = int(np.nonzero(d <= 0)[0][0])
        raise ValueError(f"{what} must be strictly increasing; position {i + 1} ({arr[i + 1]}) follows {arr[i]}")
    return arr


def _subject_table(model: Model, params) -> tuple[list, dict | pd.DataFrame]:
    if params is None:
        return [0], {}
    if isinstance(params, Mapping):
        return [0], dict(params)
    if isinstance(params, pd.DataFrame):
        if params.empty:
            raise ValueError("params DataFrame has no rows; give one row per subject")
        frame = params.reset_index(drop=True)
        ids = list(frame["subject_id"]) if "subject_id" in frame.columns else list(range(len(frame)))
        if len(set(ids)) != len(ids):
            raise ValueError("params has duplicate subject_id values; give one row per subject")
        cols = [c for c in frame.columns if c != "subject_id"]
        model.parameter_space.check_names(cols, f" in params columns of model {model.name!r}")
        return ids, frame[cols]
    raise TypeError(f"params must be a dict, a DataFrame (one row per subject) or None, got {type(params).__name__}")


def _dose_rows(doses: Sequence[Dose]) -> dict[str, list]:
    cols = {"time": [], "amount": [], "target": [], "duration": [], "interval": [], "additional": []}
    for d in doses:
        if not isinstance(d, Dose):
            raise TypeError(f"doses must be Dose objects, got {type(d).__name__}")
        for c in cols:
            cols[c].append(getattr(d, c))
    return cols


def _dose_frame(doses, ids: list) -> pd.DataFrame:
    """Any accepted form of ``doses`` as one validated-later table with a subject_id column."""
    empty = pd.DataFrame({"subject_id": [], "time": [], "amount": [], "target": [], "duration": []})
    if doses is None:
        return empty
    if isinstance(doses, Dose):
        doses = [doses]
    if isinstance(doses, pd.DataFrame):
        if "subject_id" not in doses.columns:
            if len(ids) != 1:
                raise ValueError("a dose table for several subjects needs a subject_id column")
            doses = doses.assign(subject_id=ids[0])
        return doses
    if isinstance(doses, Mapping):
        unknown = [s for s in doses if s not in ids]
        if unknown:
            raise ValueError(f"doses given for unknown subject(s) {unknown}")
        frames = [pd.DataFrame(_dose_rows(v)).assign(subject_id=k) for k, v in doses.items() if len(v)]
        return pd.concat(frames, ignore_index=True) if frames else empty
    cols = _dose_rows(list(doses))
    m = len(cols["time"])
    frame = pd.DataFrame({k: np.tile(np.asarray(v, dtype=object), len(ids)) for k, v in cols.items()})
    frame.insert(0, "subject_id", np.repeat(np.asarray(ids, dtype=object), m))
    return frame


def simulate(
    model: str | Model,
    times: Sequence[float],
    params: Mapping[str, float] | pd.DataFrame | None = None,
    initial_state: Mapping[str, float] | None = None,
    doses: Sequence[Dose] | Mapping | pd.DataFrame | None = None,
    rtol: float = 1e-8,
    atol: float | None = None,
    *,
    method: str = "dopri5",
    dt: float | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
    batch_size: int = 20_000,
    progress: bool | None = None,
    max_steps: int = 100_000,
    max_seconds: float | None = None,
    check_bounds: bool = True,
    fused: bool = False,
) -> pd.DataFrame:
    """Simulate a model for one subject or a virtual cohort and return a tidy table.

    Parameters
    ----------
    model: registry name or :class:`Model`.
    times: output times (model time unit), finite, >= 0, strictly increasing; the simulation starts at 0.
    params: ``{name: value}`` for one subject (missing names take defaults) or a DataFrame with one row per
        subject (optional ``subject_id`` column; other columns must be parameter names). Every value must be
        admissible (see ``check_bounds``).
    initial_state: ``{state: value}`` overriding the model's initial values (for every subject).
    doses: a list of :class:`Dose` (given to every subject), ``{subject_id: [Dose, ...]}`` or a DataFrame with
        ``subject_id, time, amount, target, duration`` (optional ``interval``, ``additional``). A target is a
        state, a drug compartment or an intervention name of the model.
    rtol, atol: tolerances (``atol`` defaults to ``rtol * 1e-4`` times each state's initial magnitude, at least
        ``1e-12``).
    method, dt: ``"dopri5"`` (adaptive), ``"rk4"`` with step ``dt``, ``"rodas4"`` (adaptive L-stable Rosenbrock,
        for stiff parameter values) or ``"auto"`` (dopri5, switching the subjects it detects as stiff to rodas4;
        the others keep their dopri5 results bit for bit). See :mod:`hybridtwin.solve`.
    dtype, device: computation precision (float64 by default) and device.
    batch_size: subjects solved together; larger cohorts are split, with a progress bar.
    max_steps: per-subject limit on attempted solver steps (a positive integer); a subject that reaches it
        gets status ``"max_steps"`` and NaN rows from there on.
    max_seconds: wall-time budget of each batched solve (each chunk of ``batch_size`` subjects); subjects still
        integrating when it runs out get status ``"time_budget"`` and NaN rows from there on (None: no budget).
    check_bounds: refuse (``ValueError`` naming subject, parameter, value and bounds) parameter values outside
        their declared bounds -- non-finite, outside ``[lower, upper]``, ``<= 0`` for a ``log`` parameter, not
        strictly inside the bounds for a ``logit`` parameter (see :meth:`ParameterSpace.check_bounds`). Pass
        ``check_bounds=False`` to explore implausible values deliberately (results may be unphysical, e.g.
        negative cell counts).
    fused: compile each solver step into a few fused loops (``torch.compile``; see
        :class:`~hybridtwin.solve.SolverConfig`): several times faster for thousands of subjects, at a one-off
        compilation of seconds to a minute per model and process. ``dopri5``, ``rk4`` and ``auto``.

    Returns
    -------
    DataFrame with ``time`` (and ``subject_id`` for a cohort), one column per state (plus drug compartments
    that receive doses) and per observable. ``df.attrs["status"]`` holds each subject's solver status; a
    failed subject's rows are NaN and a warning names it. A ``log10`` observable (``log10_observable``) of a
    state that is negative beyond numerical noise (below ``-NEGATIVE_STATE_ATOL_FACTOR * atol`` of that state,
    with the ``atol`` the solve used) is NaN at those times, the subject's status is ``"negative_state"`` and
    a warning names it; tiny values, including negatives within that noise band, are clipped to
    ``LOG10_FLOOR`` as in training.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size (subjects solved together) must be a positive integer, got {batch_size!r}")
    model = _models.get(model)
    grid = check_times(times)
    if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral) or max_steps <= 0:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    if not isinstance(check_bounds, (bool, np.bool_)):
        raise TypeError(f"check_bounds must be True or False, got {check_bounds!r}")
    ids, rows = _subject_table(model, params)
    space = model.parameter_space
    theta = space.tensor_from(rows, dtype=dtype, context=f" of model {model.name!r}")
    if check_bounds:
        try:
            space.check_bounds(theta, ids, context=f" of model {model.name!r}")
        except ValueError as exc:
            raise ValueError(f"{exc}. Pass check_bounds=False to simulate such values anyway (at your own risk: "
                             "results may be unphysical, e.g. negative cell counts)") from None
    dose_table = _dose_frame(doses, ids)
    target_map = {k: iv.target for k, iv in model.interventions.items()}
    y0 = model.initial_state(theta)
    if initial_state:
        for name, value in initial_state.items():
            if name not in model.all_state_names:
                raise ValueError(
                    f"initial_state names unknown state {name!r} of model {model.name!r}; states: "
                    f"{', '.join(model.all_state_names)}"
                )
            v = float(value)
            if not math.isfinite(v):
                raise ValueError(f"initial_state[{name!r}] must be finite, got {value!r}")
            y0[:, model.all_state_names.index(name)] = v
    if atol is None:
        mag = torch.clamp(y0.abs().amax(dim=0), min=1.0)
        atol_cfg = tuple(max(1e-12, rtol * 1e-4 * float(m)) for m in mag)
    else:
        atol_cfg = atol
    config = SolverConfig(method=method, rtol=rtol, atol=atol_cfg, dt=dt, max_steps=int(max_steps),
                          max_seconds=max_seconds, fused=fused)
    targets = {target_map.get(str(x), str(x)) for x in dose_table["target"].unique()}
    by_subject = dose_table.groupby("subject_id", sort=False).indices if len(dose_table) else {}
    unknown = set(by_subject) - set(ids)
    if unknown:
        raise ValueError(f"dose table names subject(s) {sorted(unknown, key=str)[:10]} that are not in params")
    # validate every dose row once, before any solving
    BatchSchedule.from_frame(dose_table, ids, model.all_state_names, target_map, dtype=dtype)
    shown_states = model.state_names + [c for c in model.compartment_names if c in targets]

    n = len(ids)
    chunks = range(0, n, batch_size)
    if progress is None:
        progress = n > batch_size
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"simulate {model.name}", unit="chunk")
    t_tensor = torch.tensor(np.array(grid), dtype=dtype, device=device)
    ys, statuses = [], []
    with torch.no_grad():
        for start in chunks:
            sl = slice(start, min(start + batch_size, n))
            chunk_ids = ids[sl]
            rows = [by_subject[i] for i in chunk_ids if i in by_subject]
            part = dose_table.iloc[np.concatenate(rows)] if rows else dose_table.iloc[:0]
            sched = BatchSchedule.from_frame(part, chunk_ids, model.all_state_names, target_map, dtype=dtype,
                                             device=device)
            sol = solve(model, y0[sl].to(device), t_tensor, theta[sl].to(device), schedule=sched, config=config)
            ys.append(sol.ys.cpu())
            statuses.append(sol.status.cpu())
    Y = torch.cat(ys)  # (n, T, S)
    status = torch.cat(statuses)
    obs = model.observe(Y, theta[:, None, :])
    negative = _mask_negative_log10(model, Y, obs, atol_cfg)  # {subject index: [state, ...]}
    data = {"time": np.tile(grid, n)}
    if params is not None and isinstance(params, pd.DataFrame):
        data = {"subject_id": np.repeat(np.asarray(ids, dtype=object), len(grid)), **data}
    for s in shown_states:
        data[s] = Y[..., model.all_state_names.index(s)].reshape(-1).numpy()
    for k, v in obs.items():
        data[k] = v.reshape(-1).numpy()
    df = pd.DataFrame(data)
    names = [Status(int(s)).name.lower() for s in status]
    failed = [(i, nm) for i, nm in zip(ids, names) if nm != "ok"]
    neg = [(ids[b], states) for b, states in negative.items() if names[b] == "ok"]
    for b in negative:
        if names[b] == "ok":
            names[b] = NEGATIVE_STATE
    df.attrs["status"] = dict(zip(ids, names))
    if failed:
        warnings.warn(f"{len(failed)} subject(s) failed to integrate and have NaN rows: {failed[:10]}", RuntimeWarning)
    if neg:
        warnings.warn(
            f"{len(neg)} subject(s) have a state below -{NEGATIVE_STATE_ATOL_FACTOR:g} x atol (negative beyond "
            f"numerical noise); their log10 observables of it are NaN there and their status is "
            f"{NEGATIVE_STATE!r}: {neg[:10]}",
            RuntimeWarning,
        )
    return df


def _mask_negative_log10(model: Model, Y: torch.Tensor, obs: dict, atol) -> dict[int, list[str]]:
    """Set to NaN (in place in ``obs``) every log10 observable whose source state is below
    ``-NEGATIVE_STATE_ATOL_FACTOR * atol`` of that state; return ``{subject index: [negative states]}``.
    Observables made by ``log10_observable`` carry their state in ``log10_of``; the clip at ``LOG10_FLOOR``
    stays for values above that threshold (numerical noise around zero)."""
    S = len(model.all_state_names)
    tol = np.broadcast_to(np.asarray(atol, dtype=float).reshape(-1), (S,))
    out: dict[int, list[str]] = {}
    for key, fn in model.observables.items():
        state = getattr(fn, "log10_of", None)
        if state not in model.all_state_names:
            continue
        j = model.all_state_names.index(state)
        below = Y[..., j] < -NEGATIVE_STATE_ATOL_FACTOR * float(tol[j])  # (n, T); NaN (failed) rows compare False
        if not bool(below.any()):
            continue
        v = obs[key]
        obs[key] = torch.where(below, torch.full_like(v, float("nan")), v)
        for b in below.any(dim=1).nonzero()[:, 0].tolist():
            if state not in out.setdefault(b, []):
                out[b].append(state)
    return out
