r"""``flow``: flow matching / rectified flow (Lipman et al. 2023, https://arxiv.org/abs/2210.02747;
Liu et al. 2023, https://arxiv.org/abs/2209.03003).

x_t = (1 - t) x0 + t eps for t in [0, 1]: the level is the flow time t (VE level s = t / (1 - t)).
The target velocity is v = dx_t / dt = eps - x0, and x0 = x_t - t v, eps = x_t + (1 - t) v; the
loss is ||v_hat - v||^2. t is ``uniform`` on [0, 1] or ``logit_normal`` (t = sigmoid(n),
n ~ N(0, 1): Esser et al. 2024, SD3, sec. 3.1) (``diffusion.flow_t``, :data:`FLOW_TIMES`). The
network sees 1000 t (:data:`FLOW_TIME_SCALE`: the range of DDPM's indices) through its
sinusoidal embedding. Sampling integrates dx/dt = v from t = 1 to 0.

The samplers' grid: t_i = (i + 1) / (T + 1), s_i = t_i / (1 - t_i) (the flow's own times,
equally spaced; t = 1, s = infinity, is not a level: the samplers start at t_{T-1} = T / (T + 1),
where x_vp differs from pure noise by t-1 ~ 1e-3 of x0, less than DDPM's own
sqrt(abar_{T-1}) ~ 6e-3).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import VEObjective, _call, _expand

FLOW_TIMES = ("uniform", "logit_normal")       # the owner of diffusion.flow_t's choices
FLOW_TIME_SCALE = 1000.0                       # the network sees 1000 t


def flow_times(T: int) -> torch.Tensor:
    """The flow's grid times t_i = (i + 1) / (T + 1), i = 0..T-1 (float64)."""
    return torch.arange(1, T + 1, dtype=torch.float64) / (T + 1)


def flow_interpolate(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps, ``t`` ``[N]``."""
    tt = _expand(t, x0)
    return (1.0 - tt) * x0 + tt * eps


def flow_loss(net: Callable, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
              y: torch.Tensor | None = None) -> torch.Tensor:
    """The flow-matching loss per sample ``[N]``: mean((v_hat(x_t, 1000 t) - (eps - x0))^2)."""
    v_hat = _call(net, flow_interpolate(x0, t, eps), FLOW_TIME_SCALE * t.to(x0.device), y)
    err = (v_hat - (eps - x0)) ** 2
    return err.reshape(err.shape[0], -1).mean(1)


class FLOW(VEObjective):
    """The flow-matching objective; ``flow_t`` is the ``diffusion.flow_t`` key."""

    name = "flow"
    reads = ("flow_t",)
    level_name = "flow_t"     # float flow times t in [0, 1)

    def __init__(self, timesteps: int = 1000, flow_t: str = "uniform") -> None:
        super().__init__(timesteps)
        if flow_t not in FLOW_TIMES:
            raise ValueError(f"unknown flow_t {flow_t!r}; choose one of {', '.join(FLOW_TIMES)}")
        self.flow_t = flow_t

    def sigmas(self) -> torch.Tensor:
        t = flow_times(self.timesteps)
        return t / (1.0 - t)

    def _draw(self, generator: torch.Generator, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """t uniform on [0, 1), or sigmoid of N(0, 1)."""
        gdev = generator.device
        if self.flow_t == "uniform":
            return torch.rand(batch, generator=generator, device=gdev, dtype=dtype)
        return torch.sigmoid(torch.randn(batch, generator=generator, device=gdev, dtype=dtype))

    def losses(self, net: Callable, schedule, x0: torch.Tensor, level: torch.Tensor,
               eps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return flow_loss(net, x0, level, eps, y)

    def denoise_ve(self, net: Callable, x_ve: torch.Tensor, s: torch.Tensor,
                   y: torch.Tensor | None) -> torch.Tensor:
        """x_t = (1 - t) x_ve with t = s / (1 + s), then x0 = x_t - t v."""
        tf = s / (1.0 + s)                                          # the flow's t
        x_t = x_ve * _expand(1.0 - tf, x_ve)                        # (1 - t) x0 + t eps
        v = _call(net, x_t, FLOW_TIME_SCALE * tf.to(x_ve.device), y)
        return x_t - _expand(tf, x_ve) * v
