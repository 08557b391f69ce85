r"""DPM-Solver++(3M) SDE (Lu et al. 2022; k-diffusion's ``sample_dpmpp_3m_sde``), the
third-order multistep solver of the reverse SDE (eta = 1, the default) or of the ODE (eta = 0).

With lambda = -log sigma (variance-exploding view x = x0 + sigma eps), h = lambda_next - lambda,
h_eta = (1 + eta) h, D the model's x0 estimate and D_1, D_2 the two before it:

    x_next = e^{-h_eta} x + (1 - e^{-h_eta}) D + phi_2 d1 - phi_3 d2
             + sigma_next sqrt(1 - e^{-2 eta h}) z,
    phi_2 = 1 - (1 - e^{-h_eta}) / h_eta,  phi_3 = phi_2 / h_eta - 1/2,
    r0 = h_1 / h, r1 = h_2 / h, d1_0 = (D - D_1) / r0, d1_1 = (D_1 - D_2) / r1,
    d1 = d1_0 + (d1_0 - d1_1) r0 / (r0 + r1), d2 = (d1_0 - d1_1) / (r0 + r1);

the first step is first order and the second uses d = (D - D_1) / r0 with phi_2 only. The last
step returns D: no noise at the last step.

Its default spacing is ``logsnr`` (steps even in lambda; k-diffusion's "exponential" sigmas),
not the Karras spacing of the other sigma-space samplers. On this project's schedules Karras'
rho = 7 spends half of 10 steps above sigma 9 and grows the steps in lambda towards the data
(h = 0.6 at the start, 2.0 into sigma_min; h_eta = 4 at eta 1): the third-order differences
then extrapolate D from far noisier levels over the largest steps. On the exact-score 2-D
mixture, 10 steps on Karras' spacing leave an MMD^2 6x (eta 1) to 40x (eta 0) larger than on
the log-SNR spacing (``tests/test_samplers.py``); on the main job's model, FID (BENCHMARKS.md
§7).
"""

from __future__ import annotations

import math

import torch

from .base import StepContext, describe, from_ve, sde_noise, sigma_step, to_ve


@describe(order=3, nfe_per_step=1, stochastic="if eta > 0", spacing="logsnr", eta=1.0,
          about="DPM-Solver++(3M) SDE (Lu et al. 2022); eta = 0 is the 3M ODE solver")
def dpmpp_3m_sde_step(ctx: StepContext, x: torch.Tensor, t, t_prev,
                      state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One DPM-Solver++(3M) SDE step; updates ``state``; returns (x_{t_prev}, x0_hat)."""
    pred = ctx.predict(x, t)
    d = pred.x0
    if t_prev < 0:
        return d, d
    eta = ctx.eta_or(1.0)
    s, s_next, h = sigma_step(ctx, t, t_prev)
    h_eta = h * (eta + 1.0)
    xv = math.exp(-h_eta) * to_ve(x, s) + (-math.expm1(-h_eta)) * d
    d1_, d2_ = state.get("d_1"), state.get("d_2")
    phi_2 = math.expm1(-h_eta) / h_eta + 1.0
    if d2_ is not None:
        r0, r1 = state["h_1"] / h, state["h_2"] / h
        d1_0 = (d - d1_) / r0
        d1_1 = (d1_ - d2_) / r1
        d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi_3 = phi_2 / h_eta - 0.5
        xv = xv + phi_2 * d1 - phi_3 * d2
    elif d1_ is not None:
        xv = xv + phi_2 * (d - d1_) / (state["h_1"] / h)
    if eta > 0:
        xv = xv + sde_noise(ctx, x, s_next, h, eta)
    state["d_1"], state["d_2"] = d, d1_
    state["h_1"], state["h_2"] = h, state.get("h_1")
    return from_ve(xv, s_next), d
