"""Doses and per-subject dosing schedules.

A :class:`Dose` is a bolus (``duration == 0``: the target jumps by ``amount``) or a zero-order infusion
(``amount`` delivered at a constant rate over ``duration``), optionally repeated NONMEM-style:
``additional`` (ADDL) more doses every ``interval`` (II) time units.

:class:`BatchSchedule` packs one schedule per subject into padded tensors that the solver consumes: each
subject's integration stops exactly at its own dose times (bolus jumps, infusion starts and ends), so
results do not depend on whether a dose coincides with an output time, and gradients flow through the
amounts.

Example
-------
>>> from hybridtwin.dosing import Dose
>>> [d.time for d in Dose(0.0, 100.0, "M", interval=7.0, additional=2).expand()]
[0.0, 7.0, 14.0]

A schedule may expand to at most :data:`MAX_EXPANDED_DOSES` single doses per subject (a guard against a
mistyped ``additional`` that would otherwise run for minutes):

>>> Dose(0.0, 1.0, "M", interval=1.0, additional=10**7)
Traceback (most recent call last):
...
ValueError: Dose(time=0.0, amount=1.0, target='M'): additional=10000000 expands to 10000001 single doses, more than MAX_EXPANDED_DOSES = 10000 per subject
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

DOSE_COLUMNS = ("subject_id", "time", "amount", "target", "duration")

#: Most single doses one subject's schedule may expand to (after NONMEM II/ADDL repetition). Larger schedules
#: are refused with an error naming the subject and the dose: they are almost always a typo in ``additional``
#: and would take minutes to pad and integrate.
MAX_EXPANDED_DOSES = 10_000


@dataclass(frozen=True)
class Dose:
    """One dose event (or a NONMEM II/ADDL series of identical doses).

    Parameters
    ----------
    time: when the (first) dose starts, in the model's time unit; must be >= 0.
    amount: total amount of one dose (>= 0), in the target state's unit.
    target: a model state or drug compartment name.
    duration: 0 for a bolus, > 0 for a zero-order infusion delivering ``amount`` over ``duration``.
    interval: time between repeated doses (NONMEM II); required when ``additional > 0`` and refused when
        ``additional == 0`` (it would be silently ignored).
    additional: number of additional doses after the first (NONMEM ADDL); ``additional + 1`` may not exceed
        :data:`MAX_EXPANDED_DOSES`.
    """

    time: float
    amount: float
    target: str
    duration: float = 0.0
    interval: float | None = None
    additional: int = 0

    def __post_init__(self) -> None:
        where = f"Dose(time={self.time!r}, amount={self.amount!r}, target={self.target!r})"
        _check_number(self.time, "time", where, minimum=0.0)
        if not torch.is_tensor(self.amount):
            _check_number(self.amount, "amount", where, minimum=0.0)
        _check_number(self.duration, "duration", where, minimum=0.0)
        if not isinstance(self.target, str) or not self.target:
            raise ValueError(f"{where}: target must be a state or compartment name, got {self.target!r}")
        if not _is_count(self.additional):
            raise ValueError(f"{where}: additional (ADDL) must be a non-negative integer, got {self.additional!r}")
        _check_expansion(self.additional, where)
        if self.additional == 0 and self.interval is not None:
            raise ValueError(
                f"{where}: interval={self.interval!r} is given but additional=0, so no dose would repeat; "
                "give additional (ADDL, the number of repeats) or drop the interval"
            )
        if self.additional > 0:
            if self.interval is None:
                raise ValueError(f"{where}: additional={self.additional} repeated doses need an interval (II)")
            _check_number(self.interval, "interval", where, minimum=0.0)
            if self.interval <= 0:
                raise ValueError(f"{where}: interval (II) must be > 0, got {self.interval!r}")
            if self.duration > self.interval:
                raise ValueError(f"{where}: an infusion of duration {self.duration} cannot repeat every {self.interval}")
        object.__setattr__(self, "additional", int(self.additional))

    @property
    def is_bolus(self) -> bool:
        return float(self.duration) == 0.0

    def expand(self) -> list["Dose"]:
        """The explicit list of single doses this (possibly repeated) dose stands for (at most
        :data:`MAX_EXPANDED_DOSES`)."""
        _check_expansion(self.additional, f"Dose(time={self.time!r}, amount={self.amount!r}, target={self.target!r})")
        _, times = expand_repeats([float(self.time)], [float(self.interval or 0.0)], [self.additional])
        return [Dose(float(t), self.amount, self.target, self.duration) for t in times]


def expand_repeats(time, interval, additional, subject=None, labels=None) -> tuple[np.ndarray, np.ndarray]:
    """NONMEM II/ADDL expansion, vectorised -- the one place it is written (Dose.expand, dose tables and the
    training dataset all use it). ``time``, ``interval`` (NaN: none) and ``additional`` are per dose row;
    returns ``(row, times)``: for every single dose the row it comes from and its time. With ``subject``
    (each row's subject index) and ``labels`` (subject ids), a subject receiving more than
    :data:`MAX_EXPANDED_DOSES` single doses raises, naming it."""
    time = np.asarray(time, dtype=float)
    interval = np.nan_to_num(np.asarray(interval, dtype=float), nan=0.0)
    reps = np.asarray(additional).astype(np.int64) + 1
    if subject is not None:
        totals = np.bincount(np.asarray(subject, dtype=np.int64), weights=reps, minlength=len(labels) if labels else 0)
        over = np.nonzero(totals > MAX_EXPANDED_DOSES)[0]
        if len(over):
            who = labels[int(over[0])] if labels is not None else int(over[0])
            raise ValueError(f"subject {who!r} would receive {int(totals[over[0]])} single doses after expanding II/ADDL, "
                             f"more than MAX_EXPANDED_DOSES = {MAX_EXPANDED_DOSES}")
    row = np.repeat(np.arange(len(reps)), reps)
    k = np.arange(len(row)) - np.repeat(np.cumsum(reps) - reps, reps)
    return row, time[row] + k * interval[row]


def _is_count(value) -> bool:
    """A non-negative whole number (not a bool, not NaN/inf)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    v = float(value)
    return math.isfinite(v) and v >= 0 and v == int(v)


def _check_expansion(additional, where: str) -> None:
    n = int(additional) + 1
    if n > MAX_EXPANDED_DOSES:
        raise ValueError(
            f"{where}: additional={int(additional)} expands to {n} single doses, more than "
            f"MAX_EXPANDED_DOSES = {MAX_EXPANDED_DOSES} per subject"
        )


def _check_number(value, name: str, where: str, minimum: float | None = None) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{where}: {name} must be finite, got {value!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum:g}, got {value!r}")


@dataclass
class BatchSchedule:
    """Padded per-subject dose tensors for a batch of B subjects.

    Attributes (all with batch dimension first; padding has time ``inf`` and amount 0):

    - ``bolus_time`` (B, K), ``bolus_amount`` (B, K), ``bolus_target`` (B, K) long
    - ``inf_start`` (B, J), ``inf_end`` (B, J), ``inf_rate`` (B, J), ``inf_target`` (B, J) long
    """

    bolus_time: torch.Tensor
    bolus_amount: torch.Tensor
    bolus_target: torch.Tensor
    inf_start: torch.Tensor
    inf_end: torch.Tensor
    inf_rate: torch.Tensor
    inf_target: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.bolus_time.shape[0]

    @staticmethod
    def empty(batch: int, dtype=torch.float64, device=None) -> "BatchSchedule":
        """No doses for ``batch`` subjects (built as tensors directly: no per-subject Python work, which cost
        about a second at 10^6 subjects)."""
        inf_ = torch.full((batch, 1), float("inf"), dtype=dtype, device=device)
        zeros = torch.zeros((batch, 1), dtype=dtype, device=device)
        idx = torch.zeros((batch, 1), dtype=torch.long, device=device)
        return BatchSchedule(inf_, zeros, idx, inf_.clone(), inf_.clone(), zeros.clone(), idx.clone())

    @staticmethod
    def from_doses(
        schedules: Sequence[Iterable[Dose]],
        state_names: Sequence[str],
        dtype: torch.dtype = torch.float64,
        device=None,
    ) -> "BatchSchedule":
        """Build from one list of :class:`Dose` per subject; targets are resolved against ``state_names``."""
        boluses, infusions = [], []
        if all(len(s) == 0 for s in schedules):
            return BatchSchedule.empty(len(schedules), dtype=dtype, device=device)
        for b, sched in enumerate(schedules):
            sched = list(sched)
            bol, inf = [], []
            for dose in sched:
                if not isinstance(dose, Dose):
                    raise TypeError(f"subject {b}: schedules must contain Dose objects, got {type(dose).__name__}")
            total = sum(d.additional + 1 for d in sched)
            if total > MAX_EXPANDED_DOSES:
                big = max(sched, key=lambda d: d.additional)
                raise ValueError(
                    f"subject {b}: its {len(sched)} dose(s) expand to {total} single doses, more than "
                    f"MAX_EXPANDED_DOSES = {MAX_EXPANDED_DOSES} per subject (largest: {big})"
                )
            for dose in sched:
                if dose.target not in state_names:
                    raise ValueError(
                        f"dose target {dose.target!r} (subject {b}) is not a state or drug compartment of the model; "
                        f"valid targets: {', '.join(state_names)}"
                    )
                tgt = list(state_names).index(dose.target)
                for d in dose.expand():
                    if d.is_bolus:
                        bol.append((float(d.time), d.amount, tgt))
                    else:
                        rate = d.amount / float(d.duration)
                        inf.append((float(d.time), float(d.time) + float(d.duration), rate, tgt))
            boluses.append(sorted(bol, key=lambda r: r[0]))
            infusions.append(sorted(inf, key=lambda r: r[0]))
        B = len(schedules)
        K = max([len(x) for x in boluses] + [1])
        J = max([len(x) for x in infusions] + [1])
        kw = dict(dtype=dtype, device=device)
        inf_ = float("inf")
        btime = torch.full((B, K), inf_, **kw)
        btgt = torch.zeros((B, K), dtype=torch.long, device=device)
        amounts = [[torch.zeros((), **kw)] * K for _ in range(B)]
        istart = torch.full((B, J), inf_, **kw)
        iend = torch.full((B, J), inf_, **kw)
        itgt = torch.zeros((B, J), dtype=torch.long, device=device)
        rates = [[torch.zeros((), **kw)] * J for _ in range(B)]
        for b in range(B):
            for k, (t, a, tgt) in enumerate(boluses[b]):
                btime[b, k] = t
                btgt[b, k] = tgt
                amounts[b][k] = torch.as_tensor(a, **kw)
            for j, (t0, t1, r, tgt) in enumerate(infusions[b]):
                istart[b, j], iend[b, j], itgt[b, j] = t0, t1, tgt
                rates[b][j] = torch.as_tensor(r, **kw)
        bamount = torch.stack([torch.stack(row) for row in amounts])
        irate = torch.stack([torch.stack(row) for row in rates])
        return BatchSchedule(btime, bamount, btgt, istart, iend, irate, itgt)

    @staticmethod
    def from_frame(
        frame: pd.DataFrame,
        subject_ids: Sequence,
        state_names: Sequence[str],
        target_map: dict[str, str] | None = None,
        dtype: torch.dtype = torch.float64,
        device=None,
    ) -> "BatchSchedule":
        """Vectorised construction from a dose table (``subject_id, time, amount, target[, duration, interval,
        additional]``) for the subjects ``subject_ids`` (in that order). ``target_map`` renames targets
        (e.g. intervention names to compartments). Every row is validated; errors name the rows."""
        frame = frame.reset_index(drop=True)
        missing = [c for c in ("subject_id", "time", "amount", "target") if c not in frame.columns]
        if missing:
            raise ValueError(f"dose table is missing required column(s) {missing}; expected columns {list(DOSE_COLUMNS)}")
        n = len(frame)

        def col(name, default, fill_nan=False):
            """A numeric column; ``default`` when absent; NaN cells become ``default`` only if ``fill_nan``."""
            if name not in frame.columns:
                return np.full(n, default, dtype=float)
            try:
                v = pd.to_numeric(frame[name], errors="raise").to_numpy(dtype=float)
            except (TypeError, ValueError):
                raise ValueError(f"dose table column {name!r} must be numeric") from None
            return np.where(np.isnan(v), default, v) if fill_nan else v

        # a missing duration column means boluses, but a NaN duration is an error (not silently a bolus);
        # a NaN interval means "no interval" and a NaN additional "no repeats" (as in NONMEM exports)
        time, amount = col("time", np.nan), col("amount", np.nan)
        duration = col("duration", 0.0)
        interval, additional = col("interval", np.nan), col("additional", 0.0, fill_nan=True)
        checks = [
            (~np.isfinite(time) | (time < 0), "time must be finite and >= 0"),
            (~np.isfinite(amount) | (amount < 0), "amount must be finite and >= 0"),
            (~np.isfinite(duration) | (duration < 0), "duration must be finite and >= 0 (0 for a bolus)"),
            (~np.isfinite(additional) | (additional < 0) | (additional != np.round(additional)),
             "additional (ADDL) must be a non-negative integer"),
            ((additional > 0) & ~(interval > 0), "repeated doses (ADDL > 0) need an interval (II) > 0"),
            ((additional > 0) & (duration > np.nan_to_num(interval, nan=np.inf)), "an infusion cannot be longer than its interval"),
        ]
        for bad, msg in checks:
            if bad.any():
                rows = np.nonzero(bad)[0][:10].tolist()
                raise ValueError(f"dose table: {msg}; offending rows {rows} (subjects {frame.loc[rows, 'subject_id'].tolist()})")
        targets = frame["target"].astype(str)
        if target_map:
            targets = targets.map(lambda x: target_map.get(x, x))
        index = {s: i for i, s in enumerate(state_names)}
        tgt = targets.map(index)
        if tgt.isna().any():
            rows = np.nonzero(tgt.isna().to_numpy())[0][:10].tolist()
            raise ValueError(
                f"dose target(s) {sorted(set(frame.loc[rows, 'target']))} in rows {rows} are not states or drug "
                f"compartments of the model; valid targets: {', '.join(list(target_map or []) or state_names)}"
            )
        pos = {s: i for i, s in enumerate(subject_ids)}
        subj = frame["subject_id"].map(pos)
        if subj.isna().any():
            rows = np.nonzero(subj.isna().to_numpy())[0][:10].tolist()
            raise ValueError(f"dose table names unknown subject(s) {frame.loc[rows, 'subject_id'].unique().tolist()}")
        subj_idx = subj.to_numpy(dtype=int)
        totals = np.bincount(subj_idx, weights=additional + 1.0, minlength=len(subject_ids))
        over = np.nonzero(totals > MAX_EXPANDED_DOSES)[0]
        if len(over):
            b = int(over[0])
            rows = np.nonzero(subj_idx == b)[0]
            r = int(rows[np.argmax(additional[rows])])
            dose = {c: frame.loc[r, c] for c in ("time", "amount", "target", "duration", "interval", "additional")
                    if c in frame.columns}
            others = f"; {len(over) - 1} other subject(s) too" if len(over) > 1 else ""
            raise ValueError(
                f"dose table: subject {subject_ids[b]!r} would receive {int(totals[b])} single doses after expanding "
                f"II/ADDL, more than MAX_EXPANDED_DOSES = {MAX_EXPANDED_DOSES} per subject (largest: row {r}, "
                f"{dose}){others}"
            )
        ridx, t = expand_repeats(time, interval, additional)
        return BatchSchedule.from_arrays(subj_idx[ridx], t, amount[ridx], tgt.to_numpy(dtype=int)[ridx],
                                         duration[ridx], len(subject_ids), dtype=dtype, device=device)

    @staticmethod
    def from_arrays(subject: np.ndarray, time: np.ndarray, amount: np.ndarray, target: np.ndarray,
                    duration: np.ndarray, batch_size: int, dtype: torch.dtype = torch.float64,
                    device=None) -> "BatchSchedule":
        """Pad already-validated single doses (one entry each, no II/ADDL) of ``batch_size`` subjects:
        ``subject`` holds each dose's row in the batch, ``target`` its state index."""
        b, t, a, dur, tg = (np.asarray(x) for x in (subject, time, amount, duration, target))
        B = batch_size

        def pad(sel, values, fill):
            order = np.lexsort((t[sel], b[sel]))
            bb = b[sel][order].astype(int)
            slot = np.arange(len(bb)) - np.searchsorted(bb, bb, side="left")
            width = max(1, int(slot.max()) + 1) if len(bb) else 1
            outs = []
            for v, f in zip(values, fill):
                v = np.asarray(v)
                arr = np.full((B, width), f, dtype=np.int64 if np.issubdtype(v.dtype, np.integer) else float)
                arr[bb, slot] = v[sel][order]
                outs.append(arr)
            return outs

        bol = dur == 0
        bt, ba, btg = pad(bol, (t, a, tg.astype(np.int64)), (np.inf, 0.0, 0))
        inf = ~bol
        rate = a / np.where(dur > 0, dur, 1.0)
        it0, it1, ir, itg = pad(inf, (t, t + dur, rate, tg.astype(np.int64)), (np.inf, np.inf, 0.0, 0))
        kw = dict(dtype=dtype, device=device)
        lk = dict(dtype=torch.long, device=device)
        return BatchSchedule(torch.tensor(bt, **kw), torch.tensor(ba, **kw), torch.tensor(btg, **lk),
                             torch.tensor(it0, **kw), torch.tensor(it1, **kw), torch.tensor(ir, **kw),
                             torch.tensor(itg, **lk))

    def breakpoints(self) -> torch.Tensor:
        """(B, E) sorted times where a subject's dynamics jump or change (inf-padded, duplicates kept)."""
        allt = torch.cat([self.bolus_time, self.inf_start, self.inf_end], dim=1)
        return torch.sort(allt, dim=1).values

    def infusion_rate(self, t: torch.Tensor, n_states: int) -> torch.Tensor:
        """(B, S) total infusion rate into each state at times ``t`` (B,) (start inclusive, end exclusive)."""
        active = (self.inf_start <= t[:, None]) & (t[:, None] < self.inf_end)
        rate = torch.where(active, self.inf_rate, torch.zeros_like(self.inf_rate))
        out = torch.zeros(t.shape[0], n_states, dtype=rate.dtype, device=rate.device)
        return out.scatter_add(1, self.inf_target, rate)

    def bolus_at(self, t: torch.Tensor, n_states: int, hit: torch.Tensor) -> torch.Tensor:
        """(B, S) sum of bolus amounts given exactly at ``t`` (B,) for subjects where ``hit`` is True."""
        at = (self.bolus_time == t[:, None]) & hit[:, None]
        amount = torch.where(at, self.bolus_amount, torch.zeros_like(self.bolus_amount))
        out = torch.zeros(t.shape[0], n_states, dtype=amount.dtype, device=amount.device)
        return out.scatter_add(1, self.bolus_target, amount)

    def select(self, index: torch.Tensor) -> "BatchSchedule":
        """The schedules of a subset of subjects."""
        return BatchSchedule(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    def shifted(self, delta: torch.Tensor) -> "BatchSchedule":
        """Every subject's dose times moved by its ``delta`` (B,) (padding stays at ``inf``); times that would
        fall before 0 are held at 0 (a dose before the model's clock starts enters at its start)."""
        d = delta[:, None].to(self.bolus_time.dtype)

        def move(t):
            return torch.where(torch.isfinite(t), torch.clamp(t + d, min=0.0), t)

        return BatchSchedule(move(self.bolus_time), self.bolus_amount, self.bolus_target, move(self.inf_start),
                             move(self.inf_end), self.inf_rate, self.inf_target)

    def to(self, dtype=None, device=None) -> "BatchSchedule":
        def conv(x):
            if x.dtype == torch.long:
                return x.to(device=device)
            return x.to(dtype=dtype, device=device)

        return BatchSchedule(*(conv(getattr(self, f)) for f in self.__dataclass_fields__))
