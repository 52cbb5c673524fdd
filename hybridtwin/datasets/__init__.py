"""Named public data sets: loaders for real immune data (virtual cohorts live in :mod:`hybridtwin.virtual`).

Every loader takes the path of its folder (e.g. ``../shared/data/kissler2021_nba_ct``) and returns a
validated :class:`hybridtwin.data.CohortData` with observations, doses and covariates:

>>> from hybridtwin.datasets import load_baccam2006
>>> data = load_baccam2006("../shared/data/baccam2006_influenza_6pt")  # doctest: +SKIP
>>> data.summary()  # doctest: +SKIP

``make_virtual_cohort`` is still importable from here for code written before virtual cohorts got their own
package; new code imports it from :mod:`hybridtwin.virtual`.
"""

from ..virtual import make_virtual_cohort  # backward-compatible alias (see the module docstring)
from .loaders import load_baccam2006, load_challenger2022, load_kissler2021, load_tsang2016

__all__ = ["load_baccam2006", "load_challenger2022", "load_kissler2021", "load_tsang2016", "make_virtual_cohort"]
