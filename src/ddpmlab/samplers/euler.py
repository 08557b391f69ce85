r"""Euler's method on the probability-flow ODE in sigma (Karras et al. 2022, Algorithm 1
without its correction; k-diffusion's ``sample_euler``).

In the variance-exploding view x = x_t / sqrt(abar_t) = x0 + sigma eps the ODE is
dx / dsigma = (x - D(x, sigma)) / sigma = eps_hat, with D the model's x0 estimate, and one step is

    x_next = x + (sigma_next - sigma) (x - D) / sigma.

First order; on the trained indices it is DDIM with eta = 0 (the same update written in sigma).
The last step (sigma_next = 0) returns D: no noise at the last step.
"""

from __future__ import annotations

import torch

from .base import StepContext, describe, from_ve, to_ve


@describe(order=1, nfe_per_step=1, stochastic="no", spacing="karras",
          about="Euler on the probability-flow ODE in sigma (Karras et al. 2022)")
def euler_step(ctx: StepContext, x: torch.Tensor, t, t_prev,
               state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One Euler step; returns (x_{t_prev}, x0_hat)."""
    pred = ctx.predict(x, t)
    if t_prev < 0:
        return pred.x0, pred.x0
    s, s_next = ctx.sigma(t), ctx.sigma(t_prev)
    xv = to_ve(x, s)
    d = (xv - pred.x0) / s
    return from_ve(xv + (s_next - s) * d, s_next), pred.x0
