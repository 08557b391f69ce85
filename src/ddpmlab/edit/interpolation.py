r"""Interpolation between two images: in the inverted noise (spherical) and in x_t (Ho et al.
2020, sec. 4.3 and Fig. 8).

* :func:`slerp` (Shoemake 1985): per sample, along the great circle between a and b,
  sin((1 - alpha) theta) / sin theta a + sin(alpha theta) / sin theta b with theta the angle
  between the flattened a and b; for Gaussian noise this keeps the norm typical of N(0, I),
  which linear interpolation shrinks (by 1/sqrt(2) at the midpoint of independent draws).
  alpha = 0 and 1 return a and b exactly; nearly parallel inputs fall back to linear.
* :func:`interpolate_latent`: invert both images (:func:`.inversion.invert`), slerp the two x_T,
  regenerate each (DDIM's interpolation, Song et al. 2021 sec. 5.3).
* :func:`interpolate_xt`: the DDPM paper's: noise both images to index t **with the same
  noise**, x_t^a = q(x_t | x_a, eps), x_t^b = q(x_t | x_b, eps), mix them linearly
  (1 - lambda) x_t^a + lambda x_t^b, and sample x0 from each mixture with the reverse process
  (:func:`.sdedit.denoise_from`). Larger t gives smoother but less faithful strips.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..forward import q_sample
from ..reverse import Model
from ..samplers.noise import Generators, randn
from ..schedules import Schedule
from .inversion import invert, regenerate
from .sdedit import denoise_from


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float, *, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation of each sample of ``a`` and ``b`` (``[N, *]``) at ``alpha``."""
    if a.shape != b.shape:
        raise ValueError(f"slerp needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    fa, fb = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1))
    theta = torch.acos(cos.clamp(-1.0, 1.0))
    s = torch.sin(theta)
    near = s < eps
    safe = torch.where(near, torch.ones_like(s), s)
    wa = torch.where(near, 1.0 - alpha * torch.ones_like(s), torch.sin((1.0 - alpha) * theta) / safe)
    wb = torch.where(near, alpha * torch.ones_like(s), torch.sin(alpha * theta) / safe)
    shape = (-1, *([1] * (a.ndim - 1)))
    return wa.reshape(shape) * a + wb.reshape(shape) * b


def interpolate_latent(model: Model, schedule: Schedule, x_a: torch.Tensor, x_b: torch.Tensor,
                       alphas: Sequence[float], *, sampler: str = "ddim",
                       steps: int | None = None, **sampling: Any) -> torch.Tensor:
    """``[len(alphas), N, *]``: regenerations of slerp(invert(x_a), invert(x_b), alpha).
    The two images are inverted as one batch of 2N and the strip regenerated as one of
    ``len(alphas) N``: ``y``, if any, is one label."""
    both = invert(model, schedule, torch.cat([x_a, x_b]), sampler=sampler, steps=steps, **sampling)
    z_a, z_b = both.chunk(2)
    z = torch.cat([slerp(z_a, z_b, float(al)) for al in alphas])
    out = regenerate(model, schedule, z, sampler=sampler, steps=steps, **sampling)
    return out.reshape(len(alphas), *x_a.shape)


def interpolate_xt(model: Model, schedule: Schedule, x_a: torch.Tensor, x_b: torch.Tensor,
                   t: int, lambdas: Sequence[float], noise: torch.Tensor | None = None, *,
                   sampler: str = "ddpm", steps: int | None = None,
                   generator: Generators = None, **sampling: Any) -> torch.Tensor:
    """``[len(lambdas), N, *]``: x0 sampled from (1 - lambda) x_t^a + lambda x_t^b at index
    ``t``, both noised with the same ``noise`` (default: one draw from ``generator``). The
    strip is sampled as one batch of ``len(lambdas) N``: ``generator`` is one
    ``torch.Generator`` (or None) and ``y``, if any, one label."""
    if noise is None:
        noise = randn(x_a.shape, generator, x_a.device, x_a.dtype)
    tt = torch.full((x_a.shape[0],), int(t), dtype=torch.long, device=x_a.device)
    sched = schedule.to(x_a.device)
    xt_a, xt_b = q_sample(sched, x_a, tt, noise), q_sample(sched, x_b, tt, noise)
    mixed = torch.cat([(1.0 - lam) * xt_a + lam * xt_b for lam in lambdas])
    out = denoise_from(model, schedule, mixed, int(t), sampler=sampler, steps=steps,
                       generator=generator, **sampling)
    return out.reshape(len(lambdas), *x_a.shape)
