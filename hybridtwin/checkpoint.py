"""Safe, self-describing twin artefacts: ``weights.pt`` (a plain state_dict) + ``card.json`` (how to rebuild it).

:func:`save` writes the two files into a folder; :func:`load` rebuilds the :class:`~hybridtwin.twin.HybridTwin`
from the card and loads the weights with ``torch.load(..., weights_only=True)``, so nothing is ever unpickled
and Lightning is never imported. :func:`load` refuses, with a ``ValueError`` that says what to do:

- a card written by another library major.minor version (the architecture may have changed);
- a ``weights.pt`` whose sha256 differs from the one recorded in the card (tampered or swapped file);
- a state_dict whose keys or shapes do not match the architecture the card describes.

Example
-------
>>> import tempfile, torch
>>> import hybridtwin as ht
>>> from hybridtwin.checkpoint import save
>>> from hybridtwin.datasets.virtual import make_virtual_cohort
>>> from hybridtwin.twin import HybridTwin, TwinConfig
>>> data = make_virtual_cohort("vaccine_asc", n_subjects=6, n_cohorts=2, seed=0)
>>> twin = HybridTwin.from_data(TwinConfig(model="vaccine_asc"), data)
>>> path = save(twin, tempfile.mkdtemp(), metrics={"val_elbo": -1.5})
>>> sorted(p.name for p in path.iterdir())
['card.json', 'weights.pt']
>>> again = ht.load(path)
>>> all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), again.state_dict().values()))
True
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import platform
from pathlib import Path

import torch

FORMAT = "hybridtwin-checkpoint/1"
WEIGHTS = "weights.pt"
CARD = "card.json"


def _version() -> str:
    from . import __version__

    return __version__


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:2])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _plain(x):
    """JSON-safe copy: tensors/numpy become numbers or lists, non-finite floats become None."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _plain(x.detach().cpu().tolist())
    if hasattr(x, "item") and hasattr(x, "dtype"):  # numpy scalars
        return _plain(x.item())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, (str, int, bool)):
        return x
    return str(x)


def save(twin, path, metrics: dict | None = None, data_summary: dict | None = None,
         training: dict | None = None) -> Path:
    """Write ``weights.pt`` and ``card.json`` for ``twin`` into the folder ``path`` (created); returns the folder.

    metrics: final/best scores to record (numbers or tensors). data_summary: what the twin was trained on
    (cohorts, subject counts, split, source), as plain JSON types. training: the run settings, if any.
    """
    from .twin import HybridTwin

    if not isinstance(twin, HybridTwin):
        raise TypeError(f"save expects a HybridTwin, got {type(twin).__name__}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in twin.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    weights = folder / WEIGHTS
    weights.write_bytes(buffer.getvalue())
    with torch.no_grad():
        described, population = twin.card(), twin.population_table().to_dict(orient="records")
    card = {
        "format": FORMAT,
        "library": "hybridtwin",
        "library_version": _version(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "twin": _plain(described),
        "population": _plain(population),
        "training_data": _plain(data_summary or {}),
        "metrics": _plain(metrics or {}),
        "training": _plain(training or {}),
        "weights": {"file": WEIGHTS, "sha256": _sha256(weights), "n_tensors": len(state),
                    "n_parameters": int(sum(p.numel() for p in twin.parameters()))},
    }
    (folder / CARD).write_text(json.dumps(card, indent=1))
    return folder


def read_card(path) -> dict:
    """The card of a checkpoint folder (or of the ``card.json`` file itself), checked for format and version."""
    p = Path(path)
    card_path = p / CARD if p.is_dir() else p
    if not card_path.is_file():
        raise ValueError(f"no {CARD} found at {card_path}: expected a folder written by hybridtwin.checkpoint.save")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{card_path} is not valid JSON ({exc}); the checkpoint is damaged") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        got = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise ValueError(f"{card_path} has format {got!r}, expected {FORMAT!r}")
    saved, ours = str(card.get("library_version")), _version()
    if _major_minor(saved) != _major_minor(ours):
        raise ValueError(f"{card_path} was written by hybridtwin {saved}, this is hybridtwin {ours}: checkpoints "
                         f"load only within the same major.minor version; install hybridtwin=={saved} to load it, "
                         "or retrain with this version")
    return card


def load(path, map_location="cpu"):
    """Rebuild a trained :class:`~hybridtwin.twin.HybridTwin` from a checkpoint folder (no Lightning needed).

    The weights are verified against the card's sha256 before they are read, loaded with
    ``weights_only=True`` and must match the rebuilt architecture key for key and shape for shape.
    The returned twin is in eval mode.
    """
    from .twin import HybridTwin

    folder = Path(path)
    if not folder.is_dir():
        folder = folder.parent
    card = read_card(folder)
    weights = folder / card.get("weights", {}).get("file", WEIGHTS)
    if not weights.is_file():
        raise ValueError(f"weights file {weights} is missing: the checkpoint folder is incomplete")
    expected, actual = card["weights"].get("sha256"), _sha256(weights)
    if expected != actual:
        raise ValueError(f"{weights} has sha256 {actual[:16]}..., the card records {str(expected)[:16]}...: the "
                         "weights were modified or belong to another run; restore the original files")
    state = torch.load(weights, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{weights} is not a state_dict of tensors")
    twin = HybridTwin.from_card(card["twin"])
    own = twin.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs card {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{weights} does not fit the architecture in {CARD}: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, shape mismatches {wrong[:5]}; the card and the weights come from "
                         "different runs")
    twin.load_state_dict(state, strict=True)
    return twin.eval()
