"""Small multilayer perceptrons used by closures, encoders and black-box dynamics.

>>> import torch
>>> from hybridtwin.neural import MLP
>>> net = MLP(3, 2, hidden=(16, 16), zero_last=True)
>>> net(torch.randn(5, 3)).abs().max().item()
0.0
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "gelu": nn.GELU, "relu": nn.ReLU, "softplus": nn.Softplus, "silu": nn.SiLU}


class MLP(nn.Module):
    """Fully connected network ``in_dim -> hidden... -> out_dim``.

    zero_last: initialise the last layer to zero (the network then outputs exactly 0 at start).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (32, 32), activation: str = "tanh",
                 zero_last: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if in_dim < 0 or out_dim < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"bad MLP sizes: in {in_dim}, hidden {tuple(hidden)}, out {out_dim}")
        dims = [in_dim, *hidden, out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        if zero_last:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
