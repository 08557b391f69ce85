r"""DDIM sampling (Song, Meng & Ermon 2021, eq. 12), any eta >= 0.

x_{t_prev} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).

eta = 0 is deterministic; eta = 1 over all T steps is exactly ancestral sampling with the
posterior ("small") variance. When x0_hat is clipped, eps_hat is recomputed from it so the two
stay consistent (:meth:`StepContext.predict`). At t_prev = -1 (abar_prev = 1) the step returns
x0_hat: no noise at the last step.
"""

from __future__ import annotations

import torch

from ..broadcast import expand_like
from ..forward import pair_coefs
from .base import StepContext, describe


@describe(order=1, nfe_per_step=1, stochastic="if eta > 0", eta=0.0,
          about="DDIM (Song et al. 2021, eq. 12); eta = 0 deterministic, eta = 1 ancestral")
def ddim_step(ctx: StepContext, x: torch.Tensor, t: int, t_prev: int,
              state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step with ``ctx.eta``; returns (x_{t_prev}, x0_hat)."""
    pred = ctx.predict(x, t)
    x0_hat, eps_hat = pred.x0, pred.eps
    if t_prev < 0:
        return x0_hat, x0_hat
    c = pair_coefs(ctx.schedule, pred.t, ctx.index(t_prev, x))
    eta = ctx.eta_or(0.0)
    sigma2 = eta**2 * c["posterior_var"]
    x_prev = (expand_like(c["abar_prev"].sqrt(), x) * x0_hat
              + expand_like((1.0 - c["abar_prev"] - sigma2).clamp(min=0).sqrt(), x) * eps_hat)
    if eta > 0:
        x_prev = x_prev + expand_like(sigma2.sqrt(), x) * ctx.noise_like(x)
    return x_prev, x0_hat
