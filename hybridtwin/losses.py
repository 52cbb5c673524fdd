"""Densities and divergences of the twin's Gaussian pieces, written once on ``torch.distributions``.

The population prior ``N(mu + beta x, diag(omega^2))``, the encoder's posterior ``q(z) = N(m, diag(s^2))`` and
the proposals of importance sampling are all independent normals over the patient parameters; everything
that needs their log densities or the KL divergence between them (the ELBO, MAP, importance sampling,
variational updates, SAEM) calls these functions.

>>> import torch
>>> z = torch.zeros(2, 3)
>>> round(float(normal_log_prob(z, z, torch.ones(2, 3))[0]), 4)  # 3 standard normals at 0
-2.7568
>>> float(normal_kl(z, torch.ones(2, 3), z, torch.ones(2, 3)).abs().max())
0.0
"""

from __future__ import annotations

import torch
from torch.distributions import Independent, Normal, kl_divergence


def diagonal_normal(mean: torch.Tensor, sd: torch.Tensor) -> Independent:
    """Independent normals over the last dimension (a batch of diagonal Gaussians)."""
    return Independent(Normal(mean, sd, validate_args=False), 1)


def normal_log_prob(z: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """``log N(z; mean, diag(sd^2))`` summed over the last dimension (full normalising constant)."""
    return diagonal_normal(mean, sd).log_prob(z)


def normal_kl(mean: torch.Tensor, sd: torch.Tensor, prior_mean: torch.Tensor, prior_sd: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, sd^2) || N(prior_mean, prior_sd^2))`` summed over the last dimension."""
    return kl_divergence(diagonal_normal(mean, sd), diagonal_normal(prior_mean, prior_sd))
