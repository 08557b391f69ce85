r"""``consistency``: consistency models (Song et al. 2023, https://arxiv.org/abs/2303.01469;
improved techniques: Song & Dhariwal 2023, https://arxiv.org/abs/2310.14189).

A consistency model maps any point x = x0 + s eps of a probability-flow ODE trajectory to the
trajectory's start at the smallest level s_min: f(x, s). The **boundary condition** f(x, s_min) = x
is built into the parametrization (Song et al. 2023, appendix C), with sd = ``sigma_data``::

    f(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s))
    c_skip = sd^2 / ((s - s_min)^2 + sd^2)     c_out = (s - s_min) sd / sqrt(sd^2 + s^2)
    c_in, c_noise: EDM's (1 / sqrt(s^2 + sd^2), ln(s) / 4)

so c_skip(s_min) = 1 and c_out(s_min) = 0 exactly: f(x, s_min) = x whatever F outputs (finite).
The network's input is EDM's (:mod:`.edm`), so a student can start from an EDM teacher's weights
(the paper's choice).

The levels: T levels geometric from ``s_min`` = 0.002 to 80 (EDM's grid, :func:`.edm.edm_sigmas`),
so the samplers, the forward process and the figures walk the same grid as an EDM run. A
distillation uses its own N-level Karras grid between the same ends
(:func:`karras_levels`, the paper's N = 18 with Heun on CIFAR-10).

The samplers see f as an x0 predictor (:class:`~.base.VEObjective`): the ``consistency``
sampler (:mod:`ddpmlab.samplers.consistency`) evaluates it once per step and re-noises.

:meth:`Consistency.losses` (what ``ddpmlab train`` would use with this objective) is
**consistency training** in the improved form (Song & Dhariwal 2023): adjacent levels
(s_n, s_{n+1}) of the T-level grid, n drawn from the discretized log-normal (P_mean = -1.1,
P_std = 2.0), the target network the stop-gradient of the online one (no EMA), the weight
1 / (s_{n+1} - s_n) and the pseudo-Huber distance on the whole sample. No curriculum (N = T
fixed); the issue's method is distillation from a teacher (:mod:`ddpmlab.train.distill`).

:func:`pseudo_huber` is the distance of the whole sample, sqrt(||d||^2 + c^2) - c over the
flattened sample, with c = 0.00054 sqrt(dim) (Song & Dhariwal 2023, sec. 3.3), not a sum of
elementwise Huber terms (the bug of several re-implementations).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .base import VEObjective, _call, _expand
from .edm import EDM_SIGMA_MAX, EDM_SIGMA_MIN, edm_precond, edm_sigmas

CT_P_MEAN, CT_P_STD = -1.1, 2.0          # iCT's discretized log-normal over adjacent levels
HUBER_C = 0.00054                        # c = 0.00054 sqrt(dim) (iCT, sec. 3.3)
CM_RHO = 7.0


def consistency_precond(sigma: torch.Tensor, sigma_data: float = 0.5,
                        sigma_min: float = EDM_SIGMA_MIN):
    """(c_skip, c_out, c_in, c_noise) with the boundary condition at ``sigma_min``, elementwise."""
    _, _, c_in, c_noise = edm_precond(sigma, sigma_data)
    d, sd2 = sigma - sigma_min, sigma_data * sigma_data
    c_skip = sd2 / (d * d + sd2)
    c_out = d * sigma_data / torch.sqrt(sd2 + sigma * sigma)
    return c_skip, c_out, c_in, c_noise


def consistency_fn(net: Callable, x: torch.Tensor, sigma: torch.Tensor,
                   y: torch.Tensor | None = None, sigma_data: float = 0.5,
                   sigma_min: float = EDM_SIGMA_MIN) -> torch.Tensor:
    """f(x, s) = c_skip x + c_out F(c_in x, c_noise) for x = x0 + s eps, ``sigma`` ``[N]``."""
    c_skip, c_out, c_in, c_noise = consistency_precond(sigma, sigma_data, sigma_min)
    out = _call(net, _expand(c_in, x) * x, c_noise.to(x.device), y)
    return _expand(c_skip, x) * x + _expand(c_out, x) * out


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """sqrt(||a - b||^2 + c^2) - c per sample ``[N]``, the norm over the whole flattened
    sample; ``c`` None: 0.00054 sqrt(dim)."""
    d = (a - b).reshape(a.shape[0], -1)
    if c is None:
        c = HUBER_C * math.sqrt(d.shape[1])
    return torch.sqrt((d * d).sum(1) + c * c) - c


def karras_levels(n: int, sigma_min: float = EDM_SIGMA_MIN, sigma_max: float = EDM_SIGMA_MAX,
                  rho: float = CM_RHO) -> torch.Tensor:
    """N increasing levels (Karras et al. 2022 eq. 5, float64): sigma_min .. sigma_max."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"a consistency grid needs N >= 2 levels, got {n!r}")
    i = torch.arange(n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (lo + i / (n - 1) * (hi - lo)) ** rho


def ct_level_probs(sigmas: torch.Tensor, p_mean: float = CT_P_MEAN,
                   p_std: float = CT_P_STD) -> torch.Tensor:
    """p(n) over the N - 1 adjacent pairs (s_n, s_{n+1}): the log-normal's mass between them."""
    cdf = torch.special.erf((sigmas.log() - p_mean) / (math.sqrt(2.0) * p_std))
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


class Consistency(VEObjective):
    """The consistency-model objective; ``sigma_data`` is the ``diffusion.*`` key. Its training
    level is the index n of the lower level of an adjacent pair (int64 in [0, T - 2])."""

    name = "consistency"
    reads = ("sigma_data",)
    level_name = "n"
    sigma_min = EDM_SIGMA_MIN

    def __init__(self, timesteps: int = 1000, sigma_data: float = 0.5) -> None:
        super().__init__(timesteps)
        self.sigma_data = sigma_data

    def sigmas(self) -> torch.Tensor:
        return edm_sigmas(self.timesteps)

    def _draw(self, generator: torch.Generator, batch: int, dtype: torch.dtype) -> torch.Tensor:
        if self.timesteps < 2:
            raise ValueError("consistency training needs T >= 2 levels")
        p = ct_level_probs(self.sigmas()).to(generator.device)
        return torch.multinomial(p, batch, replacement=True, generator=generator)

    def losses(self, net: Callable, schedule, x0: torch.Tensor, level: torch.Tensor,
               eps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Consistency training: lambda(s_n) d(f(x0 + s_{n+1} eps), sg f(x0 + s_n eps))."""
        s = self.sigmas().to(x0.device)
        lo, hi = s[level], s[level + 1]
        online = self.denoise_ve(net, x0 + _expand(hi, x0) * eps, hi, y)
        with torch.no_grad():
            target = self.denoise_ve(net, x0 + _expand(lo, x0) * eps, lo, y)
        weight = (1.0 / (hi - lo)).to(online.dtype)
        return weight * pseudo_huber(online, target)

    def denoise_ve(self, net: Callable, x_ve: torch.Tensor, s: torch.Tensor,
                   y: torch.Tensor | None) -> torch.Tensor:
        return consistency_fn(net, x_ve, s, y, self.sigma_data, self.sigma_min)
