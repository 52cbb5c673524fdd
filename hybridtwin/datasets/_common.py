"""Private helpers shared by the real-data loaders: file checks, duplicate handling, final validation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import CohortData, validate


def require_file(path, filename: str, loader: str, folder_hint: str) -> Path:
    """The file ``filename`` inside the folder ``path``; a clear ``FileNotFoundError`` if it is not there.

    ``folder_hint`` names the data folder the loader expects (e.g. ``kissler2021_nba_ct``), so the message
    says what to pass.
    """
    if path is None:
        raise ValueError(f"{loader}: give the path of the {folder_hint!r} data folder (there is no default)")
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{loader}: {str(folder)!r} is not a folder; expected the {folder_hint!r} data folder "
                                f"containing {filename!r}")
    file = folder / filename
    if not file.is_file():
        raise FileNotFoundError(f"{loader}: expected file {filename!r} in {str(folder)!r} (the {folder_hint!r} data "
                                f"folder); it is not there")
    return file


def require_columns(frame: pd.DataFrame, columns, file: Path, loader: str) -> None:
    """Raise ``ValueError`` naming the file and the columns it lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{loader}: {file.name} lacks column(s) {missing}; it has {list(frame.columns)}")


def drop_exact_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Remove rows identical to an earlier row in every column; return the rest and how many were removed."""
    dup = frame.duplicated(keep="first")
    return frame.loc[~dup], int(dup.sum())


def average_replicates(obs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Merge rows sharing (subject_id, time, observable) into one: the mean value, censored only if all are.

    Used for replicate tests of the same subject on the same day that differ in value. An uncensored mean
    keeps the replicates' common ``lloq``. Returns the merged table and the number of rows merged away.
    """
    keys = ["subject_id", "time", "observable"]
    dup = obs.duplicated(keys, keep=False)
    if not dup.any():
        return obs, 0
    groups = obs.loc[dup].groupby(keys, sort=False)
    merged = groups.agg(value=("value", "mean"), lloq=("lloq", "max"), censored=("censored", "all"),
                        **{c: (c, "first") for c in obs.columns if c not in keys + ["value", "lloq", "censored"]})
    merged = merged.reset_index()[list(obs.columns)]
    out = pd.concat([obs.loc[~dup], merged], ignore_index=True)
    return out, int(dup.sum()) - len(merged)


def finish(observations: pd.DataFrame, covariates: pd.DataFrame, *, source: str, meta: dict,
           excluded: dict, doses: pd.DataFrame | None = None, model=None) -> CohortData:
    """Validate the loader's tables and attach what was excluded on purpose and where the data come from."""
    data = validate(observations, doses=doses, covariates=covariates, model=model)
    data = data.with_report(excluded={k: int(v) for k, v in excluded.items() if v}, source=source)
    return replace(data, meta={**data.meta, **meta})
