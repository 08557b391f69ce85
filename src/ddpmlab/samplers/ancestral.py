"""[seed 5] Ancestral (DDPM) sampling, Ho et al. 2020 Algorithm 2.

x_{t-1} = mu_theta(x_t, t) + sigma_t z, z ~ N(0, I), for t = T..1, with **no noise at the last
step** (z = 0 when t = 1, i.e. index 0 / t_prev = -1). With fewer than T steps each jump
t -> t_prev uses the skipped chain's posterior (see :func:`ddpmlab.forward.pair_coefs`). The
variance is ``ctx.variance``: ``"small"`` (the posterior's beta_tilde) or ``"large"`` (beta); a
learn_sigma model's own variance when the context has it (:func:`ddpmlab.reverse.learned_log_var`,
between the skipped chain's beta' and beta_tilde' for a skipped step).
"""

from __future__ import annotations

import torch

from ..reverse import p_from_x0
from .base import StepContext, describe


@describe(order=1, nfe_per_step=1, stochastic="yes",
          about="ancestral DDPM (Ho et al. 2020, Alg. 2); posterior ('small') or beta variance")
def ddpm_step(ctx: StepContext, x: torch.Tensor, t: int, t_prev: int,
              state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step; returns (x_{t_prev}, x0_hat)."""
    pred = ctx.predict(x, t)
    consecutive = isinstance(t, int) and isinstance(t_prev, int) and t_prev == t - 1
    tp = None if consecutive else ctx.index(t_prev, x)
    mean, _, log_var, x0_hat = p_from_x0(ctx.schedule, x, pred.x0, pred.t, tp, ctx.variance,
                                         pred.var_values)
    if t_prev < 0:  # the last step: the mean, no noise
        return mean, x0_hat
    return mean + torch.exp(0.5 * log_var) * ctx.noise_like(x), x0_hat
