"""Virtual cohorts: simulated patients whose ground truth is known (the test bed of every estimate).

Real, named public data sets are loaded by :mod:`hybridtwin.datasets`; the table format, validation and
batching of any data live in :mod:`hybridtwin.data`. This package generates data: per-patient parameters
from declared covariate effects and random effects, dosing regimens, irregular sampling, noise, assay
calibration and detection limits (:func:`make_virtual_cohort`, configured by :class:`VirtualCohortConfig`).

>>> from hybridtwin.virtual import make_virtual_cohort
>>> data = make_virtual_cohort("vaccine_asc", n_subjects=6, n_cohorts=2, seed=0)
>>> data.report["n_subjects"], sorted(data.meta["ground_truth"])[:3]
(6, ['assay', 'cohort_of_subject', 'cohort_parameters'])
"""

from .cohort import make_virtual_cohort
from .config import VirtualCohortConfig
from .io import read_ground_truth, write_cohort_tables

__all__ = ["make_virtual_cohort", "VirtualCohortConfig", "read_ground_truth", "write_cohort_tables"]
