"""Shared test helpers.

The real data sets and reference simulations live outside the repository, in ``../shared/data`` relative to
the project root (or wherever ``HYBRIDTWIN_SHARED_DATA`` points). Tests that need them take the
``shared_data`` fixture; if the folder is absent they are skipped with the path they looked for, so a
checkout without the data still runs every other test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs ``-n auto``) each worker is one process per core: one torch thread
    each, so workers do not oversubscribe the CPUs (results do not depend on the thread count)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


#: docstring examples that take 6-8 s each (they fit or train something): they run in ``make test-all``; the
#: default run keeps the quick examples
SLOW_DOCTESTS = {"hybridtwin.estimation.api.estimate", "hybridtwin.estimation.saem",
                 "hybridtwin.personalise.map_importance_posterior",
                 "hybridtwin.diagnostics.credibility.credibility_report"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.name in SLOW_DOCTESTS and type(item).__name__ == "DoctestItem":
            item.add_marker(pytest.mark.slow)


def shared_data_dir() -> Path:
    env = os.environ.get("HYBRIDTWIN_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path} (set HYBRIDTWIN_SHARED_DATA)")
    return path


@pytest.fixture
def float64():
    """float64 as torch's default dtype for one test, restored afterwards (never set at module level: that
    leaks into every test collected later)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch.float64
    torch.set_default_dtype(previous)


@pytest.fixture
def seed():
    """Seeds torch and numpy's global generators (0) for tests that rely on them; returns the seed."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    return 0
