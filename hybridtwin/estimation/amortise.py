"""Amortisation: train the patient encoder to reproduce the fitted model's per-patient posterior.

After the population model is estimated (e.g. by SAEM), the encoder is trained as a neural posterior
estimator (as in simulation-based inference, e.g. sbi's NPE): virtual patients are drawn from the fitted
population model on the training subjects' own designs (covariates, cohorts, doses, sampling times, detection
limits), their measurements are simulated with the fitted noise, assay calibration and censoring, and the
encoder learns ``q(z | covariates, first k observations, doses, cohort)`` by maximising the log density of
the true ``z`` -- for every prefix length ``k`` (random prefixes, as in training by ELBO). Only the encoder
learns; the population model stays as estimated. Because the targets are exact draws from the model, the
Gaussian ``q`` converges to the posterior's mean and SD given the shown observations, which is what
personalising from early samples needs, in one forward pass.

Example
-------
>>> from hybridtwin.virtual import make_virtual_cohort
>>> from hybridtwin.twin import HybridTwin, TwinConfig
>>> from hybridtwin.estimation import AmortiseConfig, amortise
>>> data = make_virtual_cohort("vaccine_asc", n_subjects=10, n_cohorts=2, seed=0)
>>> twin = HybridTwin.from_data(TwinConfig(model="vaccine_asc"), data)
>>> hist = amortise(twin, data, AmortiseConfig(n_simulations=40, epochs=2, batch_size=16, progress=False))
>>> list(hist.columns)
['epoch', 'train_nll', 'val_nll']
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pandas as pd
import torch

from ..data import CohortData
from ..data.dataset import Batch, random_prefix_mask
from ..losses import normal_log_prob


@dataclass(frozen=True)
class AmortiseConfig:
    """Settings of :func:`amortise`.

    n_simulations: virtual patients drawn (the training designs, resampled). epochs, batch_size, lr: Adam on
    the encoder, the learning rate decaying to 5 % of ``lr`` on a cosine schedule. full_context: share of examples that show every observation (the rest show a random prefix
    of 0..n). validation: share of simulations held out to pick the best epoch. seed, progress: as usual.
    """

    n_simulations: int = 20000
    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3
    full_context: float = 0.2
    validation: float = 0.1
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        for name, minimum in (("n_simulations", 2), ("epochs", 1), ("batch_size", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"AmortiseConfig.{name} must be an integer >= {minimum}, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"AmortiseConfig.lr must be a positive number, got {self.lr!r}")
        for name, top in (("full_context", 1.0), ("validation", 0.99)):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and 0 <= v <= top):
                raise ValueError(f"AmortiseConfig.{name} must be in [0, {top:g}], got {v!r}")


def simulate_designs(twin, batch: Batch, n: int, generator: torch.Generator) -> tuple[torch.Tensor, Batch]:
    """``n`` virtual patients from the twin's population model on the designs of ``batch`` (cycled):
    returns their true unconstrained patient parameters (n', Pp) and a Batch of simulated, censored
    measurements (subjects whose solve failed are dropped, so n' <= n)."""
    B = len(batch)
    idx = torch.arange(n) % B
    with torch.no_grad():
        sub = batch.select(idx)
        mean, sd = twin.prior(sub.covariates)
        z = mean + sd * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        g, status = twin.observables_at(twin.theta(z, sub.cohort), sub)
        y = twin.observation.sample(g, sub.observable, sub.cohort, generator=generator, lloq=sub.lloq)
        limit = torch.nan_to_num(sub.lloq, nan=-math.inf)
        censored = (y < limit) & sub.mask
        sub.values = torch.where(censored, limit, torch.where(sub.mask, y, torch.zeros_like(y)))
        sub.censored = censored
    keep = status == 0
    return z[keep], sub.select(torch.nonzero(keep).flatten())


def _nll(twin, batch: Batch, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    mean, sd = twin.posterior(batch, context)
    return -normal_log_prob(z, mean, sd).mean()


def amortise(twin, data: CohortData | Batch, config: AmortiseConfig | None = None) -> pd.DataFrame:
    """Train ``twin.encoder`` on simulations from the twin's population model (see the module docstring);
    keeps the best-validation encoder and returns the per-epoch history (negative log density of the true
    parameters, nats per patient)."""
    cfg = config or AmortiseConfig()
    from tqdm.auto import tqdm

    batch = data if isinstance(data, Batch) else twin.dataset(data).batch()
    gen = torch.Generator().manual_seed(cfg.seed)
    z, sims = simulate_designs(twin, batch, cfg.n_simulations, gen)
    n = len(sims)
    if n < 2:
        raise ValueError("every simulated patient failed to solve: the population model is broken at its estimate")
    n_val = max(1, int(round(cfg.validation * n))) if cfg.validation > 0 else 0
    perm = torch.randperm(n, generator=gen)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if len(train_idx) == 0:
        train_idx = val_idx
    val = sims.select(val_idx) if n_val else None
    val_ctx = random_prefix_mask(val, torch.Generator().manual_seed(cfg.seed + 1), cfg.full_context) if n_val else None
    frozen = {name: p.requires_grad for name, p in twin.named_parameters()}
    for name, p in twin.named_parameters():
        p.requires_grad_(name.startswith("encoder."))
    opt = torch.optim.Adam(twin.encoder.parameters(), lr=cfg.lr)
    steps = cfg.epochs * math.ceil(len(train_idx) / cfg.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.05 * cfg.lr)
    best, best_state, rows = math.inf, None, []
    try:
        for epoch in tqdm(range(cfg.epochs), desc="amortising the encoder", disable=not cfg.progress):
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            total, count = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                b = sims.select(idx)
                ctx = random_prefix_mask(b, gen, cfg.full_context)
                opt.zero_grad()
                loss = _nll(twin, b, z[idx], ctx)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(twin.encoder.parameters(), 10.0)
                opt.step()
                schedule.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            with torch.no_grad():
                v = float(_nll(twin, val, z[val_idx], val_ctx)) if n_val else total / count
            rows.append(dict(epoch=epoch, train_nll=total / count, val_nll=v))
            if v < best:
                best, best_state = v, copy.deepcopy(twin.encoder.state_dict())
    finally:
        for name, p in twin.named_parameters():
            p.requires_grad_(frozen[name])
        twin.zero_grad(set_to_none=True)
    if best_state is not None:
        twin.encoder.load_state_dict(best_state)
    return pd.DataFrame(rows)
