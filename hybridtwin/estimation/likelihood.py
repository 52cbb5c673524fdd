"""Per-subject complete-data log-likelihood pieces shared by the estimators.

For subject ``i`` with unconstrained patient parameters ``z_i`` the complete-data log-likelihood of the
nonlinear mixed-effects model is

``log p(y_i, z_i) = log p(y_i | z_i; phi) + log N(z_i; mu + beta x_i, diag(omega^2))``

where ``phi`` are the parameters without between-patient variability (population-level model parameters,
per-cohort typical-value shifts, noise, assay calibration, closure networks). These helpers evaluate the
first term for a whole batch at once (one batched ODE solve) and the second in closed form.
"""

from __future__ import annotations

import torch

from ..data.dataset import Batch
from ..losses import normal_log_prob
from ..solve import Status


def observation_loglik(twin, g: torch.Tensor, batch: Batch, params: dict | None = None) -> torch.Tensor:
    """(B,) sum over a subject's rows of the observation log-likelihood given model observables ``g`` (B, T).

    params: optional replacement tensors for the observation model's parameters (``torch.func`` style)."""
    om = twin.observation
    args = (g, batch.values, batch.observable, batch.cohort, batch.censored, batch.lloq, batch.mask)
    if params is None:
        return om.log_likelihood(*args).sum(1)
    return torch.func.functional_call(om, params, args, strict=False).sum(1)


def solve_observables(twin, z: torch.Tensor, batch: Batch, grad: bool = False):
    """Model observables at the batch rows for patient parameters ``z`` (B, Pp): ``(g, ok)``.

    With ``grad`` the graph to the twin's population-level parameters (and closures) is kept."""
    with torch.set_grad_enabled(grad):
        g, status = twin.observables_at(twin.theta(z, batch.cohort), batch)
    return g, status == Status.OK


def prior_logpdf(z: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """(B,) log N(z; mean, diag(sd^2)) summed over parameters."""
    return normal_log_prob(z, mean, sd)


def design_matrix(batch: Batch) -> torch.Tensor:
    """(B, 1 + C): an intercept and the encoded covariates (missing -> 0, as the twin's prior does)."""
    x = torch.nan_to_num(batch.covariates)
    return torch.cat([torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device), x], dim=1)


def ode_population_parameters(twin, closures: bool = True) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters without between-patient variability that enter the ODE solve (gradient through the solver):
    population-level model parameters, cohort shifts and (with ``closures``) the dynamics' networks."""
    out = []
    if len(twin.population_idx):
        out.append(("mu_population", twin.mu_population))
    if twin.config.cohort_effects and len(twin.cohort_names) > 1:
        out.append(("cohort_shift", twin.cohort_shift))
    if closures:
        out += closure_parameters(twin)
    return out


def closure_parameters(twin) -> list[tuple[str, torch.nn.Parameter]]:
    """The learnable weights of the dynamics (neural closures or a black box)."""
    return [(f"dynamics.{n}", p) for n, p in twin.dynamics.named_parameters() if p.requires_grad]


def observation_parameters(twin) -> list[tuple[str, torch.nn.Parameter]]:
    """The observation model's learnable parameters (noise SDs, assay scale/offset)."""
    return [(n, p) for n, p in twin.observation.named_parameters() if p.requires_grad]
