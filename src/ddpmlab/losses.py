r"""[seed 3] Training objectives and the variational bound's pieces.

Maximum likelihood of p_theta(x0) is trained through the ELBO (Ho et al. eq. 5):

    -log p(x0) <= L_T + sum_{t>1} L_{t-1} + L_0,
    L_T = KL(q(x_T | x0) || N(0, I)),  L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)),
    L_0 = -log p(x0 | x1) (a discretized Gaussian for 8-bit data).

With the reverse mean written through eps, each L_{t-1} is a weighted squared error in eps; Ho
et al. drop the weights and train the **simple loss** ||eps - eps_theta(x_t, t)||^2 (eq. 14).
:func:`simple_loss` generalizes it to x0 and v targets and to min-SNR-gamma weighting (Hang et
al. 2023, https://arxiv.org/abs/2303.09556), expressed for each target so that the effective
weight on the x0-error is min(SNR_t, gamma):

==========  ==================  =====================================
prediction  uniform weight      min-SNR-gamma weight
==========  ==================  =====================================
eps         1                   min(SNR, gamma) / SNR
x0          1                   min(SNR, gamma)
v           1                   min(SNR, gamma) / (SNR + 1)
==========  ==================  =====================================

Units: :func:`normal_kl` and :func:`discretized_gaussian_log_likelihood` are in nats per element;
:func:`vlb_terms` returns bits per dimension (nats / ln 2, averaged over the non-batch dims).
"""

from __future__ import annotations

import math

import torch

from .broadcast import gather
from .forward import q_posterior
from .parametrization import check_prediction, target
from .reverse import Model, p_mean_var
from .schedules import Schedule

WEIGHTINGS = ("uniform", "min_snr")


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: ``[N, *] -> [N]``."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def loss_weight(schedule: Schedule, t: torch.Tensor, prediction: str = "eps",
                weighting: str = "uniform", gamma: float = 5.0) -> torch.Tensor:
    """Per-sample float64 weights ``[N]`` of the simple loss (see the module table)."""
    check_prediction(prediction)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    snr = schedule.snr.to(t.device)[t.long()]
    if weighting == "uniform":
        return torch.ones_like(snr)
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "x0":
        return clipped
    return clipped / (snr + 1.0)


def simple_loss(schedule: Schedule, model_output: torch.Tensor, x0: torch.Tensor,
                t: torch.Tensor, eps: torch.Tensor, prediction: str = "eps",
                weighting: str = "uniform", gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weighted MSE ``[N]`` between the network output and its target.

    ``eps`` is the noise that made x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
    """
    tgt = target(schedule, x0, t, eps, prediction)
    # at least float32 (a bf16/fp16 output under AMP), float64 when the data are float64
    dtype = torch.promote_types(torch.promote_types(model_output.dtype, tgt.dtype), torch.float32)
    mse = mean_flat((model_output.to(dtype) - tgt.to(dtype)) ** 2)
    w = loss_weight(schedule, t, prediction, weighting, gamma)
    return mse * w.to(mse.dtype)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor,
              logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats (broadcasting)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor,
                                        log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) in nats, elementwise, for 8-bit data scaled to [-1, 1] (Ho et al. eq. 13).

    Each value x owns the bin [x - 1/255, x + 1/255]; the edge bins extend to -inf and +inf.
    ``log_scale`` is the log standard deviation. Uses the exact normal CDF (``torch.special``),
    not the tanh approximation of the original code.
    """
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (centered + 1.0 / 255.0)
    lower = inv_std * (centered - 1.0 / 255.0)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)
    # log P(lower < Z < upper) = log(Phi(b) - Phi(a)) on the side where both CDFs are small
    # (a, b = -upper, -lower when lower > 0), in log space so that far tails stay exact instead
    # of being floored.
    flip = lower > 0
    a = torch.where(flip, -upper, lower)
    b = torch.where(flip, -lower, upper)
    log_b = torch.special.log_ndtr(b)
    log_mid = log_b + torch.log(-torch.expm1(torch.special.log_ndtr(a) - log_b))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_mid))


def prior_bpd(schedule: Schedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T in bits/dim per sample: KL(q(x_T | x0) || N(0, I)); no parameters, ~0 for a good T."""
    t = torch.full((x0.shape[0],), schedule.T - 1, dtype=torch.long, device=x0.device)
    mean = gather(schedule.sqrt_alpha_bar, t, x0) * x0
    log_var = gather(torch.log1p(-schedule.alpha_bar), t, x0)
    kl = normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(mean))
    return mean_flat(kl) / math.log(2.0)


def vlb_terms(model: Model, schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor,
              t: torch.Tensor, prediction: str = "eps", variance: str = "small",
              y: torch.Tensor | None = None, clip_x0: bool = False) -> torch.Tensor:
    """The ELBO term of each sample at its index ``t``, in bits/dim, ``[N]``.

    Index ``t >= 1``: L_t = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)).
    Index ``t = 0``: the decoder NLL L_0 = -log p(x0 | x_1) (discretized Gaussian).
    """
    true_mean, _, true_log_var = q_posterior(schedule, x0, x_t, t)
    p = p_mean_var(model, schedule, x_t, t, prediction=prediction, variance=variance,
                   clip_x0=clip_x0, y=y)
    kl = mean_flat(normal_kl(true_mean, true_log_var, p.mean, p.log_var)) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, p.mean, 0.5 * p.log_var)
    decoder = mean_flat(nll) / math.log(2.0)
    return torch.where(t == 0, decoder, kl)
