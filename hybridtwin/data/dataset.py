"""From validated tables to padded, masked batches that the solver consumes directly.

:class:`SubjectDataset` holds one item per subject (covariates, observation times/values/observable
indices/censoring, dose schedule, cohort index); :func:`collate` pads a list of items into a :class:`Batch`.
Padding is never imputed: padded entries have ``mask == False`` and are ignored by the solver and the
likelihood. Observation times are sorted within a subject (several observables at one time are several
entries with the same time), so ``hybridtwin.solve(model, y0, batch.times, theta, schedule=batch.schedule,
mask=batch.mask)`` returns the states at every observation.

Example
-------
>>> import pandas as pd
>>> from torch.utils.data import DataLoader
>>> from hybridtwin.data import SubjectDataset, validate
>>> obs = pd.DataFrame({"subject_id": [1, 1, 2], "time": [1.0, 2.0, 1.5], "observable": "log10_V",
...                     "value": [3.0, 4.0, 2.0]})
>>> ds = SubjectDataset(validate(obs), model="baccam2006")
>>> batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=ds.collate)))
>>> tuple(batch.times.shape), batch.mask.tolist()
((2, 2), [[True, True], [True, False]])
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..dosing import BatchSchedule, expand_repeats
from .schema import CohortData


@dataclass
class SubjectRecord:
    """One subject's data as numpy arrays (observations sorted by time)."""

    subject_id: object
    index: int
    cohort: int
    covariates: np.ndarray
    times: np.ndarray
    values: np.ndarray
    observable: np.ndarray
    censored: np.ndarray
    lloq: np.ndarray
    dose_time: np.ndarray
    dose_amount: np.ndarray
    dose_target: np.ndarray
    dose_duration: np.ndarray


@dataclass
class Batch:
    """Padded, masked tensors for B subjects.

    times, values, lloq: (B, T) float; observable: (B, T) long (index into ``observable_names``); censored,
    mask: (B, T) bool; covariates: (B, C); cohort: (B,) long (index into ``cohort_names``); schedule: the
    doses; subject_ids: list of B ids. Padded entries repeat the subject's last time and have value 0.
    """

    subject_ids: list
    times: torch.Tensor
    values: torch.Tensor
    observable: torch.Tensor
    censored: torch.Tensor
    lloq: torch.Tensor
    mask: torch.Tensor
    covariates: torch.Tensor
    cohort: torch.Tensor
    schedule: BatchSchedule
    observable_names: list
    cohort_names: list

    def __len__(self) -> int:
        return len(self.subject_ids)

    def select(self, idx: torch.Tensor) -> "Batch":
        """The subjects at positions ``idx`` (a 1-D long tensor), in that order."""
        return Batch([self.subject_ids[i] for i in idx.tolist()], self.times[idx], self.values[idx],
                     self.observable[idx], self.censored[idx], self.lloq[idx], self.mask[idx], self.covariates[idx],
                     self.cohort[idx], self.schedule.select(idx), self.observable_names, self.cohort_names)

    def to(self, device=None, dtype=None) -> "Batch":
        """Move tensors to ``device`` (and floating tensors to ``dtype``)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
            elif isinstance(v, BatchSchedule):
                v = v.to(dtype=dtype or v.bolus_time.dtype, device=device)
            out[f.name] = v
        return Batch(**out)


class SubjectDataset(Dataset):
    """One item per subject of a :class:`CohortData`.

    model: a name or Model; needed to turn dose targets into state indices (and to check observables).
    preprocessor: a fitted :class:`hybridtwin.data.CovariatePreprocessor` (fit it on training subjects only);
        without one, every numeric covariate column is used as is (missing values stay NaN).
    observables, cohorts: fixed name lists (so several datasets share one encoding; default: those present).
    dtype: floating dtype of the batches.
    subjects: the subjects and their order (default: those in the data); subjects without observations or doses
        get empty records (e.g. new patients known only by covariates). subject_cohorts: their cohorts.
    """

    def __init__(self, data: CohortData, model=None, preprocessor=None, observables: Sequence[str] | None = None,
                 cohorts: Sequence[str] | None = None, dtype: torch.dtype = torch.float32,
                 subjects: Sequence | None = None, subject_cohorts: Sequence[str] | None = None):
        if not isinstance(data, CohortData):
            raise TypeError(f"SubjectDataset takes a CohortData (from hybridtwin.data.validate), got {type(data).__name__}")
        from .. import models as _models

        self.model = _models.get(model) if model is not None else None
        self.dtype = dtype
        obs = data.observations
        self.observable_names = list(observables) if observables is not None else data.observables
        self.cohort_names = list(cohorts) if cohorts is not None else data.cohorts
        for what, names, present in (("observable", self.observable_names, data.observables),
                                     ("cohort", self.cohort_names, data.cohorts)):
            unknown = sorted(set(present) - set(names))
            if unknown:
                raise ValueError(f"data contain {what}(s) {unknown} not in the given list {names}")
        if len(data.doses) and self.model is None:
            raise ValueError("the data have doses: pass model=... so that dose targets can be mapped to model states")
        self.subject_ids = list(subjects) if subjects is not None else data.subject_ids
        if subjects is not None:
            stray = set(data.subject_ids) - set(self.subject_ids)
            if stray:
                raise ValueError(f"data hold subject(s) {sorted(stray, key=str)[:10]} not in `subjects`")
        pos = {s: i for i, s in enumerate(self.subject_ids)}
        cov = data.covariates.set_index("subject_id").reindex(self.subject_ids)
        if preprocessor is not None:
            cov_matrix = preprocessor.transform(cov.reset_index())
            self.covariate_names = list(preprocessor.feature_names_)
        else:
            num = [c for c in cov.columns if np.issubdtype(cov[c].dtype, np.number)]
            cov_matrix = cov[num].to_numpy(dtype=float)
            self.covariate_names = num
        obs_idx = {n: i for i, n in enumerate(self.observable_names)}
        coh_idx = {n: i for i, n in enumerate(self.cohort_names)}
        # flat arrays sorted by subject (validate() sorts observations by subject, time, observable) + offsets
        code = obs["subject_id"].map(pos).to_numpy(dtype=np.int64)
        order = np.argsort(code, kind="stable")
        self._obs = {"time": obs["time"].to_numpy(float)[order], "value": obs["value"].to_numpy(float)[order],
                     "observable": obs["observable"].map(obs_idx).to_numpy(np.int64)[order],
                     "censored": obs["censored"].to_numpy(bool)[order], "lloq": obs["lloq"].to_numpy(float)[order]}
        n = len(self.subject_ids)
        self._obs_off = np.searchsorted(code[order], np.arange(n + 1))
        cohort_of = obs.groupby("subject_id", sort=False)["cohort"].first().reindex(self.subject_ids)
        if subject_cohorts is not None:  # e.g. subjects without observations whose cohort is known
            cohort_of = cohort_of.fillna(pd.Series(list(subject_cohorts), index=self.subject_ids))
        self._cohort = cohort_of.map(coh_idx).fillna(0).to_numpy(np.int64)
        self._cov = np.asarray(cov_matrix, dtype=float)
        doses = self._expanded_doses(data)
        dcode = doses["subject"]
        dorder = np.lexsort((doses["time"], dcode)) if len(dcode) else np.zeros(0, dtype=np.int64)
        self._doses = {k: np.asarray(v)[dorder] for k, v in doses.items()}
        self._dose_off = np.searchsorted(self._doses["subject"], np.arange(n + 1))

    def _expanded_doses(self, data: CohortData) -> dict:
        d = data.doses
        if not len(d):
            z = np.zeros(0)
            return {"subject": np.zeros(0, np.int64), "time": z, "amount": z, "target": np.zeros(0, np.int64), "duration": z}
        pos = {s: i for i, s in enumerate(self.subject_ids)}
        target_map = {k: iv.target for k, iv in self.model.interventions.items()}
        states = {s: i for i, s in enumerate(self.model.all_state_names)}
        tgt = d["target"].map({k: states.get(target_map.get(k, k)) for k in d["target"].unique()})
        if tgt.isna().any():
            raise ValueError(f"dose target(s) {sorted(set(d['target'][tgt.isna()]))} do not exist in model {self.model.name!r}")
        subject = d["subject_id"].map(pos).to_numpy(np.int64)
        ridx, times = expand_repeats(d["time"].to_numpy(float), d["interval"].to_numpy(float),
                                     d["additional"].to_numpy(int), subject, self.subject_ids)
        return {"subject": subject[ridx], "time": times,
                "amount": d["amount"].to_numpy(float)[ridx], "target": tgt.to_numpy(int)[ridx],
                "duration": d["duration"].to_numpy(float)[ridx]}

    def __len__(self) -> int:
        return len(self.subject_ids)

    def __getitem__(self, i: int) -> SubjectRecord:
        if not -len(self) <= i < len(self):
            raise IndexError(f"subject index {i} out of range for {len(self)} subjects")
        i = i % len(self)
        a, b = self._obs_off[i], self._obs_off[i + 1]
        c, d = self._dose_off[i], self._dose_off[i + 1]
        o, ds = self._obs, self._doses
        return SubjectRecord(self.subject_ids[i], i, int(self._cohort[i]), self._cov[i], o["time"][a:b], o["value"][a:b],
                             o["observable"][a:b], o["censored"][a:b], o["lloq"][a:b], ds["time"][c:d],
                             ds["amount"][c:d], ds["target"][c:d], ds["duration"][c:d])

    def collate(self, items) -> Batch:
        """``collate_fn`` for a DataLoader over this dataset (keeps its observable/cohort names and dtype).

        A DataLoader fetches whole batches through :meth:`__getitems__` (vectorised), so ``items`` is then
        already a :class:`Batch` and is returned as is."""
        return items if isinstance(items, Batch) else collate(items, self)

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        return self.batch(indices)

    def batch(self, indices: Sequence[int] | None = None) -> Batch:
        """The given subjects (default: all) as one padded Batch, gathered without a per-subject loop."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            raise ValueError("a batch needs at least one subject")
        if (idx < -len(self)).any() or (idx >= len(self)).any():
            raise IndexError(f"subject indices out of range for {len(self)} subjects")
        idx = idx % len(self)
        B = len(idx)
        start, n = self._obs_off[idx], self._obs_off[idx + 1] - self._obs_off[idx]
        T = max(1, int(n.max()))
        col = np.arange(T)[None, :]
        mask = col < n[:, None]
        last = np.maximum(start + n - 1, 0)
        src = np.where(mask, start[:, None] + col, last[:, None])  # padding repeats the last entry ...
        o = self._obs
        if len(o["time"]) == 0:
            src = np.zeros_like(src)
            o = {k: np.zeros(1, dtype=v.dtype) for k, v in o.items()}
        times = o["time"][src]
        values = np.where(mask, o["value"][src], 0.0)  # ... but carries no data
        lloq = np.where(mask, o["lloq"][src], np.nan)
        observable = np.where(mask, o["observable"][src], 0)
        censored = mask & o["censored"][src]
        d0, dn = self._dose_off[idx], self._dose_off[idx + 1] - self._dose_off[idx]
        rows = np.concatenate([np.arange(a, a + k) for a, k in zip(d0, dn)]) if dn.sum() else np.zeros(0, np.int64)
        dd = self._doses
        schedule = BatchSchedule.from_arrays(np.repeat(np.arange(B), dn), dd["time"][rows], dd["amount"][rows],
                                             dd["target"][rows], dd["duration"][rows], B, dtype=self.dtype)
        dt = self.dtype
        return Batch(subject_ids=[self.subject_ids[i] for i in idx], times=torch.tensor(times, dtype=dt),
                     values=torch.tensor(values, dtype=dt), observable=torch.from_numpy(observable.astype(np.int64)),
                     censored=torch.from_numpy(censored), lloq=torch.tensor(lloq, dtype=dt), mask=torch.from_numpy(mask),
                     covariates=torch.tensor(self._cov[idx], dtype=dt), cohort=torch.from_numpy(self._cohort[idx]),
                     schedule=schedule, observable_names=list(self.observable_names), cohort_names=list(self.cohort_names))


def collate(items: Sequence[SubjectRecord], dataset: SubjectDataset | None = None) -> Batch:
    """Pad subject records into a :class:`Batch` (usable as a DataLoader ``collate_fn``)."""
    if not items:
        raise ValueError("collate needs at least one subject")
    dtype = dataset.dtype if dataset is not None else torch.float32
    B = len(items)
    T = max(1, max(len(r.times) for r in items))
    times = np.zeros((B, T))
    values = np.zeros((B, T))
    lloq = np.full((B, T), np.nan)
    observable = np.zeros((B, T), dtype=np.int64)
    censored = np.zeros((B, T), dtype=bool)
    mask = np.zeros((B, T), dtype=bool)
    for b, r in enumerate(items):
        n = len(r.times)
        times[b, :n], values[b, :n], lloq[b, :n] = r.times, r.values, r.lloq
        observable[b, :n], censored[b, :n], mask[b, :n] = r.observable, r.censored, True
        if n:
            times[b, n:] = r.times[-1]
    counts = [len(r.dose_time) for r in items]
    subject = np.repeat(np.arange(B), counts)
    cat = (lambda name: np.concatenate([getattr(r, name) for r in items]) if sum(counts) else np.zeros(0))
    schedule = BatchSchedule.from_arrays(subject, cat("dose_time"), cat("dose_amount"),
                                         cat("dose_target").astype(np.int64), cat("dose_duration"), B, dtype=dtype)
    cov = np.stack([r.covariates for r in items]) if items[0].covariates.size else np.zeros((B, 0))
    return Batch(
        subject_ids=[r.subject_id for r in items],
        times=torch.tensor(times, dtype=dtype), values=torch.tensor(values, dtype=dtype),
        observable=torch.from_numpy(observable), censored=torch.from_numpy(censored),
        lloq=torch.tensor(lloq, dtype=dtype), mask=torch.from_numpy(mask),
        covariates=torch.tensor(cov, dtype=dtype), cohort=torch.tensor([r.cohort for r in items], dtype=torch.long),
        schedule=schedule,
        observable_names=list(dataset.observable_names) if dataset is not None else [],
        cohort_names=list(dataset.cohort_names) if dataset is not None else [],
    )


def random_prefix_mask(batch: Batch, generator: torch.Generator | None = None, full: float = 0.2) -> torch.Tensor:
    """(B, T) mask of a random prefix of each subject's observations: all of them with probability ``full``,
    else the earliest ``k`` with ``k`` uniform on 0..n -- how the encoder learns to personalise from any number of
    early samples (training by ELBO and amortisation both use it). Random draws use the CPU ``generator``.

    >>> import torch
    >>> from hybridtwin.virtual import make_virtual_cohort
    >>> ds = SubjectDataset(make_virtual_cohort("vaccine_asc", n_subjects=4, seed=0), model="vaccine_asc")
    >>> b = ds.batch()
    >>> m = random_prefix_mask(b, torch.Generator().manual_seed(0), full=1.0)
    >>> bool((m == b.mask).all())
    True
    """
    if not 0.0 <= full <= 1.0:
        raise ValueError(f"full must be a probability, got {full!r}")
    n = batch.mask.sum(1).cpu()
    u = torch.rand(len(batch), generator=generator)
    k = torch.floor(torch.rand(len(batch), generator=generator) * (n + 1).to(torch.float64)).long()
    k = torch.where(u < full, n, torch.minimum(k, n)).to(batch.mask.device)
    rank = torch.arange(batch.mask.shape[1], device=batch.mask.device)[None, :]
    return batch.mask & (rank < k[:, None])
