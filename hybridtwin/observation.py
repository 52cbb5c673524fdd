"""Observation model: states -> observables, per-cohort assay calibration, noise, censoring (M3).

For an observation row of observable ``k`` of a subject in cohort ``c``, the prediction is
``mu = scale[c, k] * g_k(states) + offset[c, k]`` where ``g_k`` is the model's observable (e.g. log10 V),
and the measurement is ``y ~ Normal(mu, sd)`` with ``sd`` from the noise model of ``k``:

- ``"additive"``: ``sd = sigma_a`` (on the observable's scale; additive on log10 for log10 observables),
- ``"proportional"``: ``sd = sigma_p * |mu|``,
- ``"combined"``: ``sd = sqrt(sigma_a^2 + sigma_p^2 mu^2)``.

A censored row (value known only to be below ``lloq``) contributes ``log P(y < lloq) = log Phi((lloq - mu)/sd)``
-- Beal's M3 likelihood -- never a squared error against an imputed value. Padding rows contribute nothing.

Example
-------
>>> import torch
>>> from hybridtwin.observation import ObservationModel
>>> om = ObservationModel(["log10_V"], noise={"log10_V": "additive"}, n_cohorts=1)
>>> mu = torch.tensor([[2.0, 1.0]]); y = torch.tensor([[2.5, 0.5]])
>>> ll = om.log_likelihood(mu, y, observable=torch.zeros(1, 2, dtype=torch.long), cohort=torch.zeros(1, dtype=torch.long),
...                        censored=torch.tensor([[False, True]]), lloq=torch.tensor([[0.5, 0.5]]),
...                        mask=torch.ones(1, 2, dtype=torch.bool))
>>> tuple(ll.shape)
(1, 2)
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

NOISE_MODELS = ("additive", "proportional", "combined")
CALIBRATIONS = ("scale_offset", "offset", "scale")
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class ObservationModel(nn.Module):
    """Noise and assay calibration of a set of observables (learned parameters, per observable/cohort).

    observables: names, in the index order used by batches.
    noise: ``{observable: "additive" | "proportional" | "combined"}`` (default additive).
    sigma: initial noise scale(s) ``{observable: value}`` (default 0.5 additive, 0.2 proportional).
    n_cohorts: number of cohorts; ``cohort_calibration`` lists observables whose scale/offset are learned per
        cohort (cohort 0 is the reference and stays at scale 1, offset 0, so the model remains identifiable).
    calibration: which terms of the calibration are learned: ``"scale_offset"`` (default), ``"offset"`` (an
        additive assay shift only, e.g. a log10 offset between laboratories) or ``"scale"``.
    """

    def __init__(self, observables: Sequence[str], noise: Mapping[str, str] | None = None,
                 sigma: Mapping[str, float] | None = None, n_cohorts: int = 1,
                 cohort_calibration: Sequence[str] = (), learn_noise: bool = True, calibration: str = "scale_offset"):
        super().__init__()
        self.observables = list(observables)
        noise = dict(noise or {})
        unknown = [k for k in list(noise) + list(sigma or {}) + list(cohort_calibration) if k not in self.observables]
        if unknown:
            raise ValueError(f"noise/sigma/cohort_calibration name unknown observable(s) {unknown}; observables: {self.observables}")
        self.noise = [noise.get(k, "additive") for k in self.observables]
        bad = [n for n in self.noise if n not in NOISE_MODELS]
        if bad:
            raise ValueError(f"noise model must be one of {NOISE_MODELS}, got {bad}")
        if not isinstance(n_cohorts, int) or n_cohorts < 1:
            raise ValueError(f"n_cohorts must be a positive integer, got {n_cohorts!r}")
        sig = dict(sigma or {})
        K = len(self.observables)
        add0 = [float(sig.get(k, 0.5)) if n != "proportional" else 1e-3 for k, n in zip(self.observables, self.noise)]
        prop0 = [float(sig.get(k, 0.2)) if n == "proportional" else (0.1 if n == "combined" else 1e-3)
                 for k, n in zip(self.observables, self.noise)]
        self.log_sigma_add = nn.Parameter(torch.log(torch.tensor(add0)), requires_grad=learn_noise)
        self.log_sigma_prop = nn.Parameter(torch.log(torch.tensor(prop0)), requires_grad=learn_noise)
        self.register_buffer("uses_add", torch.tensor([n != "proportional" for n in self.noise]))
        self.register_buffer("uses_prop", torch.tensor([n != "additive" for n in self.noise]))
        self.n_cohorts = n_cohorts
        self.cohort_calibration = list(cohort_calibration)
        calib = torch.zeros(n_cohorts, K, dtype=torch.bool)
        for k in cohort_calibration:
            calib[1:, self.observables.index(k)] = True
        self.register_buffer("calibrated", calib)
        if calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
        self.calibration = calibration
        learn = bool(self.cohort_calibration) and n_cohorts > 1  # otherwise they stay at scale 1, offset 0
        self.log_scale = nn.Parameter(torch.zeros(n_cohorts, K), requires_grad=learn and "scale" in calibration)
        self.offset = nn.Parameter(torch.zeros(n_cohorts, K), requires_grad=learn and "offset" in calibration)

    def calibrate(self, g: torch.Tensor, observable: torch.Tensor, cohort: torch.Tensor) -> torch.Tensor:
        """Apply per-cohort assay scale/offset to model observables ``g`` (B, T) -> mu (B, T)."""
        if not bool(self.calibrated.any()):
            return g
        c = cohort[..., None].expand_as(observable)
        on = self.calibrated[c, observable]
        scale = torch.where(on, self.log_scale[c, observable].exp(), torch.ones_like(g))
        offset = torch.where(on, self.offset[c, observable], torch.zeros_like(g))
        return scale * g + offset

    def sd(self, mu: torch.Tensor, observable: torch.Tensor) -> torch.Tensor:
        sa = torch.where(self.uses_add[observable], self.log_sigma_add[observable].exp(), torch.zeros_like(mu))
        sp = torch.where(self.uses_prop[observable], self.log_sigma_prop[observable].exp(), torch.zeros_like(mu))
        return torch.sqrt(sa**2 + (sp * mu) ** 2 + 1e-12)

    def log_likelihood(self, g, values, observable, cohort, censored, lloq, mask) -> torch.Tensor:
        """(B, T) per-row log-likelihood (0 on padding); ``g`` are model observables at the rows."""
        mu = self.calibrate(g, observable, cohort)
        sd = self.sd(mu, observable)
        z = (values - mu) / sd
        ll_obs = -0.5 * z * z - torch.log(sd) - _LOG_SQRT_2PI
        zc = (torch.nan_to_num(lloq, nan=0.0) - mu) / sd
        ll_cens = torch.special.log_ndtr(zc)
        ll = torch.where(censored, ll_cens, ll_obs)
        return torch.where(mask, ll, torch.zeros_like(ll))

    def forward(self, g, values, observable, cohort, censored, lloq, mask) -> torch.Tensor:
        """Same as :meth:`log_likelihood` (so ``torch.func.functional_call`` can evaluate it)."""
        return self.log_likelihood(g, values, observable, cohort, censored, lloq, mask)

    def sample(self, g, observable, cohort, generator=None) -> torch.Tensor:
        """Simulated measurements (no censoring applied)."""
        mu = self.calibrate(g, observable, cohort)
        return mu + self.sd(mu, observable) * torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)

    @torch.no_grad()
    def describe(self) -> dict:
        """Noise parameters and cohort calibrations as plain numbers."""
        out = {}
        for i, (k, n) in enumerate(zip(self.observables, self.noise)):
            d = {"noise": n}
            if n != "proportional":
                d["sigma_additive"] = float(self.log_sigma_add[i].exp())
            if n != "additive":
                d["sigma_proportional"] = float(self.log_sigma_prop[i].exp())
            if k in self.cohort_calibration:
                if "scale" in self.calibration:
                    d["cohort_scale"] = self.log_scale[:, i].exp().tolist()
                if "offset" in self.calibration:
                    d["cohort_offset"] = self.offset[:, i].tolist()
            out[k] = d
        return out
