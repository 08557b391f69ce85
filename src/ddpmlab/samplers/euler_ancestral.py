r"""Euler-ancestral sampling (k-diffusion's ``sample_euler_ancestral``; the ancestral step of
Song et al. 2021 in sigma).

Each step splits sigma_next into a deterministic part and fresh noise,

    sigma_up = min(sigma_next, eta sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)),
    sigma_down = sqrt(sigma_next^2 - sigma_up^2),

takes an Euler step to sigma_down, x' = x + (sigma_down - sigma) (x - D) / sigma, and adds
sigma_up z, in the variance-exploding view x = x0 + sigma eps. With eta = 1 (the default) each
step has the ancestral (DDPM posterior) variance; eta = 0 is Euler. No noise at the last step.
"""

from __future__ import annotations

import math

import torch

from .base import StepContext, describe, from_ve, to_ve


def ancestral_split(s: float, s_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of a step sigma -> sigma_next with noise share ``eta``."""
    up = min(s_next, eta * math.sqrt(max(s_next * s_next * (s * s - s_next * s_next), 0.0)) / s)
    return math.sqrt(max(s_next * s_next - up * up, 0.0)), up


@describe(order=1, nfe_per_step=1, stochastic="if eta > 0", spacing="karras", eta=1.0,
          about="Euler-ancestral in sigma (k-diffusion); eta = 0 is Euler")
def euler_ancestral_step(ctx: StepContext, x: torch.Tensor, t, t_prev,
                         state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One Euler-ancestral step; returns (x_{t_prev}, x0_hat)."""
    pred = ctx.predict(x, t)
    if t_prev < 0:
        return pred.x0, pred.x0
    s, s_next = ctx.sigma(t), ctx.sigma(t_prev)
    down, up = ancestral_split(s, s_next, ctx.eta_or(1.0))
    xv = to_ve(x, s)
    xv = xv + (down - s) * (xv - pred.x0) / s
    if up > 0:
        xv = xv + up * ctx.noise_like(x)
    return from_ve(xv, s_next), pred.x0
