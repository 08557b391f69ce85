r"""[seed 1] The forward (noising) process q and its posterior.

* :func:`q_step`      one step, q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)   (Ho eq. 2)
* :func:`q_mean_var`  the closed form q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I)      (Ho eq. 4)
* :func:`q_sample`    x0 -> x_t in one step: sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
* :func:`q_posterior` q(x_{t-1} | x_t, x0) = N(mu_tilde, beta_tilde I)                     (Ho eq. 6-7)

The image coefficient sqrt(abar_t) shrinks and the noise coefficient sqrt(1 - abar_t) grows with
t. ``t`` is an int64 index in ``[0, T)`` of shape ``[N]`` (see :mod:`ddpmlab.schedules`); ``x`` is any
float tensor ``[N, *]``.
"""

from __future__ import annotations

import torch

from .broadcast import expand_like, gather
from .schedules import Schedule, sigma_at


def q_mean_var(
    schedule: Schedule, x0: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_t | x0); the variance is broadcast to ``[N, 1, ..., 1]``."""
    mean = gather(schedule.sqrt_alpha_bar, t, x0) * x0
    var = gather(1.0 - schedule.alpha_bar, t, x0)
    return mean, var


def q_sample(
    schedule: Schedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x0) in one step (the closed form): sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return (gather(schedule.sqrt_alpha_bar, t, x0) * x0
            + gather(schedule.sqrt_one_minus_alpha_bar, t, x0) * noise)


def q_step(
    schedule: Schedule,
    x_prev: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One forward step x_{t-1} -> x_t: sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps.

    For index ``t = 0`` the input is x0 itself.
    """
    if noise is None:
        noise = torch.randn(x_prev.shape, generator=generator, device=x_prev.device,
                            dtype=x_prev.dtype)
    return (gather(schedule.alphas.sqrt(), t, x_prev) * x_prev
            + gather(schedule.betas.sqrt(), t, x_prev) * noise)


def q_posterior(
    schedule: Schedule,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    t_prev: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, var, log_var) of q(x_{t-1} | x_t, x0) (Ho et al. eq. 6-7).

    mean = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t,
    var = beta_t (1 - abar_{t-1}) / (1 - abar_t). At index 0 the variance is 0 and ``log_var`` is
    clipped to index 1's value (improved-diffusion's convention), so it stays finite.

    With ``t_prev`` (indices ``< t``; ``-1`` means x0), the same posterior for a jump t -> t_prev
    of the skipped chain, q(x_{t_prev} | x_t, x0), whose step has beta' = 1 - abar_t / abar_{t_prev}.
    ``t_prev = t - 1`` gives exactly the stored columns. The log-variance is then the plain log
    (``-inf`` where the variance is 0, i.e. ``t_prev = -1``).
    """
    if t_prev is None:
        mean = (gather(schedule.posterior_mean_coef_x0, t, x_t) * x0
                + gather(schedule.posterior_mean_coef_xt, t, x_t) * x_t)
        var = gather(schedule.posterior_var, t, x_t)
        log_var = gather(schedule.posterior_log_var, t, x_t)
        return mean, var, log_var
    c = pair_coefs(schedule, t, t_prev)
    mean = expand_like(c["coef_x0"], x_t) * x0 + expand_like(c["coef_xt"], x_t) * x_t
    var64 = c["posterior_var"]
    return mean, expand_like(var64, x_t), expand_like(torch.log(var64), x_t)


def alpha_bar_at(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """alpha_bar[t] in float64 for indices ``t >= -1``, with alpha_bar[-1] = 1 (x0 itself).

    A floating-point ``t`` may be fractional: abar(t) = 1 / (1 + sigma(t)^2) with log sigma
    interpolated linearly between neighbouring indices (:func:`ddpmlab.schedules.sigma_at`).
    Integer ``t`` reads the table."""
    t = torch.as_tensor(t, device=schedule.alpha_bar.device)
    if t.is_floating_point():
        return 1.0 / (1.0 + sigma_at(schedule, t) ** 2)
    t = t.long()
    padded = torch.cat([schedule.alpha_bar.new_ones(1), schedule.alpha_bar])
    return padded[t + 1]


def pair_coefs(schedule: Schedule, t: torch.Tensor, t_prev: torch.Tensor) -> dict[str, torch.Tensor]:
    """Float64 per-sample coefficients of the jump t -> t_prev (t_prev < t, -1 = x0).

    ``abar_t``, ``abar_prev``, ``beta`` = 1 - abar_t / abar_prev (the skipped chain's step variance),
    ``posterior_var`` = beta (1 - abar_prev) / (1 - abar_t), and the posterior mean coefficients
    ``coef_x0`` = sqrt(abar_prev) beta / (1 - abar_t), ``coef_xt`` = sqrt(abar_t / abar_prev)
    (1 - abar_prev) / (1 - abar_t).
    """
    abar_t = alpha_bar_at(schedule, t)
    abar_prev = alpha_bar_at(schedule, t_prev)
    if (abar_prev <= abar_t).any():
        raise ValueError("every t_prev must be smaller than its t")
    beta = 1.0 - abar_t / abar_prev
    return {
        "abar_t": abar_t,
        "abar_prev": abar_prev,
        "beta": beta,
        "posterior_var": beta * (1.0 - abar_prev) / (1.0 - abar_t),
        "coef_x0": abar_prev.sqrt() * beta / (1.0 - abar_t),
        "coef_xt": (abar_t / abar_prev).sqrt() * (1.0 - abar_prev) / (1.0 - abar_t),
    }
