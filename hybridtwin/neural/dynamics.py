"""Trainable dynamics: a mechanistic model with neural closures, or a black-box neural ODE.

Both expose what the solver and the twin need: ``model`` (names, parameter space, initial state,
observables), ``vector_field(t, y, theta)``, ``bind(theta)`` and ``penalty()``.

Example
-------
>>> import torch, hybridtwin as ht
>>> from hybridtwin.neural import MechanisticDynamics, NeuralClosure
>>> dyn = MechanisticDynamics("vaccine_asc", [NeuralClosure("S", ["M", "Ag"], constraint="nonnegative", scale=1e3)])
>>> m = dyn.model; theta = m.parameter_space.default_tensor(2); y = torch.rand(2, 5, dtype=torch.float64)
>>> bool(torch.equal(dyn.vector_field(torch.zeros(2), y, theta), m.vector_field(torch.zeros(2), y, theta)))
True
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import models as _models
from ..models.base import Model
from ..parameters import Parameter
from .closure import NeuralClosure
from .mlp import MLP


class MechanisticDynamics(nn.Module):
    """A mechanistic :class:`Model` plus neural closures (validated against the model's names)."""

    def __init__(self, model: str | Model, closures: Sequence[NeuralClosure] = ()):
        super().__init__()
        self.model = _models.get(model)
        self.closures = nn.ModuleList(closures)
        names = set(self.model.all_state_names) | set(self.model.parameter_names) | {"t"}
        for c in self.closures:
            unknown = [i for i in c.inputs if i not in names]
            if unknown:
                raise ValueError(f"closure {c.name!r} reads unknown input(s) {unknown}; states, parameters and 't' are allowed")
            if c.mode == "add" and c.target not in self.model.all_state_names:
                raise ValueError(f"closure {c.name!r} adds to {c.target!r}, which is not a state of {self.model.name!r}")
            if c.mode == "replace" and c.target not in self.model.parameter_names:
                raise ValueError(f"closure {c.name!r} replaces {c.target!r}, which is not a parameter of {self.model.name!r}")
        self._state_index = {s: i for i, s in enumerate(self.model.all_state_names)}
        self._param_index = {p: i for i, p in enumerate(self.model.parameter_names)}

    def _inputs(self, t, y, theta) -> dict:
        values = dict(zip(self.model.all_state_names, y.unbind(-1)))
        values.update(zip(self.model.parameter_names, theta.unbind(-1)))
        values["t"] = t.expand(y.shape[0]) if t.dim() == 0 else t
        return values

    def vector_field(self, t: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        if not len(self.closures):
            return self.model.vector_field(t, y, theta)
        values = self._inputs(t, y, theta)
        cols = list(theta.unbind(-1))
        for c in self.closures:
            if c.mode == "replace":
                i = self._param_index[c.target]
                cols[i] = cols[i] * c.value(values)
        theta_eff = torch.stack(cols, dim=-1)
        d = self.model.vector_field(t, y, theta_eff)
        adds = [c for c in self.closures if c.mode == "add"]
        if not adds:
            return d
        dcols = list(d.unbind(-1))
        for c in adds:
            i = self._state_index[c.target]
            dcols[i] = dcols[i] + c.value(values)
        return torch.stack(dcols, dim=-1)

    def bind(self, theta: torch.Tensor):
        if not len(self.closures):
            return self.model.bind(theta)
        return lambda t, y: self.vector_field(t, y, theta)

    def penalty(self) -> torch.Tensor:
        return sum((c.penalty() for c in self.closures), torch.zeros(()))

    def config(self) -> dict:
        return {"kind": "mechanistic", "model": self.model.name, "closures": [c.config() for c in self.closures]}


class NeuralODEDynamics(nn.Module):
    """Black-box baseline: a generic production-loss neural ODE on the states of ``model``,
    ``dy_s/dt = scale_s * softplus(a_s) - softplus(b_s) * y_s`` with ``(a, b) = net(log10(|y| + 1), z)``.

    No mechanism: only the state names, the observables, the initial state and the dose targets are
    borrowed from ``model``; the production-loss form only keeps non-negative states non-negative (immune
    quantities are amounts). ``z`` is a per-patient latent vector of ``latent_dim`` entries (identity
    transform, role "patient") that the twin's encoder personalises like mechanistic parameters.
    ``state_scale`` gives each state's typical magnitude (production is ``state_scale * softplus(...)`` per
    time unit).
    """

    def __init__(self, model: str | Model, latent_dim: int = 4, hidden: Sequence[int] = (64, 64),
                 state_scale: dict | None = None, activation: str = "tanh"):
        super().__init__()
        base = _models.get(model)
        self.base_name = base.name
        self.latent_dim = latent_dim
        states = base.all_state_names
        scale = dict(state_scale or {})
        unknown = [k for k in scale if k not in states]
        if unknown:
            raise ValueError(f"state_scale names unknown state(s) {unknown}")
        self.register_buffer("scale", torch.tensor([float(scale.get(s, 1.0)) for s in states], dtype=torch.float64))
        self.net = MLP(len(states) + latent_dim, 2 * len(states), hidden, activation)
        with torch.no_grad():  # start with little production (softplus(-5) ~ 0.007) and ~unit loss rates
            self.net.net[-1].bias[: len(states)].fill_(-5.0)
        init_params = sorted({v for v in base.initial.values() if isinstance(v, str)})
        params = [Parameter(f"z{i}", 0.0, -10.0, 10.0, transform="identity", role="patient",
                            description="black-box latent") for i in range(latent_dim)]
        params += [Parameter(p.name, p.default, p.lower, p.upper, p.transform, p.unit, "fixed", p.description)
                   for p in base.parameter_space if p.name in init_params]
        net, names = self.net, states
        sc = self.scale

        def rhs(t, s, p):
            y = torch.stack([s[n] for n in names], dim=-1)
            z = torch.stack([p[f"z{i}"] for i in range(latent_dim)], dim=-1)
            feats = torch.cat([torch.log10(y.abs() + 1.0), z], dim=-1)
            out = net(feats.to(net.net[0].weight.dtype)).to(y.dtype)
            a, b = out[..., : len(names)], out[..., len(names):]
            dy = sc.to(y.dtype) * nn.functional.softplus(a) - nn.functional.softplus(b) * y
            return dict(zip(names, dy.unbind(-1)))

        self.model = Model(f"neural_ode[{base.name}]", base.state_names, params, rhs,
                           {s: base.initial[s] for s in base.state_names}, observables=base.observables,
                           compartments=base.compartment_names,
                           interventions=[iv for k, iv in base.interventions.items() if k != iv.target],
                           time_unit=base.time_unit, description=f"black-box neural ODE on the states of {base.name}",
                           default_t_end=base.default_t_end)

    def vector_field(self, t, y, theta):
        return self.model.vector_field(t, y, theta)

    def bind(self, theta):
        return self.model.bind(theta)

    def penalty(self) -> torch.Tensor:
        return 1e-4 * sum((p**2).sum() for n, p in self.net.named_parameters() if n.endswith("weight"))

    def config(self) -> dict:
        return {"kind": "neural_ode", "model": self.base_name, "latent_dim": self.latent_dim,
                "hidden": [m.out_features for m in self.net.net if isinstance(m, nn.Linear)][:-1],
                "state_scale": dict(zip(self.model.all_state_names, self.scale.tolist()))}
