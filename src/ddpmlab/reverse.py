r"""[seed 2] The learned reverse process p(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I).

The network predicts eps (or x0, or v); that prediction gives an estimate x0_hat, and the reverse
mean is the true posterior's mean with x0 replaced by x0_hat (Ho et al. eq. 11):

    mu_theta(x_t, t) = coef_x0(t) x0_hat + coef_xt(t) x_t
                     = (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t)

The variance is fixed and named: ``"small"`` = the posterior variance beta_tilde_t (log clipped at
the first step), ``"large"`` = beta_t (with beta_tilde_1 at the first step, as improved-diffusion
does, so the decoder term stays sharp). Ho et al. found both give similar samples.

**Learned variance** (Nichol & Dhariwal 2021, "Improved DDPM", eq. 15): a model trained with
``learn_sigma`` returns twice the channels, ``[N, 2C, ...]``; :func:`split_output` cuts it along
the channel axis (dim 1) into the prediction and the raw variance values v, and
:func:`learned_log_var` interpolates, per element, between the two fixed choices:

    frac = (v + 1) / 2,   log sigma_t^2 = frac log beta_t + (1 - frac) log beta_tilde_t

with beta_tilde's log clipped at index 0 to index 1's value (improved-diffusion's
``posterior_log_variance_clipped``). v is not clamped: v = 1 gives beta_t, v = -1 beta_tilde_t.
For a jump t -> t_prev of a sampler that skips steps the two ends are the skipped chain's beta'
and beta_tilde' (:func:`ddpmlab.forward.pair_coefs`; improved-diffusion recomputes the betas of
the respaced chain, the same numbers). The split lives here, in the math: the network only
knows that it has 2C output channels.

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


def output_shape(x: torch.Tensor, learn_sigma: bool = False) -> tuple[int, ...]:
    """The shape a model's output must have for input ``x``: ``x``'s, with the channel axis
    (dim 1) doubled when the model also returns its variance (``learn_sigma``)."""
    if not learn_sigma:
        return tuple(x.shape)
    if x.ndim < 2:
        raise ValueError(f"learn_sigma needs inputs [N, C, ...] with a channel axis, got shape "
                         f"{tuple(x.shape)}")
    return (x.shape[0], 2 * x.shape[1], *x.shape[2:])


def call_model(model: Model, x: torch.Tensor, t: torch.Tensor,
               y: torch.Tensor | None = None, learn_sigma: bool = False) -> torch.Tensor:
    """``model(x, t)`` when ``y`` is None, else ``model(x, t, y)``; checks the output's shape
    (:func:`output_shape`)."""
    out = model(x, t) if y is None else model(x, t, y)
    want = output_shape(x, learn_sigma)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        what = ("the input's shape with twice the channels (learn_sigma)" if learn_sigma
                else "the input's shape")
        raise ValueError(f"model output must have {what} {want}, got {got}")
    return out


def split_output(out: torch.Tensor,
                 learn_sigma: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prediction, raw variance values v) of a model output: the two halves of the channel
    axis when ``learn_sigma``, else (``out``, None)."""
    if not learn_sigma:
        return out, None
    if out.ndim < 2 or out.shape[1] % 2:
        raise ValueError(f"a learn_sigma output needs an even channel axis (dim 1), got shape "
                         f"{tuple(out.shape)}")
    pred, var_values = out.chunk(2, dim=1)
    return pred, var_values


def learned_log_var(schedule: Schedule, var_values: torch.Tensor, t: torch.Tensor,
                    t_prev: torch.Tensor | None = None) -> torch.Tensor:
    """log sigma^2 of p(x_{t_prev} | x_t) from the raw variance values v (module docstring):
    frac log beta + (1 - frac) log beta_tilde, frac = (v + 1) / 2, elementwise, in v's dtype.

    ``t_prev`` None is the full chain (beta_t and the clipped log beta_tilde_t of the schedule's
    table). A jump t -> t_prev interpolates the skipped chain's log beta' and log beta_tilde';
    for the jump to x0 (``t_prev = -1``) beta_tilde' is 0, and its log is replaced by log beta'
    (so the result is log beta' = log(1 - abar_t) whatever v): a sampler adds no noise there.
    """
    frac = (var_values + 1.0) / 2.0
    if t_prev is None:
        max_log = gather(torch.log(schedule.betas), t, var_values)
        min_log = gather(schedule.posterior_log_var, t, var_values)
    else:
        c = pair_coefs(schedule, t, t_prev)
        log_beta = torch.log(c["beta"])
        t_prev = torch.as_tensor(t_prev, device=log_beta.device)
        log_tilde = torch.where(t_prev < 0, log_beta, torch.log(c["posterior_var"]))
        max_log, min_log = expand_like(log_beta, var_values), expand_like(log_tilde, var_values)
    return frac * max_log + (1.0 - frac) * min_log


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
    learn_sigma: bool = False,
) -> PMeanVar:
    """p(x_{t_prev} | x_t): (mean, var, log_var, x0_hat), each broadcast against ``x_t``.

    ``t_prev`` defaults to ``t - 1``; a smaller index (``-1`` = x0) is the jump of a sampler that
    skips steps, with the skipped chain's posterior (see :func:`ddpmlab.forward.pair_coefs`).
    ``clip_x0`` clamps x0_hat to [-1, 1] before the mean is formed. ``model_output`` lets a
    caller that already ran the network reuse its output. With ``learn_sigma`` the output has
    2C channels and the variance is the model's (:func:`learned_log_var`, elementwise) instead
    of the fixed ``variance``.
    """
    check_variance(variance)
    out = call_model(model, x_t, t, y, learn_sigma) if model_output is None else model_output
    pred, var_values = split_output(out, learn_sigma)
    x0_hat, _ = to_x0_eps(schedule, x_t, t, pred, prediction)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    return p_from_x0(schedule, x_t, x0_hat, t, t_prev, variance, var_values)


def p_from_x0(schedule: Schedule, x_t: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor,
              t_prev: torch.Tensor | None = None, variance: str = "small",
              var_values: torch.Tensor | None = None) -> PMeanVar:
    """p(x_{t_prev} | x_t) once the x0 estimate is known: the posterior q(x_{t_prev} | x_t, x0)
    with x0 replaced by ``x0_hat`` and the named fixed ``variance``, or, when ``var_values`` (the
    variance half of a learn_sigma output) is given, the learned variance (see
    :func:`p_mean_var`)."""
    if var_values is not None:
        mean, _, _ = q_posterior(schedule, x0_hat, x_t, t, t_prev)
        log_var = learned_log_var(schedule, var_values, t, t_prev)
        return PMeanVar(mean, torch.exp(log_var), log_var, x0_hat)
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
