"""The Gaussian pieces written once: closed forms against independent formulas and Monte Carlo."""

import math

import torch

from hybridtwin.losses import normal_kl, normal_log_prob


def test_log_prob_and_kl_match_closed_forms_and_monte_carlo():
    g = torch.Generator().manual_seed(0)
    m, s = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.rand(4, 3, generator=g, dtype=torch.float64) + 0.2
    pm, ps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.rand(4, 3, generator=g, dtype=torch.float64) + 0.5
    z = torch.randn(4, 3, generator=g, dtype=torch.float64)
    by_hand = (-0.5 * ((z - m) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(normal_log_prob(z, m, s), by_hand)
    kl = normal_kl(m, s, pm, ps)
    closed = (torch.log(ps / s) + (s**2 + (m - pm) ** 2) / (2 * ps**2) - 0.5).sum(-1)
    torch.testing.assert_close(kl, closed)
    draws = m + s * torch.randn(200000, 4, 3, generator=g, dtype=torch.float64)
    mc = (normal_log_prob(draws, m, s) - normal_log_prob(draws, pm, ps)).mean(0)
    assert float((mc - kl).abs().max()) < 0.02
