"""The patient encoder: covariates + any number of early observations + dosing history + cohort -> a
correction to the population distribution of a patient's (unconstrained) parameters.

Observations and doses are sets of irregular events, so each goes through a Deep-Sets encoder (a shared MLP
per event, masked mean pooling, plus log(1 + count)); padding never enters. The head starts at exactly zero,
so an untrained twin predicts the population prior.

Example
-------
>>> import torch
>>> from hybridtwin.neural import PatientEncoder
>>> enc = PatientEncoder(n_covariates=3, n_params=2, n_observables=1, n_cohorts=2, n_targets=5)
>>> B, T, K = 4, 6, 2
>>> dm, dls = enc(torch.randn(B, 3), torch.rand(B, T), torch.randn(B, T), torch.zeros(B, T, dtype=torch.long),
...               torch.zeros(B, T, dtype=torch.bool), torch.ones(B, T, dtype=torch.bool),
...               torch.rand(B, K), torch.rand(B, K), torch.zeros(B, K, dtype=torch.long), torch.ones(B, K, dtype=torch.bool),
...               torch.zeros(B, dtype=torch.long))
>>> tuple(dm.shape), float(dm.detach().abs().max())
((4, 2), 0.0)
"""

from __future__ import annotations

import torch
from torch import nn

from .mlp import MLP


def _pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(h.dtype)[..., None]
    count = m.sum(dim=1)
    mean = (h * m).sum(dim=1) / count.clamp(min=1.0)
    return torch.cat([mean, torch.log1p(count)], dim=-1)


class PatientEncoder(nn.Module):
    """Deep-Sets encoder; ``forward`` returns (mean shift, log-sd shift) of the patient parameters (B, P)."""

    def __init__(self, n_covariates: int, n_params: int, n_observables: int, n_cohorts: int, n_targets: int,
                 hidden: int = 64, set_dim: int = 32, use_observations: bool = True, use_doses: bool = True,
                 use_cohort: bool = True):
        super().__init__()
        self.n_observables, self.n_cohorts, self.n_targets = n_observables, n_cohorts, n_targets
        self.use_observations, self.use_doses, self.use_cohort = use_observations, use_doses, use_cohort
        self.obs_net = MLP(3 + n_observables, set_dim, (hidden,)) if use_observations else None
        self.dose_net = MLP(2 + n_targets, set_dim, (hidden,)) if use_doses else None
        width = n_covariates + (set_dim + 1) * (use_observations + use_doses) + (n_cohorts if use_cohort else 0)
        self.width = width
        self.head = MLP(max(width, 1), 2 * n_params, (hidden, hidden), activation="gelu", zero_last=True)
        self.n_params = n_params

    def config(self) -> dict:
        return dict(n_params=self.n_params, n_observables=self.n_observables, n_cohorts=self.n_cohorts,
                    n_targets=self.n_targets, use_observations=self.use_observations, use_doses=self.use_doses,
                    use_cohort=self.use_cohort)

    def forward(self, covariates, obs_time, obs_value, obs_observable, obs_censored, obs_mask,
                dose_time, dose_amount, dose_target, dose_mask, cohort):
        """All times are pre-scaled (e.g. divided by the model's horizon); values standardised per observable."""
        parts = [covariates]
        if self.use_observations:
            onehot = nn.functional.one_hot(obs_observable, self.n_observables).to(obs_value.dtype)
            ev = torch.cat([obs_time[..., None], torch.where(obs_mask, obs_value, 0.0)[..., None],
                            obs_censored.to(obs_value.dtype)[..., None], onehot], dim=-1)
            parts.append(_pool(self.obs_net(ev), obs_mask))
        if self.use_doses:
            onehot = nn.functional.one_hot(dose_target, self.n_targets).to(dose_amount.dtype)
            t = torch.where(dose_mask, dose_time, 0.0)
            ev = torch.cat([t[..., None], torch.log1p(torch.where(dose_mask, dose_amount, 0.0))[..., None], onehot], dim=-1)
            parts.append(_pool(self.dose_net(ev), dose_mask))
        if self.use_cohort:
            parts.append(nn.functional.one_hot(cohort, self.n_cohorts).to(covariates.dtype))
        x = torch.cat(parts, dim=-1) if self.width else torch.zeros(covariates.shape[0], 1, dtype=covariates.dtype)
        out = self.head(x)
        return out[:, : self.n_params], out[:, self.n_params :]
