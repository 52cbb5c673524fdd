"""Neural closures: learned terms inside a mechanistic ODE (universal differential equations).

A :class:`NeuralClosure` reads named inputs (states, parameters, ``"t"``) and either

- **adds** a term to the derivative of a state (``target="S"``, ``mode="add"``), or
- **replaces** a parameter by a learned function of the inputs (``target="beta_S"``, ``mode="replace"``:
  ``parameter * exp(net(inputs))``, so the replaced term keeps its sign and scale).

Every closure is initialised so that the hybrid model starts *exactly* as the mechanistic one: an added term
is gated by an amplitude that starts at 0 (clamped to its range in the forward pass, straight-through gradient), a
replacement starts at ``exp(0) = 1`` times the parameter.
A replacement's multiplier is ``exp(net)`` with the net clamped to +-20 (``"signed"``, the default: up to e^20 times
the parameter, which can make the ODE stiff as training moves the net) or, with ``constraint="bounded"``,
``exp(u)`` with ``u`` confined to ``bounds`` (which must contain 0: ``u = low + (high - low) * sigmoid(net + s0)``,
``s0`` chosen so a zero net gives u = 0), e.g. ``bounds=(-2.3, 2.3)`` keeps the rate within 0.1-10 times its
mechanistic value.
Output constraints for added terms: ``"nonnegative"`` (``amplitude * softplus``, amplitude clamped >= 0),
``"bounded"`` (``amplitude * (low + (high - low) * sigmoid)``, amplitude clamped to [0, 1]) or ``"signed"``
(linear). :meth:`NeuralClosure.penalty` (L1 on the amplitude + L2 on the weights) keeps a closure small
unless the data need it.

Inputs are transformed before the network: ``log10(x + 1)`` for inputs listed in ``log_inputs`` (states
spanning orders of magnitude), otherwise ``x / input_scale``.

Example
-------
>>> import torch
>>> from hybridtwin.neural import NeuralClosure
>>> c = NeuralClosure("S", inputs=["M", "Ag"], constraint="nonnegative", scale=100.0)
>>> c.value({"M": torch.ones(4), "Ag": torch.zeros(4)}).abs().max().item()   # exactly 0 at start
0.0
"""

from __future__ import annotations

import math

from typing import Mapping, Sequence

import torch
from torch import nn

from .mlp import MLP

CONSTRAINTS = ("nonnegative", "bounded", "signed")
MODES = ("add", "replace")


def _through(a: torch.Tensor, low: float, high: float | None) -> torch.Tensor:
    """``a`` clamped to [low, high] in the forward pass, with the identity's gradient (straight-through), so an
    amplitude pushed past its bound can come back when the data ask for the term again."""
    return a + (torch.clamp(a, min=low, max=high) - a).detach()


class NeuralClosure(nn.Module):
    """A learned term; see the module docstring.

    target: state (mode ``"add"``) or parameter (mode ``"replace"``) name.
    inputs: names of states, parameters or ``"t"`` fed to the network.
    constraint: for added terms, ``"nonnegative"``, ``"bounded"`` (with ``bounds``) or ``"signed"``.
    scale: output scale of an added term (in the target's derivative units).
    """

    def __init__(self, target: str, inputs: Sequence[str], mode: str = "add", constraint: str = "signed",
                 scale: float = 1.0, bounds: tuple[float, float] = (-1.0, 1.0), hidden: Sequence[int] = (32, 32),
                 log_inputs: Sequence[str] = (), input_scale: Mapping[str, float] | None = None,
                 activation: str = "tanh", name: str | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"closure mode must be one of {MODES}, got {mode!r}")
        if constraint not in CONSTRAINTS:
            raise ValueError(f"closure constraint must be one of {CONSTRAINTS}, got {constraint!r}")
        if not inputs:
            raise ValueError("a closure needs at least one input name")
        if constraint == "bounded" and not bounds[0] < bounds[1]:
            raise ValueError(f"bounded closure needs low < high, got {bounds}")
        if mode == "replace" and constraint == "nonnegative":
            raise ValueError("a replacing closure multiplies its parameter by exp(net), which is positive already: "
                             "use constraint 'signed' (net clamped to +-20) or 'bounded' (log-multiplier in bounds)")
        if mode == "replace" and constraint == "bounded" and not bounds[0] < 0.0 < bounds[1]:
            raise ValueError(f"a bounded replacing closure bounds the log of its multiplier, which starts at 0: "
                             f"bounds must contain 0 strictly inside, got {tuple(bounds)}")
        if not scale > 0:
            raise ValueError(f"closure scale must be > 0, got {scale}")
        self.target, self.inputs, self.mode, self.constraint = target, list(inputs), mode, constraint
        self.scale, self.bounds = float(scale), (float(bounds[0]), float(bounds[1]))
        self.log_inputs = [i for i in log_inputs]
        self.input_scale = {k: float(v) for k, v in (input_scale or {}).items()}
        unknown = [i for i in self.log_inputs + list(self.input_scale) if i not in self.inputs]
        if unknown:
            raise ValueError(f"log_inputs/input_scale name non-inputs {unknown}; inputs are {self.inputs}")
        self.name = name or f"{mode}_{target}"
        zero_last = mode == "replace" or constraint == "signed"
        self.net = MLP(len(self.inputs), 1, hidden, activation, zero_last=zero_last)
        self.amplitude = nn.Parameter(torch.zeros(())) if (mode == "add" and constraint != "signed") else None

    def config(self) -> dict:
        """Plain description (for model cards)."""
        return dict(target=self.target, inputs=self.inputs, mode=self.mode, constraint=self.constraint, scale=self.scale,
                    bounds=list(self.bounds), hidden=[m.out_features for m in self.net.net if isinstance(m, nn.Linear)][:-1],
                    log_inputs=self.log_inputs, input_scale=self.input_scale, name=self.name)

    def features(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        cols = []
        for k in self.inputs:
            x = values[k]
            if k in self.log_inputs:
                x = torch.log10(torch.clamp(x, min=0.0) + 1.0)
            else:
                x = x / self.input_scale.get(k, 1.0)
            cols.append(x)
        return torch.stack(cols, dim=-1)

    def value(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The closure's output for a batch (shape (B,)): the added term, or the multiplier of a replaced parameter."""
        feats = self.features(values)
        w = self.net.net[0].weight
        raw = self.net(feats.to(w.dtype)).squeeze(-1).to(feats.dtype)
        if self.mode == "replace":
            if self.constraint == "bounded":  # log-multiplier in (low, high), 0 at a zero net
                low, high = self.bounds
                s0 = math.log(high / -low)
                return torch.exp(low + (high - low) * torch.sigmoid(raw - s0))
            return torch.exp(torch.clamp(raw, -20.0, 20.0))
        if self.constraint == "signed":
            return self.scale * raw
        if self.constraint == "nonnegative":
            return self.scale * _through(self.amplitude, 0.0, None).to(raw.dtype) * nn.functional.softplus(raw)
        low, high = self.bounds
        return self.scale * _through(self.amplitude, 0.0, 1.0).to(raw.dtype) * (low + (high - low) * torch.sigmoid(raw))

    def penalty(self) -> torch.Tensor:
        """L1 on the amplitude (if any) + L2 on the weights: small unless the data need it."""
        l2 = sum((p**2).sum() for n, p in self.net.named_parameters() if n.endswith("weight"))
        l1 = self.amplitude.abs() if self.amplitude is not None else 0.0
        return l1 + 1e-3 * l2
