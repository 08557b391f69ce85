r"""Consistency-model sampling (Song et al. 2023, https://arxiv.org/abs/2303.01469, Algorithm 1):
one step, or multistep with re-noising at chosen levels.

The model is a consistency function seen as an x0 predictor (the ``consistency`` objective's
``sampler_model``), so the step fits the sampler contract with one evaluation per step::

    x0_hat = f(x_t, sigma_t)                                        (ctx.predict)
    x_next = x0_hat + sqrt(sigma_next^2 - sigma_min^2) z            (VE view; to VP for the step)

with sigma_min = sigma_0 of the schedule (the consistency model's boundary level: its data are
at sigma_min) and z fresh noise; the last step (t_prev = -1) returns x0_hat. One step is
``steps=1`` (t = T - 1: f(x_T, sigma_max)); the re-noising levels are the spacing's indices.
The default spacing is ``trailing``: on the objective's geometric grid (T = 1000) 2 steps
re-noise at index 499, sigma = 0.398 (the grid's middle; the paper searched 0.821 for CIFAR-10's
2 steps), and no level is sigma_min itself (where f is the identity and a step is wasted).

Any x0-predicting model can be sampled this way (it is "denoise, re-noise"), but only a
consistency model maps a whole trajectory to its start: a diffusion model's x0_hat is the
posterior mean, and one step from it gives a blurred average.
"""

from __future__ import annotations

import math

import torch

from .base import StepContext, describe, from_ve


@describe(order=1, nfe_per_step=1, stochastic="if steps > 1", spacing="trailing",
          about="consistency model: one step, or multistep with re-noising (Song et al. 2023)")
def consistency_step(ctx: StepContext, x: torch.Tensor, t, t_prev,
                     state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """x0_hat = f(x_t), then re-noised to t_prev (none at the last step)."""
    pred = ctx.predict(x, t)
    if t_prev < 0:
        return pred.x0, pred.x0
    s_next, s_min = ctx.sigma(t_prev), ctx.sigma(0)
    x_ve = pred.x0 + math.sqrt(max(s_next * s_next - s_min * s_min, 0.0)) * ctx.noise_like(x)
    return from_ve(x_ve, s_next), pred.x0
