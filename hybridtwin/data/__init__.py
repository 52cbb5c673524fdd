"""The data layer: canonical long tables, validation, NONMEM adapter, observable mapping, batches, splits,
covariates.

>>> import pandas as pd
>>> from hybridtwin.data import validate
>>> validate(pd.DataFrame({"subject_id": [1], "time": [0.0], "observable": ["log10_V"], "value": [2.0]}))
CohortData(1 subjects, 1 observations (0 censored), 0 doses, cohorts=['all'])
"""

from .covariates import CovariatePreprocessor
from .dataset import Batch, SubjectDataset, SubjectRecord, collate, random_prefix_mask
from .nonmem import from_nonmem, to_nonmem
from .observables import map_observables
from .schema import CohortData, check_doses, check_min_time, check_observations, normalise_subject_ids, validate
from .splits import kfold_subjects, leave_cohort_out, split_subjects

__all__ = [
    "CohortData", "validate", "map_observables", "check_observations", "check_doses", "check_min_time", "normalise_subject_ids", "from_nonmem", "to_nonmem", "CovariatePreprocessor", "SubjectDataset",
    "SubjectRecord", "Batch", "collate", "random_prefix_mask", "split_subjects", "kfold_subjects", "leave_cohort_out",
]
