"""A LightningDataModule over a :class:`hybridtwin.data.CohortData`: subject-level, cohort-stratified splits.

Subjects (never rows) are split into train/validation[/test] with
:func:`hybridtwin.data.split_subjects` and a seed. :meth:`CohortDataModule.make_twin` builds the twin from the
*training* subjects only (covariate preprocessing and observable scales never see validation or test
subjects). Loaders use a seeded :class:`~torch.utils.data.DistributedSampler` (also with one process), so
the shuffle order depends only on ``(seed, epoch)``: a resumed run sees the same batches as an
uninterrupted one, and each DDP process reads its own share of subjects.

Example
-------
>>> from hybridtwin.virtual.cohort import make_virtual_cohort
>>> from hybridtwin.twin import TwinConfig
>>> dm = CohortDataModule(make_virtual_cohort("vaccine_asc", n_subjects=20, n_cohorts=2, seed=0),
...                       fractions=(0.6, 0.2, 0.2), batch_size=4)
>>> twin = dm.make_twin(TwinConfig(model="vaccine_asc"))
>>> dm.setup("fit")
>>> len(dm.train_ids), len(dm.val_ids), len(dm.test_ids), len(next(iter(dm.train_dataloader())))
(12, 4, 4, 4)
"""

from __future__ import annotations

import hashlib
import json

import lightning as L
from torch.utils.data import DataLoader, DistributedSampler

from hybridtwin.data import CohortData, split_subjects
from hybridtwin.twin import HybridTwin, TwinConfig


def _ids_digest(ids) -> str:
    return hashlib.sha256(json.dumps(sorted(map(str, ids))).encode()).hexdigest()[:16]


class CohortDataModule(L.LightningDataModule):
    """Split ``data`` by subject (stratified by cohort) and serve padded batches for a twin.

    fractions: (train, validation[, test]); split_seed: seed of the split; batch_size: subjects per batch;
    seed: shuffle seed (with the epoch). Call :meth:`make_twin` (or :meth:`attach`) before training.
    """

    def __init__(self, data: CohortData, fractions=(0.8, 0.1, 0.1), split_seed: int = 0, batch_size: int = 64,
                 seed: int = 0):
        super().__init__()
        if not isinstance(data, CohortData):
            raise TypeError(f"CohortDataModule takes a CohortData (hybridtwin.data.validate), "
                            f"got {type(data).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        parts = split_subjects(data, fractions=tuple(fractions), seed=split_seed)
        if not parts[0] or not parts[1]:
            raise ValueError(f"the split {tuple(fractions)} of {len(data.subject_ids)} subjects leaves "
                             f"{len(parts[0])} training and {len(parts[1])} validation subjects; both need at "
                             "least one: use more subjects or larger fractions")
        self.data, self.fractions, self.split_seed = data, tuple(fractions), split_seed
        self.batch_size, self.seed = batch_size, seed
        self.train_ids, self.val_ids = list(parts[0]), list(parts[1])
        self.test_ids = list(parts[2]) if len(parts) > 2 else []
        self.train_data, self.val_data = data.subset(self.train_ids), data.subset(self.val_ids)
        self.test_data = data.subset(self.test_ids) if self.test_ids else None
        self.twin: HybridTwin | None = None
        self.datasets: dict = {}

    def make_twin(self, config: TwinConfig) -> HybridTwin:
        """Build a twin whose preprocessing is fitted on the training subjects only, and attach it."""
        missing = sorted(set(self.data.cohorts) - set(self.train_data.cohorts))
        if missing:
            raise ValueError(f"cohort(s) {missing} have no training subject; the twin could not encode them: use "
                             "more subjects per cohort or a larger training fraction")
        return self.attach(HybridTwin.from_data(config, self.train_data))

    def attach(self, twin: HybridTwin) -> HybridTwin:
        """Serve batches encoded for ``twin`` (its observables, cohorts, covariates and dtype)."""
        if not isinstance(twin, HybridTwin):
            raise TypeError(f"attach expects a HybridTwin, got {type(twin).__name__}")
        self.twin, self.datasets = twin, {}
        return twin

    def setup(self, stage: str | None = None) -> None:
        if self.twin is None:
            raise ValueError("no twin attached: call make_twin(config) or attach(twin) before training")
        if not self.datasets:
            self.datasets = {"train": self.twin.dataset(self.train_data), "val": self.twin.dataset(self.val_data)}
            if self.test_data is not None:
                self.datasets["test"] = self.twin.dataset(self.test_data)

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        self.setup()
        ds = self.datasets[part]
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, collate_fn=ds.collate, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if self.test_data is None:
            raise ValueError(f"the split {self.fractions} has no test part; give three fractions")
        return self._loader("test", shuffle=False)

    def summary(self) -> dict:
        """What the twin is trained on, as plain JSON types (for the model card)."""
        def part(ids, data):
            if not ids:
                return {"n_subjects": 0}
            counts = data.summary().set_index("cohort")["subjects"].astype(int).to_dict()
            return {"n_subjects": len(ids), "n_observations": int(len(data.observations)),
                    "n_censored": int(data.observations["censored"].sum()), "subjects_per_cohort": counts,
                    "subject_ids_sha256": _ids_digest(ids)}

        return {"cohorts": list(self.data.cohorts), "observables": list(self.data.observables),
                "covariates": [c for c in self.data.covariates.columns if c != "subject_id"],
                "fractions": list(self.fractions), "split_seed": self.split_seed,
                "train": part(self.train_ids, self.train_data), "validation": part(self.val_ids, self.val_data),
                "test": {**part(self.test_ids, self.test_data), "subject_ids": [str(s) for s in self.test_ids]}}
