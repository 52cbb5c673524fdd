"""A deep ensemble of MLPs evaluated as one batched network (all members in the same matrix products).

Each layer holds the weights of every member, shape (members, in, out); a forward pass is one batched
matrix product per layer (``torch.baddbmm``), so an ensemble of 5 costs about as much to run as one MLP five
times wider. The first layer can be split between patient and scenario inputs (:meth:`EnsembleMLP.product`):
for a population x scenarios sweep the patient and scenario parts are computed once each and added, instead
of once per pair.

>>> import torch
>>> from hybridtwin.surrogate.network import EnsembleMLP
>>> net = EnsembleMLP(3, 4, hidden=(8,), members=2)
>>> net(torch.zeros(5, 3)).shape
torch.Size([2, 5, 4])
>>> a, b = torch.rand(6, 2), torch.rand(7, 1)
>>> pairs = torch.cat([a[:, None].expand(6, 7, 2), b[None].expand(6, 7, 1)], -1).reshape(42, 3)
>>> bool(torch.allclose(net.product(a, b).reshape(2, 42, 4), net(pairs), atol=1e-6))
True
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

ACTIVATIONS = {"silu": nn.functional.silu, "tanh": torch.tanh, "gelu": nn.functional.gelu, "relu": torch.relu}


class EnsembleMLP(nn.Module):
    """``members`` MLPs with layer sizes ``(n_in, *hidden, n_out)``; inputs (N, n_in) or (members, N, n_in),
    outputs (members, N, n_out)."""

    def __init__(self, n_in: int, n_out: int, hidden: Sequence[int] = (256, 256, 256), members: int = 5,
                 activation: str = "silu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        for name, v in (("n_in", n_in), ("n_out", n_out), ("members", members)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        hidden = [int(h) for h in hidden]
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be positive, got {hidden}")
        self.n_in, self.n_out, self.members, self.hidden, self.activation = n_in, n_out, members, hidden, activation
        dims = [n_in, *hidden, n_out]
        self.weight = nn.ParameterList()
        self.bias = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(d_in)
            self.weight.append(nn.Parameter(torch.empty(members, d_in, d_out).uniform_(-bound, bound)))
            self.bias.append(nn.Parameter(torch.empty(members, 1, d_out).uniform_(-bound, bound)))

    def _rest(self, h: torch.Tensor) -> torch.Tensor:
        act = ACTIVATIONS[self.activation]
        for layer in range(1, len(self.weight)):
            h = torch.baddbmm(self.bias[layer], act(h), self.weight[layer])
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.expand(self.members, *x.shape)
        return self._rest(torch.baddbmm(self.bias[0], x, self.weight[0]))

    def product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Outputs for every pair (a_i, b_j) of inputs split as ``[a, b]`` (a: (Na, k), b: (Nb, n_in - k)):
        (members, Na * Nb, n_out), pair (i, j) at row ``i * Nb + j``."""
        k = a.shape[1]
        w = self.weight[0]
        ha = torch.matmul(a, w[:, :k])  # (M, Na, H)
        hb = torch.matmul(b, w[:, k:]) + self.bias[0]  # (M, Nb, H)
        h = (ha[:, :, None] + hb[:, None]).reshape(self.members, a.shape[0] * b.shape[0], -1)
        return self._rest(h)


class SeparableEnsemble(nn.Module):
    """A low-rank emulator ``y(p, s) = sum_r a_r(p) B_r(s) + c(s)`` (a DeepONet-style branch/trunk split between
    patient inputs ``p`` and scenario inputs ``s``): ``a`` from a patient network, ``B`` and ``c`` from a
    scenario network, every member of the ensemble its own pair. For a population x scenarios sweep each
    network runs once per patient or per scenario and each pair costs only the rank-``rank`` contraction.

    n_patient, n_scenario: input sizes (``n_scenario`` may be 0: the scenario network then reads a constant).
    Inputs and outputs as :class:`EnsembleMLP` (inputs ``[p, s]``).

    >>> import torch
    >>> net = SeparableEnsemble(2, 1, 4, rank=3, hidden=(8,), members=2)
    >>> a, b = torch.rand(6, 2), torch.rand(7, 1)
    >>> pairs = torch.cat([a[:, None].expand(6, 7, 2), b[None].expand(6, 7, 1)], -1).reshape(42, 3)
    >>> bool(torch.allclose(net.product(a, b), net(pairs), atol=1e-5))
    True
    >>> bool(torch.allclose(net.product_mean(a, b), net.product(a, b).mean(0), atol=1e-5))
    True
    """

    def __init__(self, n_patient: int, n_scenario: int, n_out: int, rank: int = 32, hidden: Sequence[int] = (128, 128),
                 members: int = 5, activation: str = "silu"):
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        self.n_patient, self.n_scenario, self.n_out, self.rank = n_patient, n_scenario, n_out, rank
        self.n_in, self.members, self.hidden, self.activation = n_patient + n_scenario, members, list(hidden), activation
        self.branch = EnsembleMLP(n_patient, rank, hidden, members, activation)
        self.trunk = EnsembleMLP(max(n_scenario, 1), rank * n_out + n_out, hidden, members, activation)
        with torch.no_grad():  # start with small patient-scenario products (the bias c carries the mean)
            self.trunk.weight[-1][..., : rank * n_out].mul_(1.0 / math.sqrt(rank))

    def _trunk(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n_scenario == 0:
            s = torch.zeros(s.shape[0], 1, dtype=s.dtype, device=s.device)
        t = self.trunk(s)  # (M, Ns, R*O + O)
        R, O = self.rank, self.n_out
        return t[..., : R * O].reshape(*t.shape[:2], R, O), t[..., R * O:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, s = x[..., : self.n_patient], x[..., self.n_patient:]
        a = self.branch(p)  # (M, N, R)
        B, c = self._trunk(s if s.dim() == 2 else s[0])
        return torch.einsum("mnr,mnro->mno", a, B) + c

    def product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        A = self.branch(a)  # (M, Na, R)
        B, c = self._trunk(b)  # (M, Nb, R, O), (M, Nb, O)
        y = torch.einsum("mir,mjro->mijo", A, B) + c[:, None]
        return y.reshape(self.members, a.shape[0] * b.shape[0], self.n_out)

    def product_mean(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The ensemble mean of :meth:`product` without the members' outputs: the members are stacked along
        the rank (``mean_m sum_r a_mr B_mr = sum_(m,r) a_mr B_mr / M``), so one matrix product gives every pair:
        (Na * Nb, n_out)."""
        A = self.branch(a)  # (M, Na, R)
        B, c = self._trunk(b)  # (M, Nb, R, O), (M, Nb, O)
        M, Na, R = A.shape
        Nb, O = B.shape[1], B.shape[3]
        A2 = A.permute(1, 0, 2).reshape(Na, M * R)
        B2 = B.permute(0, 2, 1, 3).reshape(M * R, Nb * O)
        y = (A2 @ B2).reshape(Na, Nb, O) / M + c.mean(0)[None]
        return y.reshape(Na * Nb, O)
