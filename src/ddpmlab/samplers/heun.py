r"""Heun's second-order method on the probability-flow ODE, with EDM's optional stochastic
churn (Karras et al. 2022, https://arxiv.org/abs/2206.00364, Algorithms 1 and 2).

In the variance-exploding view x = x0 + sigma eps, with d(x, sigma) = (x - D(x, sigma)) / sigma:

    churn:   gamma = min(S_churn / N, sqrt(2) - 1) if S_tmin <= sigma <= S_tmax else 0,
             sigma_hat = sigma (1 + gamma),  x_hat = x + sqrt(sigma_hat^2 - sigma^2) S_noise z
    Euler:   x' = x_hat + (sigma_next - sigma_hat) d(x_hat, sigma_hat)
    Heun:    x_next = x_hat + (sigma_next - sigma_hat) (d(x_hat, sigma_hat) + d(x', sigma_next)) / 2

The last step (sigma_next = 0) is the Euler step alone, which returns D(x_hat, sigma_hat): two
network evaluations per step, one for the last (2N - 1 in all). ``options``: ``churn``
(S_churn, default 0 = Algorithm 1, deterministic), ``s_tmin`` (0), ``s_tmax`` (inf), ``s_noise``
(1). On a discrete schedule sigma_hat is capped at sigma_{T-1}, the largest trained level.
"""

from __future__ import annotations

import math

import torch

from .base import StepContext, describe, from_ve, to_ve


@describe(order=2, nfe_per_step=2, stochastic="if churn > 0", spacing="karras",
          about="Heun (EDM, Karras et al. 2022, Alg. 1/2; churn via options)")
def heun_step(ctx: StepContext, x: torch.Tensor, t, t_prev,
              state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One Heun step (with churn when ``ctx.options['churn'] > 0``)."""
    o = ctx.options
    churn, s_noise = float(o.get("churn", 0.0)), float(o.get("s_noise", 1.0))
    s_tmin, s_tmax = float(o.get("s_tmin", 0.0)), float(o.get("s_tmax", math.inf))
    s, s_next = ctx.sigma(t), ctx.sigma(t_prev)
    xv = to_ve(x, s)
    gamma = min(churn / max(ctx.steps, 1), math.sqrt(2.0) - 1.0) if s_tmin <= s <= s_tmax else 0.0
    t_hat, s_hat = t, s
    if gamma > 0:
        s_hat = min(s * (1.0 + gamma), ctx.sigma(ctx.schedule.T - 1))
        if s_hat > s:
            t_hat = ctx.index_of(s_hat)
            xv = xv + math.sqrt(s_hat * s_hat - s * s) * s_noise * ctx.noise_like(x)
        else:
            s_hat = s
    pred = ctx.predict(from_ve(xv, s_hat), t_hat)
    if t_prev < 0:
        return pred.x0, pred.x0
    d = (xv - pred.x0) / s_hat
    x_euler = xv + (s_next - s_hat) * d
    pred2 = ctx.predict(from_ve(x_euler, s_next), t_prev)
    d2 = (x_euler - pred2.x0) / s_next
    return from_ve(xv + (s_next - s_hat) * 0.5 * (d + d2), s_next), pred.x0
