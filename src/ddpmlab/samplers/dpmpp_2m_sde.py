r"""DPM-Solver++(2M) SDE (Lu et al. 2022, https://arxiv.org/abs/2211.01095; k-diffusion's
``sample_dpmpp_2m_sde`` with the midpoint correction, diffusers' ``sde-dpmsolver++``).

With lambda = -log sigma (sigma of the variance-exploding view x = x0 + sigma eps, so lambda is
half the log-SNR), h = lambda_next - lambda and D the model's x0 estimate:

    x_next = (sigma_next / sigma) e^{-eta h} x + (1 - e^{-(1 + eta) h}) D
             + 1/2 (1 - e^{-(1 + eta) h}) (D - D_last) / r + sigma_next sqrt(1 - e^{-2 eta h}) z,

r = h_last / h, the correction term from the second step on (the history lives in ``state``).
eta = 1 (the default) is the reverse SDE; eta = 0 is DPM-Solver++(2M) on the ODE. The last step
returns D: no noise at the last step.
"""

from __future__ import annotations

import math

import torch

from .base import StepContext, describe, from_ve, sde_noise, sigma_step, to_ve


@describe(order=2, nfe_per_step=1, stochastic="if eta > 0", spacing="karras", eta=1.0,
          about="DPM-Solver++(2M) SDE, midpoint (Lu et al. 2022); eta = 0 is the 2M ODE solver")
def dpmpp_2m_sde_step(ctx: StepContext, x: torch.Tensor, t, t_prev,
                      state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One DPM-Solver++(2M) SDE step; updates ``state``; returns (x_{t_prev}, x0_hat)."""
    pred = ctx.predict(x, t)
    d = pred.x0
    if t_prev < 0:
        return d, d
    eta = ctx.eta_or(1.0)
    s, s_next, h = sigma_step(ctx, t, t_prev)
    eta_h = eta * h
    coef = -math.expm1(-h - eta_h)
    xv = (s_next / s) * math.exp(-eta_h) * to_ve(x, s) + coef * d
    if state.get("d_last") is not None:
        r = state["h_last"] / h
        xv = xv + 0.5 * coef / r * (d - state["d_last"])
    if eta > 0:
        xv = xv + sde_noise(ctx, x, s_next, h, eta)
    state["d_last"], state["h_last"] = d, h
    return from_ve(xv, s_next), d
