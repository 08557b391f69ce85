r"""Heun's method on the rectified-flow ODE dx/dt = v in the flow's time t (Liu et al. 2023,
https://arxiv.org/abs/2209.03003; the flow-matching samplers of Esser et al. 2024, SD3).

The flow's view of the noised point is x = (1 - t) x0 + t eps with t = sigma / (1 + sigma), i.e.
x = x_ve / (1 + sigma) for the variance-exploding x_ve = x_t / sqrt(abar_t) = x0 + sigma eps; the
velocity is v = eps_hat - x0_hat of the model's prediction there (:mod:`ddpmlab.objectives`).
One step from t to t' (sigma -> sigma'):

    Euler:  x' = x + (t' - t) v(x, t)
    Heun:   x_next = x + (t' - t) (v(x, t) + v(x', t')) / 2

The last step (t' = 0) is the Euler step alone, which lands on x0_hat: no noise at the last
step, two network evaluations per step and one for the last (2N - 1). Its Euler step is exactly
``euler``'s (both follow the line x0_hat + sigma eps_hat); the correction differs from ``heun``'s
(Heun in sigma) because the time variable does. Works for any objective and any callable; on a
flow run's grid the ``uniform`` spacing (its default) is equally spaced in t.
"""

from __future__ import annotations

import torch

from .base import StepContext, describe, from_ve, to_ve


def _to_flow(x: torch.Tensor, s: float) -> torch.Tensor:
    return to_ve(x, s) / (1.0 + s)


def _from_flow(x: torch.Tensor, s: float) -> torch.Tensor:
    return from_ve(x * (1.0 + s), s)


@describe(order=2, nfe_per_step=2, stochastic="no", spacing="uniform",
          about="Heun on the rectified-flow ODE dx/dt = v in t = sigma/(1+sigma) (Liu et al. 2023)")
def flow_heun_step(ctx: StepContext, x: torch.Tensor, t, t_prev,
                   state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One Heun step in the flow's time; returns (x_{t_prev}, x0_hat)."""
    pred = ctx.predict(x, t)
    if t_prev < 0:
        return pred.x0, pred.x0
    s, s_next = ctx.sigma(t), ctx.sigma(t_prev)
    tau, tau_next = s / (1.0 + s), s_next / (1.0 + s_next)
    xf = _to_flow(x, s)
    v = pred.eps - pred.x0
    x_euler = xf + (tau_next - tau) * v
    pred2 = ctx.predict(_from_flow(x_euler, s_next), t_prev)
    v2 = pred2.eps - pred2.x0
    return _from_flow(xf + (tau_next - tau) * 0.5 * (v + v2), s_next), pred.x0
