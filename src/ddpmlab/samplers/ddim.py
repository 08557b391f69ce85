r"""DDIM sampling (Song, Meng & Ermon 2021, eq. 12), any eta >= 0.

x_{t_prev} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).

eta = 0 is deterministic; eta = 1 over all T steps is exactly ancestral sampling with the
posterior ("small") variance. When x0_hat is clipped, eps_hat is recomputed from it so the two
stay consistent (improved-diffusion's convention). At t_prev = -1 (abar_prev = 1) the step returns
x0_hat: no noise at the last step.
"""

from __future__ import annotations

import torch

from ..broadcast import expand_like
from ..forward import pair_coefs
from ..parametrization import eps_from_x0, to_x0_eps
from ..reverse import Model, call_model
from ..schedules import Schedule
from .noise import Generators, randn


def ddim_step(model: Model, schedule: Schedule, x: torch.Tensor, t: int, t_prev: int, *,
              eta: float = 0.0, prediction: str = "eps", clip_x0: bool = False,
              y: torch.Tensor | None = None, generator: Generators = None,
              noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step; returns (x_{t_prev}, x0_hat)."""
    n = x.shape[0]
    tt = torch.full((n,), t, dtype=torch.long, device=x.device)
    tp = torch.full((n,), t_prev, dtype=torch.long, device=x.device)
    out = call_model(model, x, tt, y)
    x0_hat, eps_hat = to_x0_eps(schedule, x, tt, out, prediction)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        eps_hat = eps_from_x0(schedule, x, tt, x0_hat)
    if t_prev < 0:
        return x0_hat, x0_hat
    c = pair_coefs(schedule, tt, tp)
    sigma2 = eta**2 * c["posterior_var"]
    x_prev = (expand_like(c["abar_prev"].sqrt(), x) * x0_hat
              + expand_like((1.0 - c["abar_prev"] - sigma2).clamp(min=0).sqrt(), x) * eps_hat)
    if eta > 0:
        if noise is None:
            noise = randn(x.shape, generator, x.device, x.dtype)
        x_prev = x_prev + expand_like(sigma2.sqrt(), x) * noise
    return x_prev, x0_hat
