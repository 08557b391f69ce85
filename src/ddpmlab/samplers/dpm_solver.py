r"""DPM-Solver++(2M), the multistep second-order solver of the probability-flow ODE in data
(x0) prediction (Lu et al. 2022, https://arxiv.org/abs/2211.01095, Algorithm 2).

With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t) and
h = lambda_prev - lambda_t:

    first step:  x_prev = (sigma_prev / sigma_t) x_t - alpha_prev (e^{-h} - 1) D_t,   D_t = x0_hat_t
    later steps: D = (1 + 1 / (2 r)) x0_hat_t - 1 / (2 r) x0_hat_last,  r = h_last / h

The previous x0 estimate and step size live in the call's ``state`` (``x0_last``, ``h_last``);
an empty state makes the step first order. The last jump to x0 (sigma = 0, lambda = inf) is
first order, which returns x0_hat: the ODE solution adds no noise. Deterministic.
"""

from __future__ import annotations

import torch

from ..broadcast import expand_like
from ..forward import alpha_bar_at
from ..schedules import Schedule
from .base import StepContext, describe


def _alpha_sigma_lambda(schedule: Schedule, t: torch.Tensor):
    abar = alpha_bar_at(schedule, t)
    alpha, sigma = abar.sqrt(), (1.0 - abar).sqrt()
    return alpha, sigma, torch.log(alpha) - torch.log(sigma)


@describe(order=2, nfe_per_step=1, stochastic="no",
          about="DPM-Solver++(2M), multistep (Lu et al. 2022, Alg. 2); good in 10-20 steps")
def dpm_solver_step(ctx: StepContext, x: torch.Tensor, t: int, t_prev: int,
                    state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One DPM-Solver++(2M) step; updates ``state``; returns (x_{t_prev}, x0_hat)."""
    pred = ctx.predict(x, t)
    x0_hat = pred.x0
    if t_prev < 0:
        return x0_hat, x0_hat
    _, sigma_t, lam_t = _alpha_sigma_lambda(ctx.schedule, pred.t)
    alpha_p, sigma_p, lam_p = _alpha_sigma_lambda(ctx.schedule, ctx.index(t_prev, x))
    h = lam_p - lam_t
    if state.get("x0_last") is None:
        d = x0_hat
    else:
        r = state["h_last"] / h
        d = (expand_like(1.0 + 0.5 / r, x) * x0_hat - expand_like(0.5 / r, x) * state["x0_last"])
    x_prev = (expand_like(sigma_p / sigma_t, x) * x
              - expand_like(alpha_p * torch.expm1(-h), x) * d)
    state["x0_last"], state["h_last"] = x0_hat, h
    return x_prev, x0_hat
