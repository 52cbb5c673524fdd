"""Safe, self-describing twin artefacts: ``weights.pt`` (a plain state_dict) + ``card.json`` (how to rebuild it).

:func:`save` writes the two files into a folder; :func:`load` rebuilds the :class:`~hybridtwin.twin.HybridTwin`
from the card and loads the weights with ``torch.load(..., weights_only=True)``, so nothing is ever unpickled
and Lightning is never imported. :func:`load` refuses, with a ``ValueError`` that says what to do:

- a card written by another library major.minor version (the architecture may have changed);
- a ``weights.pt`` whose sha256 differs from the one recorded in the card (tampered or swapped file);
- a card whose content differs from what was saved: its sha256 is recorded inside the weights, so an edited
  preprocessing mean, cohort order or architecture size is refused before anything is built;
- a weights file name that is not a plain file name in the folder (``../x``, an absolute path);
- a state_dict whose keys or shapes do not match the architecture the card describes (checked on PyTorch's
  ``meta`` device, so a card asking for a huge network allocates nothing);
- a path that does not exist, a weights file that is not a plain tensor state_dict (never unpickled), a
  damaged or absurdly nested ``card.json``.

Example
-------
>>> import tempfile, torch
>>> import hybridtwin as ht
>>> from hybridtwin.checkpoint import save
>>> from hybridtwin.virtual.cohort import make_virtual_cohort
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
#: key of the state_dict entry holding the sha256 of the card (everything but its ``weights`` section)
CARD_KEY = "__card_sha256__"


def _version() -> str:
    from ._version import __version__

    return __version__


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:2])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _card_digest(card: dict) -> str:
    """sha256 of the card's canonical JSON without its ``weights`` section (which records the weights' hash)."""
    body = {k: v for k, v in card.items() if k != "weights"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
    }
    card = json.loads(json.dumps(card))  # exactly what load() will read back
    state[CARD_KEY] = torch.tensor(list(bytes.fromhex(_card_digest(card))), dtype=torch.uint8)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    weights = folder / WEIGHTS
    weights.write_bytes(buffer.getvalue())
    card["weights"] = {"file": WEIGHTS, "sha256": _sha256(weights), "n_tensors": len(state) - 1,
                       "n_parameters": int(sum(p.numel() for p in twin.parameters()))}
    (folder / CARD).write_text(json.dumps(card, indent=1))
    return folder


def read_card(path) -> dict:
    """The card of a checkpoint folder (or of the ``card.json`` file itself), checked for format and version."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"checkpoint {p} does not exist: pass the folder written by hybridtwin.checkpoint.save "
                         "(or hybridtwin train)")
    card_path = p / CARD if p.is_dir() else p
    if not card_path.is_file():
        raise ValueError(f"no {CARD} found at {card_path}: expected a folder written by hybridtwin.checkpoint.save")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{card_path} is not valid JSON ({exc}); the checkpoint is damaged") from None
    except RecursionError:
        raise ValueError(f"{card_path} is nested too deeply to be a hybridtwin card; the checkpoint is damaged") from None
    except UnicodeDecodeError:
        raise ValueError(f"{card_path} is not UTF-8 text; the checkpoint is damaged") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        got = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise ValueError(f"{card_path} has format {got!r}, expected {FORMAT!r}")
    saved, ours = str(card.get("library_version")), _version()
    if _major_minor(saved) != _major_minor(ours):
        raise ValueError(f"{card_path} was written by hybridtwin {saved}, this is hybridtwin {ours}: checkpoints "
                         f"load only within the same major.minor version; install hybridtwin=={saved} to load it, "
                         "or retrain with this version")
    return card


def _weights_path(folder: Path, card: dict) -> Path:
    info = card.get("weights")
    if not isinstance(info, dict):
        raise ValueError(f"{folder / CARD} has no 'weights' section; the checkpoint is damaged")
    name = info.get("file", WEIGHTS)
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise ValueError(f"{folder / CARD} names the weights file {name!r}: it must be a plain file name inside the "
                         "checkpoint folder (no directories, no absolute paths)")
    return folder / name


def load(path, map_location="cpu"):
    """Rebuild a trained :class:`~hybridtwin.twin.HybridTwin` from a checkpoint folder (no Lightning needed).

    ``path`` is the folder (or its ``card.json``). The weights are verified against the card's sha256 before
    they are read and loaded with ``weights_only=True``; the card is verified against the hash stored in the
    weights; the architecture the card describes is built on the ``meta`` device and must match the weights
    key for key and shape for shape before it is built for real. The returned twin is in eval mode.
    """
    import pickle
    import warnings

    from .twin import HybridTwin

    p = Path(path)
    if not p.exists():
        raise ValueError(f"checkpoint {p} does not exist: pass the folder written by hybridtwin.checkpoint.save "
                         "(or hybridtwin train)")
    folder = p if p.is_dir() else p.parent
    card = read_card(folder)
    weights = _weights_path(folder, card)
    if not weights.is_file():
        raise ValueError(f"weights file {weights} is missing: the checkpoint folder is incomplete")
    expected, actual = card["weights"].get("sha256"), _sha256(weights)
    if expected != actual:
        raise ValueError(f"{weights} has sha256 {actual[:16]}..., the card records {str(expected)[:16]}...: the "
                         "weights were modified or belong to another run; restore the original files")
    try:
        state = torch.load(weights, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{weights} is not a plain tensor state_dict and was not loaded (nothing in it was "
                         f"executed): {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{weights} is not a state_dict of tensors")
    stored = state.pop(CARD_KEY, None)
    if stored is None:
        warnings.warn(f"{folder / CARD} predates card protection (no card hash in the weights): edits to it cannot "
                      "be detected; save the twin again to protect it", UserWarning, stacklevel=2)
    elif bytes(stored.to(torch.uint8).tolist()).hex() != _card_digest(card):
        raise ValueError(f"{folder / CARD} was edited after the twin was saved (its sha256 does not match the one "
                         "recorded in the weights): preprocessing, cohorts or architecture may no longer match "
                         "the weights; restore the original card")
    try:
        with torch.device("meta"):  # shapes only: a card asking for a huge network allocates nothing
            skeleton = HybridTwin.from_card(card["twin"]).state_dict()
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{folder / CARD} does not describe a valid twin: {exc}") from None
    missing, unexpected = sorted(set(skeleton) - set(state)), sorted(set(state) - set(skeleton))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs card {tuple(skeleton[k].shape)}"
             for k in skeleton if k in state and state[k].shape != skeleton[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{weights} does not fit the architecture in {CARD}: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, shape mismatches {wrong[:5]}; the card and the weights come from "
                         "different runs")
    twin = HybridTwin.from_card(card["twin"])
    twin.load_state_dict(state, strict=True)
    return twin.eval()
