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
        self._pair(n_patient, n_scenario, n_out, max(n_scenario, 1), n_out, rank, hidden, members, activation)

    def _pair(self, n_patient, n_scenario, n_out, n_trunk_in, n_coef, rank, hidden, members, activation) -> None:
        """The branch (patient -> rank) and trunk (``n_trunk_in`` -> rank x ``n_coef`` coefficients + ``n_coef``
        biases) networks and the attributes both architectures share."""
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        self.n_patient, self.n_scenario, self.n_out, self.rank = n_patient, n_scenario, n_out, rank
        self.n_in, self.members, self.hidden, self.activation = n_patient + n_scenario, members, list(hidden), activation
        self.branch = EnsembleMLP(n_patient, rank, hidden, members, activation)
        self.trunk = EnsembleMLP(n_trunk_in, rank * n_coef + n_coef, hidden, members, activation)
        with torch.no_grad():  # start with small patient-scenario products (the bias c carries the mean)
            self.trunk.weight[-1][..., : rank * n_coef].mul_(1.0 / math.sqrt(rank))

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


class TimedEnsemble(SeparableEnsemble):
    """A low-rank emulator whose scenario network also reads the output time: ``y(p, s, t) = sum_r a_r(p)
    B_r(s, t) + c(s, t)``, the trunk evaluated at every output time ``t`` with the time and, per dose, the time
    since that dose as inputs (a DeepONet whose trunk spans scenario x time).

    Why: a booster makes the response kink at the booster's day, a day that moves with the scenario. An output
    grid emitted at once (:class:`EnsembleMLP`, :class:`SeparableEnsemble`) must learn that kink anew for every
    grid time; here it is a feature (``max(t - dose time, 0)``, its log and an indicator), shared across times.
    On the surrogate benchmark's domain at 2,000 training simulations this cut the held-out 95th percentile
    error several-fold (``experiments/bench_surrogate_equal_data.py``); pairs cost what they cost in
    :class:`SeparableEnsemble` (the rank-``rank`` contraction), the trunk running once per (scenario, time).

    times: (T,) output times. doses: one entry per dose of the scenario space, its time either a number (fixed)
    or ``(factor index, low, high)`` (a scenario factor, in the inputs' [-1, 1] scale). ``n_out`` (the
    contraction's size, as in :class:`SeparableEnsemble`) is ``n_outputs * T``, ordered output-major.

    >>> import torch
    >>> net = TimedEnsemble(2, 1, 1, times=[10.0, 20.0, 30.0], doses=[0.0, (0, 5.0, 25.0)], rank=3, hidden=(8,),
    ...                     members=2)
    >>> a, b = torch.rand(6, 2), torch.rand(7, 1)
    >>> pairs = torch.cat([a[:, None].expand(6, 7, 2), b[None].expand(6, 7, 1)], -1).reshape(42, 3)
    >>> net(pairs).shape
    torch.Size([2, 42, 3])
    >>> bool(torch.allclose(net.product(a, b), net(pairs), atol=1e-5))
    True
    """

    def __init__(self, n_patient: int, n_scenario: int, n_outputs: int, times: Sequence[float], doses: Sequence,
                 rank: int = 32, hidden: Sequence[int] = (128, 128, 128), members: int = 5, activation: str = "silu"):
        nn.Module.__init__(self)
        times = torch.as_tensor([float(t) for t in times], dtype=torch.float32)
        if times.numel() == 0:
            raise ValueError("times must not be empty")
        fixed, factor, lo, hi = [], [], [], []
        for i, d in enumerate(doses):
            if isinstance(d, (tuple, list)):
                k, a, b = d
                if not 0 <= int(k) < n_scenario or not float(a) < float(b):
                    raise ValueError(f"doses[{i}]: a factor dose time needs (factor index < {n_scenario}, low < high), "
                                     f"got {d!r}")
                fixed.append(0.0), factor.append(int(k)), lo.append(float(a)), hi.append(float(b))
            else:
                fixed.append(float(d)), factor.append(-1), lo.append(0.0), hi.append(0.0)
        self._pair(n_patient, n_scenario, n_outputs * len(times), n_scenario + 1 + 3 * len(fixed), n_outputs, rank,
                   hidden, members, activation)
        self.n_outputs = n_outputs
        #: whether any dose time is a scenario factor (fixed once: no device query per call)
        self.factor_doses = any(k >= 0 for k in factor)
        self.register_buffer("times", times)
        self.register_buffer("dose_fixed", torch.tensor(fixed, dtype=torch.float32))
        self.register_buffer("dose_factor", torch.tensor(factor, dtype=torch.long))
        self.register_buffer("dose_lo", torch.tensor(lo, dtype=torch.float32))
        self.register_buffer("dose_hi", torch.tensor(hi, dtype=torch.float32))
        latest = max([float(times.max()), *[h for h in hi], *fixed])
        self.span = max(latest - min(0.0, float(times.min())), 1e-6)

    def time_features(self, s: torch.Tensor) -> torch.Tensor:
        """(Ns, T, 1 + 3 D) trunk features of the output times for scenarios ``s`` (Ns, F) in [-1, 1]: the time,
        and per dose the time since it, its log and whether it was given, each scaled to about [-1, 1]."""
        n, T = s.shape[0], self.times.numel()
        if self.factor_doses:
            u = (s + 1) / 2
            given = self.dose_lo + u[:, self.dose_factor.clamp(min=0)] * (self.dose_hi - self.dose_lo)
            when = torch.where(self.dose_factor >= 0, given, self.dose_fixed)  # (Ns, D)
        else:
            when = self.dose_fixed.to(s.dtype).expand(n, -1)
        tau = (self.times / self.span).to(s.dtype)[None, :, None].expand(n, T, 1)
        since = (self.times[None, :, None] - when[:, None, :]).clamp(min=0) / self.span  # (Ns, T, D)
        logged = torch.log1p(since * self.span) / math.log1p(self.span)
        return torch.cat([tau, since, logged, (since > 0).to(s.dtype)], -1) * 2 - 1

    def _trunk(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, T, R, O = s.shape[0], self.times.numel(), self.rank, self.n_outputs
        x = torch.cat([s[:, None, :].expand(n, T, s.shape[1]), self.time_features(s)], -1).reshape(n * T, -1)
        t = self.trunk(x).reshape(self.members, n, T, R * O + O)
        B = t[..., : R * O].reshape(self.members, n, T, R, O).permute(0, 1, 3, 4, 2).reshape(self.members, n, R, O * T)
        c = t[..., R * O:].permute(0, 1, 3, 2).reshape(self.members, n, O * T)
        return B, c
