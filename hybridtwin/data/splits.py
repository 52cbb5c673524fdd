"""Seeded splits by subject and by cohort; a subject is never split across folds.

Example
-------
>>> import pandas as pd
>>> from hybridtwin.data import split_subjects, validate
>>> obs = pd.DataFrame({"subject_id": range(10), "time": 1.0, "observable": "y", "value": 0.0,
...                     "cohort": ["a"] * 5 + ["b"] * 5})
>>> train, val, test = split_subjects(validate(obs), fractions=(0.6, 0.2, 0.2), seed=0)
>>> len(train), len(val), len(test)
(6, 2, 2)
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from .schema import CohortData


def _subjects_by_cohort(data: CohortData) -> dict[str, list]:
    first = data.observations.groupby("subject_id", sort=False)["cohort"].first()
    out: dict[str, list] = {}
    for s in data.subject_ids:
        out.setdefault(str(first.get(s, "all")), []).append(s)
    return out


def split_subjects(data: CohortData, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                   stratify_by_cohort: bool = True) -> tuple[list, ...]:
    """Partition subjects into len(fractions) disjoint lists (e.g. train/validation/test).

    With ``stratify_by_cohort`` each cohort is split in the same proportions, so every cohort appears in
    every part when it has enough subjects.
    """
    fr = np.asarray(fractions, dtype=float)
    if fr.ndim != 1 or len(fr) < 2 or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"fractions must be >= 2 non-negative numbers summing to 1, got {tuple(fractions)}")
    rng = np.random.default_rng(seed)
    groups = _subjects_by_cohort(data) if stratify_by_cohort else {"all": list(data.subject_ids)}
    parts: list[list] = [[] for _ in fr]
    for cohort in sorted(groups):
        ids = list(groups[cohort])
        order = rng.permutation(len(ids))
        edges = np.round(np.cumsum(fr) * len(ids)).astype(int)
        start = 0
        for k, end in enumerate(edges):
            parts[k].extend(ids[i] for i in order[start:end])
            start = end
    return tuple(parts)


def kfold_subjects(data: CohortData, k: int = 5, seed: int = 0) -> list[tuple[list, list]]:
    """k (train, test) pairs; every subject is in exactly one test fold (stratified by cohort)."""
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    if k > len(data.subject_ids):
        raise ValueError(f"k = {k} folds need at least {k} subjects, the data have {len(data.subject_ids)}")
    rng = np.random.default_rng(seed)
    folds: list[list] = [[] for _ in range(k)]
    offset = 0
    for cohort, ids in sorted(_subjects_by_cohort(data).items()):
        for j, i in enumerate(rng.permutation(len(ids))):
            folds[(j + offset) % k].append(ids[i])
        offset += len(ids)
    return [([s for f in folds[:i] + folds[i + 1:] for s in f], folds[i]) for i in range(k)]


def leave_cohort_out(data: CohortData) -> Iterator[tuple[str, list, list]]:
    """For each cohort: (cohort, training subjects of all other cohorts, subjects of this cohort)."""
    groups = _subjects_by_cohort(data)
    if len(groups) < 2:
        raise ValueError(f"leave-cohort-out needs at least two cohorts, the data have {list(groups)}")
    for cohort in sorted(groups):
        yield cohort, [s for c, ids in sorted(groups.items()) if c != cohort for s in ids], list(groups[cohort])
