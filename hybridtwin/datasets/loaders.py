"""Loaders for the public longitudinal data sets in ``shared/data`` (one private module per data set).

Each loader takes the path of its data folder (no default), reads the original files unchanged and returns a
validated :class:`hybridtwin.data.CohortData`; what it leaves out on purpose is counted in
``report["excluded"]`` and the provenance (citation, licence, path) is in ``meta``.
"""

from ._baccam2006 import load_baccam2006
from ._challenger2022 import load_challenger2022
from ._kissler2021 import load_kissler2021
from ._tsang2016 import load_tsang2016

__all__ = ["load_baccam2006", "load_challenger2022", "load_kissler2021", "load_tsang2016"]
