r"""``edm``: Karras et al. 2022 (https://arxiv.org/abs/2206.00364, Table 1 and sec. 5).

x = x0 + s eps: the level is the VE noise level s itself. With sd = ``sigma_data``::

    c_skip = sd^2 / (s^2 + sd^2)     c_out = s sd / sqrt(s^2 + sd^2)
    c_in   = 1 / sqrt(s^2 + sd^2)    c_noise = ln(s) / 4
    ln s ~ N(P_mean = -1.2, P_std^2 = 1.2^2),  lambda(s) = (s^2 + sd^2) / (s sd)^2

(P_mean and P_std are EDM's CIFAR-10 values and the defaults of ``diffusion.p_mean`` and
``diffusion.p_std``.) The denoiser is D = c_skip x + c_out F(c_in x, c_noise) and the loss
lambda(s) ||D - x0||^2.

The network sees c_noise through its sinusoidal embedding as EDM's ADM network does. The loss
is the mean over the elements (EDM sums them: a constant factor). With this weighting the
network's effective target (x0 - c_skip x) / c_out has unit variance at every s when the data
have variance sd^2 (EDM sec. 5, checked in closed form by the tests).

The samplers' grid: T levels geometric from ``EDM_SIGMA_MIN`` = 0.002 to ``EDM_SIGMA_MAX`` = 80,
so log s is linear in the index everywhere and the ``karras`` spacing gives exactly EDM's rho = 7
steps (with ``heun``: EDM Algorithm 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .base import VEObjective, _call, _expand

EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0     # EDM's sigma range (Karras et al. 2022, Table 1)
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2              # ln sigma ~ N(P_mean, P_std^2) in training
                                               # (EDM's; diffusion.p_mean / p_std change them)


def edm_sigmas(T: int) -> torch.Tensor:
    """EDM's grid: T levels geometric from 0.002 to 80 (float64; T = 1: just 80)."""
    if T == 1:
        return torch.tensor([EDM_SIGMA_MAX], dtype=torch.float64)
    i = torch.arange(T, dtype=torch.float64)
    lo, hi = math.log(EDM_SIGMA_MIN), math.log(EDM_SIGMA_MAX)
    return torch.exp(lo + i / (T - 1) * (hi - lo))


def edm_precond(sigma: torch.Tensor, sigma_data: float = 0.5):
    """(c_skip, c_out, c_in, c_noise) at noise levels ``sigma`` (EDM Table 1), elementwise."""
    s2, sd2 = sigma * sigma, sigma_data * sigma_data
    root = torch.sqrt(s2 + sd2)
    return sd2 / (s2 + sd2), sigma * sigma_data / root, 1.0 / root, torch.log(sigma) / 4.0


def edm_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM's loss weight lambda(s) = (s^2 + sd^2) / (s sd)^2 = 1 / c_out^2."""
    return (sigma * sigma + sigma_data * sigma_data) / (sigma * sigma_data) ** 2


def edm_denoise(net: Callable, x: torch.Tensor, sigma: torch.Tensor,
                y: torch.Tensor | None = None, sigma_data: float = 0.5) -> torch.Tensor:
    """D(x, s) = c_skip x + c_out F(c_in x, c_noise) for x = x0 + s eps, ``sigma`` ``[N]``."""
    c_skip, c_out, c_in, c_noise = edm_precond(sigma, sigma_data)
    out = _call(net, _expand(c_in, x) * x, c_noise.to(x.device), y)
    return _expand(c_skip, x) * x + _expand(c_out, x) * out


def edm_loss(net: Callable, x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor,
             y: torch.Tensor | None = None, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM's loss per sample ``[N]``: lambda(s) mean((D(x0 + s eps, s) - x0)^2)."""
    x = x0 + _expand(sigma, x0) * eps
    err = (edm_denoise(net, x, sigma, y, sigma_data) - x0) ** 2
    return edm_weight(sigma, sigma_data).to(err.dtype) * err.reshape(err.shape[0], -1).mean(1)


class EDM(VEObjective):
    """EDM's objective; ``sigma_data``, ``p_mean``, ``p_std`` are the ``diffusion.*`` keys."""

    name = "edm"
    reads = ("sigma_data", "p_mean", "p_std")
    level_name = "sigma"      # float VE noise levels s > 0

    def __init__(self, timesteps: int = 1000, sigma_data: float = 0.5,
                 p_mean: float = EDM_P_MEAN, p_std: float = EDM_P_STD) -> None:
        super().__init__(timesteps)
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std

    def sigmas(self) -> torch.Tensor:
        return edm_sigmas(self.timesteps)

    def _draw(self, generator: torch.Generator, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """s = exp(P_mean + P_std n), n ~ N(0, 1)."""
        n = torch.randn(batch, generator=generator, device=generator.device, dtype=dtype)
        return torch.exp(self.p_mean + self.p_std * n)

    def losses(self, net: Callable, schedule, x0: torch.Tensor, level: torch.Tensor,
               eps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return edm_loss(net, x0, level, eps, y, self.sigma_data)

    def denoise_ve(self, net: Callable, x_ve: torch.Tensor, s: torch.Tensor,
                   y: torch.Tensor | None) -> torch.Tensor:
        return edm_denoise(net, x_ve, s, y, self.sigma_data)
