"""Observation model: states -> observables, per-cohort assay calibration, noise, censoring (M3).

For an observation row of observable ``k`` of a subject in cohort ``c``, the prediction is
``mu = scale[c, k] * g_k(states) + offset[c, k]`` where ``g_k`` is the model's observable (e.g. log10 V),
and the measurement is ``y ~ Normal(mu, sd)`` with ``sd`` from the noise model of ``k``:

- ``"additive"``: ``sd = sigma_a`` (on the observable's scale; additive on log10 for log10 observables),
- ``"proportional"``: ``sd = sigma_p * |mu|``,
- ``"combined"``: ``sd = sqrt(sigma_a^2 + sigma_p^2 mu^2)``.

A censored row (value known only to be below ``lloq``) contributes ``log P(y < lloq) = log Phi((lloq - mu)/sd)``
-- Beal's M3 likelihood -- never a squared error against an imputed value. Padding rows contribute nothing.

**Missed samples** (``miss``): an observable may also have a probability ``pi`` that a sample reads "not
detected" whatever the load -- a swab that collected no virus, a failed extraction (RT-PCR's false negatives:
Kucirka et al. 2020, Ann Intern Med 173:262, put them at 20 % or more of tests of infected people even near the
peak). A censored row then contributes ``log(pi + (1 - pi) Phi((lloq - mu)/sd))`` and a quantified row
``log(1 - pi) + log N(y; mu, sd)``. Without it, a negative test between positives can only be explained by a
curve below the limit or a large noise SD; with it, by a missed sample.

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
>>> om = ObservationModel(["log10_V"], miss={"log10_V": 0.2}, n_cohorts=1)
>>> round(om.describe()["log10_V"]["miss_probability"], 3)
0.2
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
    miss: ``{observable: initial probability}`` of a missed sample (read as below the limit whatever the load;
        see the module docstring), in (0, 1); learned on the logit scale unless ``learn_miss`` is False.
        Observables not named have none (and the parameter ``logit_miss`` exists only when some are named, so
        states saved without it still load).
    """

    def __init__(self, observables: Sequence[str], noise: Mapping[str, str] | None = None,
                 sigma: Mapping[str, float] | None = None, n_cohorts: int = 1,
                 cohort_calibration: Sequence[str] = (), learn_noise: bool = True, calibration: str = "scale_offset",
                 miss: Mapping[str, float] | None = None, learn_miss: bool = True):
        super().__init__()
        self.observables = list(observables)
        noise = dict(noise or {})
        miss = dict(miss or {})
        unknown = [k for k in list(noise) + list(sigma or {}) + list(cohort_calibration) + list(miss)
                   if k not in self.observables]
        if unknown:
            raise ValueError(f"noise/sigma/cohort_calibration/miss name unknown observable(s) {unknown}; "
                             f"observables: {self.observables}")
        for k, v in miss.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) < 1.0:
                raise ValueError(f"miss[{k!r}] must be a probability strictly between 0 and 1, got {v!r}")
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
        self.has_miss = bool(miss)
        if self.has_miss:
            p0 = torch.tensor([float(miss.get(k, 0.5)) for k in self.observables])
            self.logit_miss = nn.Parameter(torch.log(p0) - torch.log1p(-p0), requires_grad=learn_miss)
            self.register_buffer("uses_miss", torch.tensor([k in miss for k in self.observables]))

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
        if self.has_miss:  # a missed sample: censored with probability pi whatever mu
            on = self.uses_miss[observable]
            logit = self.logit_miss[observable].to(mu.dtype)
            log_pi, log_keep = nn.functional.logsigmoid(logit), nn.functional.logsigmoid(-logit)
            ll_obs = torch.where(on, ll_obs + log_keep, ll_obs)
            ll_cens = torch.where(on, torch.logaddexp(log_pi, log_keep + ll_cens), ll_cens)
        ll = torch.where(censored, ll_cens, ll_obs)
        return torch.where(mask, ll, torch.zeros_like(ll))

    def miss_probability(self, observable: torch.Tensor) -> torch.Tensor:
        """Per-row probability of a missed sample (0 for observables without one)."""
        if not self.has_miss:
            return torch.zeros(observable.shape, dtype=self.log_sigma_add.dtype, device=observable.device)
        p = torch.sigmoid(self.logit_miss[observable])
        return torch.where(self.uses_miss[observable], p, torch.zeros_like(p))

    def forward(self, g, values, observable, cohort, censored, lloq, mask) -> torch.Tensor:
        """Same as :meth:`log_likelihood` (so ``torch.func.functional_call`` can evaluate it)."""
        return self.log_likelihood(g, values, observable, cohort, censored, lloq, mask)

    def sample(self, g, observable, cohort, generator=None, lloq=None) -> torch.Tensor:
        """Simulated measurements (no censoring applied). With missed samples (``miss``), a missed draw is
        ``-inf`` ("not detected": below any limit); given ``lloq``, only rows with a finite limit can miss (a
        measurement without a limit has no "not detected")."""
        mu = self.calibrate(g, observable, cohort)
        y = mu + self.sd(mu, observable) * torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        if not self.has_miss:
            return y
        p = self.miss_probability(observable).to(mu.dtype)
        missed = torch.rand(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device) < p
        if lloq is not None:
            missed = missed & torch.isfinite(lloq)
        return torch.where(missed, torch.full_like(y, -math.inf), y)

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
            if self.has_miss and bool(self.uses_miss[i]):
                d["miss_probability"] = float(torch.sigmoid(self.logit_miss[i]))
            if k in self.cohort_calibration:
                if "scale" in self.calibration:
                    d["cohort_scale"] = self.log_scale[:, i].exp().tolist()
                if "offset" in self.calibration:
                    d["cohort_offset"] = self.offset[:, i].tolist()
            out[k] = d
        return out
