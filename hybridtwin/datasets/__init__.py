"""Data sets for hybridtwin: loaders for public real data (and virtual cohorts).

Every loader takes the path of its folder (e.g. ``../shared/data/kissler2021_nba_ct``) and returns a
validated :class:`hybridtwin.data.CohortData` with observations, doses and covariates:

>>> from hybridtwin.datasets import load_baccam2006
>>> data = load_baccam2006("../shared/data/baccam2006_influenza_6pt")  # doctest: +SKIP
>>> data.summary()  # doctest: +SKIP
"""

from .loaders import load_baccam2006, load_challenger2022, load_kissler2021, load_tsang2016
from .virtual import make_virtual_cohort

__all__ = ["load_baccam2006", "load_challenger2022", "load_kissler2021", "load_tsang2016", "make_virtual_cohort"]
