r"""[seed 2] The learned reverse process p(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I).

The network predicts eps (or x0, or v); that prediction gives an estimate x0_hat, and the reverse
mean is the true posterior's mean with x0 replaced by x0_hat (Ho et al. eq. 11):

    mu_theta(x_t, t) = coef_x0(t) x0_hat + coef_xt(t) x_t
                     = (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t)

The variance is fixed and named: ``"small"`` = the posterior variance beta_tilde_t (log clipped at
the first step), ``"large"`` = beta_t (with beta_tilde_1 at the first step, as improved-diffusion
does, so the decoder term stays sharp). Ho et al. found both give similar samples.

``model`` is any callable ``model(x_t, t)`` or ``model(x_t, t, y)`` returning the prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .broadcast import expand_like, gather
from .forward import pair_coefs, q_posterior
from .parametrization import to_x0_eps
from .schedules import Schedule

Model = Callable[..., torch.Tensor]
VARIANCES = ("small", "large")   # the owner of the fixed reverse-variance choices


class PMeanVar(NamedTuple):
    """Mean, variance and log-variance of p(x_{t-1} | x_t), and the x0 estimate behind them."""

    mean: torch.Tensor
    var: torch.Tensor
    log_var: torch.Tensor
    x0_hat: torch.Tensor


def call_model(model: Model, x: torch.Tensor, t: torch.Tensor,
               y: torch.Tensor | None = None) -> torch.Tensor:
    """``model(x, t)`` when ``y`` is None, else ``model(x, t, y)``; checks the output's shape."""
    out = model(x, t) if y is None else model(x, t, y)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model output must have the input's shape {tuple(x.shape)}, got {got}")
    return out


def check_variance(variance: str) -> str:
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    return variance


def p_mean_var(
    model: Model,
    schedule: Schedule,
    x_t: torch.Tensor,
    t: torch.Tensor,
    prediction: str = "eps",
    variance: str = "small",
    clip_x0: bool = False,
    y: torch.Tensor | None = None,
    t_prev: torch.Tensor | None = None,
    model_output: torch.Tensor | None = None,
) -> PMeanVar:
    """p(x_{t_prev} | x_t): (mean, var, log_var, x0_hat), each broadcast against ``x_t``.

    ``t_prev`` defaults to ``t - 1``; a smaller index (``-1`` = x0) is the jump of a sampler that
    skips steps, with the skipped chain's posterior (see :func:`ddpmlab.forward.pair_coefs`).
    ``clip_x0`` clamps x0_hat to [-1, 1] before the mean is formed. ``model_output`` lets a
    caller that already ran the network reuse its prediction.
    """
    check_variance(variance)
    out = call_model(model, x_t, t, y) if model_output is None else model_output
    x0_hat, _ = to_x0_eps(schedule, x_t, t, out, prediction)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    return p_from_x0(schedule, x_t, x0_hat, t, t_prev, variance)


def p_from_x0(schedule: Schedule, x_t: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor,
              t_prev: torch.Tensor | None = None, variance: str = "small") -> PMeanVar:
    """p(x_{t_prev} | x_t) once the x0 estimate is known: the posterior q(x_{t_prev} | x_t, x0)
    with x0 replaced by ``x0_hat`` and the named fixed ``variance`` (see :func:`p_mean_var`)."""
    if t_prev is None:
        mean, var, log_var = q_posterior(schedule, x0_hat, x_t, t)
        if variance == "large":
            large = torch.cat([schedule.posterior_var[1:2], schedule.betas[1:]])
            if schedule.T == 1:
                large = schedule.betas
            var = gather(large, t, x_t)
            log_var = gather(torch.log(large), t, x_t)
        return PMeanVar(mean, var, log_var, x0_hat)
    mean, var, log_var = q_posterior(schedule, x0_hat, x_t, t, t_prev)
    if variance == "large":
        beta = pair_coefs(schedule, t, t_prev)["beta"]
        var, log_var = expand_like(beta, x_t), expand_like(torch.log(beta), x_t)
    return PMeanVar(mean, var, log_var, x0_hat)
