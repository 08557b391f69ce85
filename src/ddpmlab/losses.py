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

**Learned variance** (Nichol & Dhariwal 2021, sec. 3.1 and 3.3; :data:`LOSSES`, per sample at
its index t, see :func:`diffusion_loss`):

==========  ==============================================================================
``simple``  L_simple = ||target - prediction||^2 (weighted as above)
``hybrid``  L_simple + lambda T L_t(sg[mean], sigma_theta): the VLB term of the learned variance
            with the mean's gradient stopped, lambda = ``vlb_weight`` (0.001); T L_t at a
            uniform t is the unbiased single-sample estimate of L_vlb = sum_t L_t, so with
            T = 1000 this is improved-diffusion's ``mse + vb`` (its ``RESCALED_MSE``)
``vlb``     L_t(mean, sigma_theta), the whole VLB term (improved-diffusion's ``KL`` loss); its
            mean over a uniform t is L_vlb / T. Trained with importance-sampled t
            (:class:`LossHistory`), each term weighted by 1 / (T p_t)
==========  ==============================================================================

L_t is in bits/dim: KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for t >= 1 and the discretized
decoder NLL -log p(x0 | x_1) at t = 0 (:func:`vlb_from_p`).
"""

from __future__ import annotations

import math

import torch

from .broadcast import gather
from .forward import q_posterior
from .parametrization import check_prediction, target, to_x0_eps
from .reverse import Model, p_from_x0, p_mean_var, split_output
from .schedules import Schedule

WEIGHTINGS = ("uniform", "min_snr")
LOSSES = ("simple", "hybrid", "vlb")   # the owner of the training-loss choices


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


def vlb_from_p(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
               mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """The ELBO term of each sample at its index ``t``, in bits/dim, ``[N]``, for a reverse
    step p(x_{t-1} | x_t) = N(``mean``, exp(``log_var``)) (``log_var`` per sample or per element).

    Index ``t >= 1``: L_t = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)).
    Index ``t = 0``: the decoder NLL L_0 = -log p(x0 | x_1) (discretized Gaussian).
    """
    true_mean, _, true_log_var = q_posterior(schedule, x0, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
    decoder = mean_flat(nll) / math.log(2.0)
    return torch.where(t == 0, decoder, kl)


def vlb_terms(model: Model, schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor,
              t: torch.Tensor, prediction: str = "eps", variance: str = "small",
              y: torch.Tensor | None = None, clip_x0: bool = False,
              learn_sigma: bool = False) -> torch.Tensor:
    """The ELBO term of each sample at its index ``t``, in bits/dim, ``[N]`` (:func:`vlb_from_p`
    for the model's p). With ``learn_sigma`` the model's own variance replaces ``variance``."""
    p = p_mean_var(model, schedule, x_t, t, prediction=prediction, variance=variance,
                   clip_x0=clip_x0, y=y, learn_sigma=learn_sigma)
    return vlb_from_p(schedule, x0, x_t, t, p.mean, p.log_var)


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    return loss


def diffusion_loss(schedule: Schedule, model_output: torch.Tensor, x0: torch.Tensor,
                   x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                   prediction: str = "eps", loss: str = "simple", learn_sigma: bool = False,
                   weighting: str = "uniform", gamma: float = 5.0,
                   vlb_weight: float = 0.001) -> torch.Tensor:
    """The per-sample training loss ``[N]`` named by ``loss`` (see the module table).

    ``model_output`` is the network's output at ``x_t`` (= q_sample(x0, t, eps)): the prediction,
    or with ``learn_sigma`` the prediction and the raw variance values stacked on the channel
    axis (``[N, 2C, ...]``). ``hybrid`` and ``vlb`` need ``learn_sigma``. Importance weights
    (``vlb``) are the caller's: this is each sample's unweighted term.
    """
    check_loss(loss)
    if loss != "simple" and not learn_sigma:
        raise ValueError(f"loss {loss!r} trains the variance: it needs a learn_sigma output")
    pred, var_values = split_output(model_output, learn_sigma)
    if loss == "simple":
        return simple_loss(schedule, pred, x0, t, eps, prediction, weighting, gamma)
    # the VLB in at least float32 (a bf16/fp16 output under AMP), float64 for float64 data
    dtype = torch.promote_types(torch.promote_types(pred.dtype, x0.dtype), torch.float32)
    pred, var_values = pred.to(dtype), var_values.to(dtype)
    x0, x_t = x0.to(dtype), x_t.to(dtype)
    mean_pred = pred.detach() if loss == "hybrid" else pred   # hybrid: sg[mean] in the VLB
    x0_hat, _ = to_x0_eps(schedule, x_t, t, mean_pred, prediction)
    p = p_from_x0(schedule, x_t, x0_hat, t, var_values=var_values)
    vlb = vlb_from_p(schedule, x0, x_t, t, p.mean, p.log_var)
    if loss == "vlb":
        return vlb
    simple = simple_loss(schedule, pred, x0, t, eps, prediction, weighting, gamma)
    return simple + (vlb_weight * schedule.T) * vlb


class LossHistory:
    """Importance sampling of t for the ``vlb`` loss (improved-diffusion's
    ``LossSecondMomentResampler``, Nichol & Dhariwal 2021 sec. 3.3).

    The last ``per_t`` (10) loss values seen at each index t are kept. Until every t has its
    ``per_t`` values, t is uniform (:meth:`probs` is None); then p_t is proportional to
    sqrt(E[L_t^2]) over the history, mixed with the uniform distribution as
    (1 - ``uniform``) p_t + ``uniform`` / T (``uniform`` = 0.001). A term drawn at t is weighted
    by 1 / (T p_t) (:func:`importance_weights`), so E_{t~p}[w_t L_t] = (1/T) sum_t L_t, the
    uniform average: the estimate stays unbiased. The state is two tensors
    (:meth:`state_dict`), saved in checkpoints.
    """

    def __init__(self, T: int, per_t: int = 10, uniform: float = 0.001):
        if T < 1 or per_t < 1 or not 0 <= uniform <= 1:
            raise ValueError(f"LossHistory needs T >= 1, per_t >= 1 and uniform in [0, 1], got "
                             f"T={T}, per_t={per_t}, uniform={uniform}")
        self.uniform = float(uniform)
        self.values = torch.zeros(T, per_t, dtype=torch.float64)   # oldest first
        self.counts = torch.zeros(T, dtype=torch.long)

    @property
    def T(self) -> int:
        return int(self.values.shape[0])

    @property
    def per_t(self) -> int:
        return int(self.values.shape[1])

    def warmed_up(self) -> bool:
        return bool((self.counts == self.per_t).all())

    def probs(self) -> torch.Tensor | None:
        """p ``[T]`` (float64, sums to 1), or None while some t has fewer than ``per_t``
        values (t is uniform then)."""
        if not self.warmed_up():
            return None
        w = self.values.square().mean(dim=1).sqrt()
        if not float(w.sum()) > 0:      # every recorded loss 0: nothing to prefer
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        p = (1.0 - self.uniform) * w / w.sum() + self.uniform / self.T
        return p / p.sum()

    def record(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Append each sample's loss to its t's history, in the batch's order (the oldest of a
        full history drops out)."""
        ts = t.detach().long().cpu().tolist()
        vals = losses.detach().double().cpu().tolist()
        if len(ts) != len(vals):
            raise ValueError(f"{len(ts)} timesteps but {len(vals)} losses")
        for ti, li in zip(ts, vals, strict=True):
            if not 0 <= ti < self.T:
                raise ValueError(f"timestep {ti} outside [0, {self.T})")
            n = int(self.counts[ti])
            if n == self.per_t:
                self.values[ti, :-1] = self.values[ti, 1:].clone()
                self.values[ti, -1] = li
            else:
                self.values[ti, n] = li
                self.counts[ti] = n + 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"values": self.values.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        values, counts = state.get("values"), state.get("counts")
        if (not isinstance(values, torch.Tensor) or not isinstance(counts, torch.Tensor)
                or tuple(values.shape) != tuple(self.values.shape)
                or tuple(counts.shape) != tuple(self.counts.shape)
                or bool(((counts < 0) | (counts > self.per_t)).any())):
            raise ValueError(f"a loss history must hold 'values' [{self.T}, {self.per_t}] and "
                             f"'counts' [{self.T}] in 0..{self.per_t}")
        self.values = values.to(torch.float64).clone()
        self.counts = counts.to(torch.long).clone()


def importance_weights(probs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """w = 1 / (T p_t) per sample ``[N]`` (float64): E_{t~p}[w_t L_t] = mean_t L_t."""
    p = probs.to(t.device)[t.long()]
    return 1.0 / (probs.shape[0] * p)
