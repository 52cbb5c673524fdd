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

__all__ = ["load_baccam2006", "load_challenger2022", "load_kissler2021", "load_tsang2016", "make_virtual_cohort",
           "LOADERS", "load", "register_loader"]

#: data set name -> loader(path) -> CohortData; run configs name these as ``data: {source: NAME, path: ...}``
LOADERS = {"baccam2006": load_baccam2006, "challenger2022": load_challenger2022, "kissler2021": load_kissler2021,
           "tsang2016": load_tsang2016}


def register_loader(name: str, loader, overwrite: bool = False) -> None:
    """Make ``loader(path) -> CohortData`` available by ``name`` (to :func:`load` and to run configs).

    >>> from hybridtwin.datasets import register_loader, LOADERS
    >>> register_loader("my_study", lambda path: None); "my_study" in LOADERS
    True
    >>> del LOADERS["my_study"]
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a loader name must be an identifier such as 'my_study', got {name!r}")
    if name in ("virtual", "csv"):
        raise ValueError(f"{name!r} is a built-in data source of run configs, not a loader name")
    if not callable(loader):
        raise ValueError(f"loader must be a callable loader(path) -> CohortData, got {loader!r}")
    if name in LOADERS and not overwrite:
        raise ValueError(f"a loader named {name!r} exists; pass overwrite=True to replace it")
    LOADERS[name] = loader


def load(name: str, path):
    """The data set ``name`` read from its folder ``path`` (see :data:`LOADERS`)."""
    from ..config import suggest

    if name not in LOADERS:
        close = suggest(name, LOADERS)
        raise ValueError(f"no data set named {name!r}{f' (did you mean {close!r}?)' if close else ''}; "
                         f"known: {sorted(LOADERS)} (add one with register_loader)")
    return LOADERS[name](path)
