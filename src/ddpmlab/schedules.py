r"""[seed 1] Noise schedules: how much noise each forward step adds.

Notation (Ho et al. 2020, with our index base):

=================  =============================================================================
``t``              int64 index in ``[0, T)``; index ``t`` is the paper's step ``t + 1``
``betas[t]``       :math:`\beta_{t+1}`, the variance of the noise added by step ``t``
``alphas[t]``      :math:`\alpha = 1 - \beta`
``alpha_bar[t]``   :math:`\bar\alpha_t = \prod_{s \le t} \alpha_s`; x_t = sqrt(abar) x0 + sqrt(1-abar) eps
``alpha_bar_prev`` ``alpha_bar[t-1]``, with ``alpha_bar_prev[0] = 1`` (x_{-1} is x0 itself)
``posterior_*``    the Gaussian q(x_{t-1} | x_t, x0) (Ho et al. eq. 6-7)
=================  =============================================================================

Every column is computed and stored in float64; samplers and losses gather per sample and cast
to the data's dtype (:func:`ddpmlab.broadcast.gather`). Published schedules never change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Schedule:
    """A discrete variance-preserving noise schedule; every tensor is float64 of shape ``[T]``."""

    name: str
    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bar: torch.Tensor
    alpha_bar_prev: torch.Tensor
    sqrt_alpha_bar: torch.Tensor
    sqrt_one_minus_alpha_bar: torch.Tensor
    posterior_var: torch.Tensor          # beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)
    posterior_log_var: torch.Tensor      # log beta_tilde, with index 0 replaced by index 1
    posterior_mean_coef_x0: torch.Tensor  # sqrt(abar_{t-1}) beta_t / (1 - abar_t)
    posterior_mean_coef_xt: torch.Tensor  # sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)

    @property
    def T(self) -> int:
        return int(self.betas.shape[0])

    @property
    def log_snr(self) -> torch.Tensor:
        """log(alpha_bar / (1 - alpha_bar)), decreasing in t."""
        return torch.log(self.alpha_bar) - torch.log1p(-self.alpha_bar)

    @property
    def snr(self) -> torch.Tensor:
        return self.alpha_bar / (1.0 - self.alpha_bar)

    @property
    def sigmas(self) -> torch.Tensor:
        """sigma_t = sqrt((1 - abar_t) / abar_t), increasing in t: the noise level of the
        variance-exploding view x_t / sqrt(abar_t) = x0 + sigma_t eps (Karras et al. 2022)."""
        return ((1.0 - self.alpha_bar) / self.alpha_bar).sqrt()

    def to(self, device: torch.device | str) -> Schedule:
        """The same schedule with every column on ``device`` (still float64)."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return Schedule(**moved)


def sigma_at(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """sigma at (possibly fractional) indices ``t`` in ``[-1, T - 1]``, float64.

    The continuous view of a discrete schedule (k-diffusion's convention): between two trained
    indices, **log sigma is linear in t**, so for t = i + w (0 <= w <= 1)
    ``log sigma(t) = (1 - w) log sigma_i + w log sigma_{i+1}``; integer t gives the table value
    exactly, and t = -1 (x0 itself) gives sigma = 0. Indices in (-1, 0) or outside the range
    are refused. abar(t) = 1 / (1 + sigma(t)^2).
    """
    t = torch.as_tensor(t, dtype=torch.float64, device=schedule.alpha_bar.device)
    T = schedule.T
    if torch.isnan(t).any() or (t > T - 1).any() or (t < -1).any() or ((t > -1) & (t < 0)).any():
        raise ValueError(f"fractional indices must lie in [0, {T - 1}] (or be -1 for x0), got "
                         f"{t.min().item():g}..{t.max().item():g}")
    log_s = torch.log(schedule.sigmas)
    tc = t.clamp(min=0)
    lo = tc.floor().long().clamp(max=T - 1)
    hi = (lo + 1).clamp(max=T - 1)
    w = tc - lo.to(torch.float64)
    out = torch.exp((1.0 - w) * log_s[lo] + w * log_s[hi])
    return torch.where(t < 0, torch.zeros_like(out), out)


def index_of_sigma(schedule: Schedule, sigma: torch.Tensor) -> torch.Tensor:
    """The fractional index t with :func:`sigma_at` (t) = sigma (its inverse, float64):
    sigma = 0 gives -1; sigma must lie in [sigma_0, sigma_{T-1}] otherwise."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=schedule.alpha_bar.device)
    log_s = torch.log(schedule.sigmas)
    s = sigma.reshape(-1)
    zero = s == 0
    ls = torch.log(torch.where(zero, torch.ones_like(s), s))
    lo_ok = ls >= log_s[0] - 1e-12
    hi_ok = ls <= log_s[-1] + 1e-12
    if not bool((zero | (lo_ok & hi_ok)).all()):
        raise ValueError(f"sigma must be 0 or lie in [{schedule.sigmas[0].item():.4g}, "
                         f"{schedule.sigmas[-1].item():.4g}], got {s.tolist()[:4]}")
    ls = ls.clamp(log_s[0], log_s[-1])
    hi = torch.searchsorted(log_s, ls).clamp(1, max(schedule.T - 1, 1))
    lo = hi - 1
    if schedule.T == 1:
        t = torch.zeros_like(ls)
    else:
        w = (ls - log_s[lo]) / (log_s[hi] - log_s[lo])
        t = lo.to(torch.float64) + w
    return torch.where(zero, torch.full_like(t, -1.0), t).reshape(sigma.shape)


def from_betas(betas: torch.Tensor, name: str = "custom") -> Schedule:
    """Build a :class:`Schedule` from any betas in (0, 1); the single source of every column."""
    betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
    if betas.ndim != 1 or betas.numel() < 1:
        raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
    if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
        bad = betas[~(torch.isfinite(betas) & (betas > 0) & (betas < 1))][0].item()
        raise ValueError(f"every beta must lie in the open interval (0, 1); got {bad!r}")
    alphas = 1.0 - betas
    alpha_bar = torch.cumprod(alphas, dim=0)
    if (alpha_bar[1:] >= alpha_bar[:-1]).any():
        raise ValueError("alpha_bar must be strictly decreasing")
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    posterior_var = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    # posterior_var[0] = 0 (x0 is known exactly given x_0 and x_1): clip its log at step 1's.
    log_src = torch.cat([posterior_var[1:2], posterior_var[1:]]) if betas.numel() > 1 else betas
    return Schedule(
        name=name,
        betas=betas,
        alphas=alphas,
        alpha_bar=alpha_bar,
        alpha_bar_prev=alpha_bar_prev,
        sqrt_alpha_bar=alpha_bar.sqrt(),
        sqrt_one_minus_alpha_bar=(1.0 - alpha_bar).sqrt(),
        posterior_var=posterior_var,
        posterior_log_var=torch.log(log_src),
        posterior_mean_coef_x0=alpha_bar_prev.sqrt() * betas / (1.0 - alpha_bar),
        posterior_mean_coef_xt=alphas.sqrt() * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar),
    )


def _check_T(T: int) -> int:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T (the number of diffusion steps) must be an integer >= 1, got {T!r}")
    return T


def linear_problem(T: int, beta_end: float = 0.02) -> str | None:
    """Why :func:`linear` cannot be built at ``T`` (its scaled beta_end reaches 1 for
    T <= 20), or None; the config checks it before anything is built or read."""
    hi = beta_end * 1000.0 / T
    if hi < 1.0:
        return None
    return (f"the linear schedule scales beta_end by 1000/T, which gives {hi:g} >= 1 for T={T}; "
            f"use T > {math.floor(beta_end * 1000)} or the cosine schedule")


def linear(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Ho et al. 2020: betas linear from 1e-4 to 0.02 for T=1000.

    For other T both ends are scaled by ``1000 / T`` (Nichol & Dhariwal 2021,
    ``get_named_beta_schedule``), so that alpha_bar at the last step stays close to the T=1000
    value instead of leaving signal in x_T.
    """
    T = _check_T(T)
    scale = 1000.0 / T
    lo, hi = beta_start * scale, beta_end * scale
    if (why := linear_problem(T, beta_end)) is not None:
        raise ValueError(why)
    return from_betas(torch.linspace(lo, hi, T, dtype=torch.float64), name="linear")


def cosine_alpha_bar(u: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """f(u) = cos^2(((u + s) / (1 + s)) * pi / 2) for u in [0, 1] (Nichol & Dhariwal eq. 17)."""
    return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def cosine(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Nichol & Dhariwal 2021: alpha_bar(t) = f(t/T) / f(0), betas clipped at ``max_beta``.

    https://arxiv.org/abs/2102.09672, eq. 17. Index ``t`` is the paper's step ``t + 1``, so
    ``alpha_bar[t] = f((t + 1) / T) / f(0)`` wherever no beta was clipped.
    """
    T = _check_T(T)
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = cosine_alpha_bar(u, s)
    betas = (1.0 - f[1:] / f[:-1]).clamp(max=max_beta)
    return from_betas(betas, name="cosine")


def sigmoid(T: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
            clip_min: float = 1e-9) -> Schedule:
    """Sigmoid schedule (Jabri et al. 2022, https://arxiv.org/abs/2212.11972, Fig. 8).

    alpha_bar(u) = (-sigmoid((u (end - start) + start) / tau) + sigmoid(end / tau))
                   / (sigmoid(end / tau) - sigmoid(start / tau)), betas clipped to [clip_min, 0.999].
    """
    T = _check_T(T)
    u = torch.arange(T + 1, dtype=torch.float64) / T
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    f = (-torch.sigmoid((u * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    betas = (1.0 - f[1:] / f[:-1]).clamp(min=clip_min, max=0.999)
    return from_betas(betas, name="sigmoid")


# The owner of the schedule choices: name -> builder(T) (config, CLI and figures read it).
SCHEDULES = {"linear": linear, "cosine": cosine, "sigmoid": sigmoid}


def get(name: str, T: int = 1000) -> Schedule:
    """A named schedule of :data:`SCHEDULES`: ``"linear"``, ``"cosine"`` or ``"sigmoid"``."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name](T)
