"""[seed 5] Ancestral (DDPM) sampling, Ho et al. 2020 Algorithm 2.

x_{t-1} = mu_theta(x_t, t) + sigma_t z, z ~ N(0, I), for t = T..1, with **no noise at the last
step** (z = 0 when t = 1, i.e. index 0 / t_prev = -1). With fewer than T steps each jump
t -> t_prev uses the skipped chain's posterior (see :func:`ddpmlab.forward.pair_coefs`).
"""

from __future__ import annotations

import torch

from ..reverse import Model, p_mean_var
from ..schedules import Schedule
from .noise import Generators, randn


def ddpm_step(model: Model, schedule: Schedule, x: torch.Tensor, t: int, t_prev: int, *,
              prediction: str = "eps", variance: str = "small", clip_x0: bool = False,
              y: torch.Tensor | None = None, generator: Generators = None,
              noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step; returns (x_{t_prev}, x0_hat)."""
    n = x.shape[0]
    tt = torch.full((n,), t, dtype=torch.long, device=x.device)
    tp = None if t_prev == t - 1 else torch.full((n,), t_prev, dtype=torch.long, device=x.device)
    mean, _, log_var, x0_hat = p_mean_var(model, schedule, x, tt, prediction=prediction,
                                          variance=variance, clip_x0=clip_x0, y=y, t_prev=tp)
    if t_prev < 0:  # the last step: the mean, no noise
        return mean, x0_hat
    if noise is None:
        noise = randn(x.shape, generator, x.device, x.dtype)
    return mean + torch.exp(0.5 * log_var) * noise, x0_hat
