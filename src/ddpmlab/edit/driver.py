"""The loop every editing operation shares: a sampler's step function walked over explicit levels.

:func:`ddpmlab.sample` walks one fixed descent ``T-1 -> ... -> x0``. Editing needs more: start
part-way down (img2img), replace the known pixels before each step and jump back up (RePaint),
or walk up (inversion). :func:`build` makes the same :class:`StepContext` that ``sample()``
makes (the same validation, the same classifier-free guidance wrapper, the same network-call
counter, the same noise source), and :func:`walk` runs a list of *levels* (original indices, -1
= x0): a lower next level is one call of the sampler's step, exactly as in ``sample()``; a
higher one is a forward jump q(x_b | x_a) (:func:`renoise`) after which the multistep history in
``state`` is dropped (it belongs to the trajectory the jump left). With a mask, the known part
of x is replaced before every step by the known data noised to that step's level with fresh
noise (:func:`known_at`), and pasted at the end.

Noise is drawn from the one ``generator`` in this order, step after step: the known part's
noise, then the step's own noise, then a jump's noise. ``sample()`` draws x_T first and then
each step's noise, so a walk from pure noise with no mask equals ``sample()`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..forward import alpha_bar_at
from ..reverse import Model
from ..samplers import SAMPLERS, StepContext, check_settings, step_context
from ..samplers.base import Step
from ..samplers.noise import Generators, randn
from ..samplers.spacing import timesteps
from ..schedules import Schedule

Level = int | float
Callback = Callable[[dict[str, Any]], None]


@dataclass
class Driver:
    """A sampler's step with its context, its multistep ``state`` and the network-call count."""

    ctx: StepContext
    step: Step
    state: dict
    calls: list[int]

    @property
    def nfe(self) -> int:
        """Network evaluations so far (calls of the guided model, as ``sample()`` counts them)."""
        return self.calls[0]

    def reverse(self, x: torch.Tensor, t: Level, t_prev: Level) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the sampler from level ``t`` down to ``t_prev``: (x_{t_prev}, x0_hat)."""
        return self.step(self.ctx, x, t, t_prev, self.state)

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """Fresh standard normal noise of ``x``'s shape from the call's generator(s)."""
        return randn(x.shape, self.ctx.generator, x.device, x.dtype)


def levels(schedule: Schedule, sampler: str, steps: int | None = None,
           spacing: str | None = None) -> list[Level]:
    """The descending original indices ``sample()`` visits with these settings (spacing None:
    the sampler's default), without the final -1."""
    spacing = spacing or SAMPLERS[sampler].info.spacing
    return timesteps(schedule.T, steps, spacing, schedule.log_snr.tolist())


def build(model: Model, schedule: Schedule, x: torch.Tensor, *, sampler: str = "ddpm",
          generator: Generators = None, eta: float | None = None, variance: str = "small",
          prediction: str = "eps", y: torch.Tensor | int | None = None, guidance: float = 1.0,
          null_class: int | None = None, clip_x0: bool = False,
          options: dict[str, Any] | None = None, learn_sigma: bool = False,
          guide: Model | None = None, guide_weight: float = 1.0,
          guidance_interval: tuple[float, float] | None = None,
          steps_in_call: int = 0) -> Driver:
    """The :class:`Driver` that ``sample()`` would use for a batch like ``x`` (same checks,
    the same guidance decision :func:`~ddpmlab.samplers.guided_model`, the same counter).
    ``steps_in_call`` is ``StepContext.steps``."""
    step = check_settings(sampler, prediction, variance, eta, guidance)
    ctx, calls = step_context(model, schedule.to(x.device), x, y=y, guidance=guidance,
                              null_class=null_class, learn_sigma=learn_sigma, guide=guide,
                              guide_weight=guide_weight, guidance_interval=guidance_interval,
                              prediction=prediction, clip_x0=clip_x0, generator=generator,
                              eta=eta, variance=variance, steps=steps_in_call, options=options)
    return Driver(ctx, step, {}, calls)


def abar(schedule: Schedule, level: Level) -> float:
    """alpha_bar at an int or fractional level (1 at -1, x0 itself), as a Python float."""
    dtype = torch.long if isinstance(level, int) else torch.float64
    return float(alpha_bar_at(schedule, torch.tensor(level, dtype=dtype)))


def noised(schedule: Schedule, x0: torch.Tensor, level: Level, noise: torch.Tensor) -> torch.Tensor:
    """q(x_t | x0) at ``level`` with the given standard normal ``noise``."""
    ab = abar(schedule, level)
    return math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * noise


def renoise(drv: Driver, x: torch.Tensor, level: Level, up: Level) -> torch.Tensor:
    """A forward jump x_a -> x_b (b above a) drawn from q(x_b | x_a) exactly:
    sqrt(abar_b / abar_a) x_a + sqrt(1 - abar_b / abar_a) z, whatever the steps in between (the
    composition of the one-step kernels of the chain, skipped or not)."""
    ratio = abar(drv.ctx.schedule, up) / abar(drv.ctx.schedule, level)
    return math.sqrt(ratio) * x + math.sqrt(1.0 - ratio) * drv.noise(x)


def known_at(drv: Driver, x_known: torch.Tensor, level: Level) -> torch.Tensor:
    """The known data noised to ``level`` with fresh noise, independent of every other draw."""
    return noised(drv.ctx.schedule, x_known, level, drv.noise(x_known))


def check_mask(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """``mask`` (1 = generate, 0 = keep) as a tensor in x's dtype that broadcasts to x."""
    if mask is None:
        return None
    m = torch.as_tensor(mask, device=x.device).to(x.dtype)
    try:      # (torch.broadcast_shapes would import sympy: seconds)
        ok = m.ndim <= x.ndim and m.expand(x.shape).shape == x.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"mask of shape {tuple(m.shape)} does not broadcast to the images' "
                         f"shape {tuple(x.shape)}")
    if ((m != 0) & (m != 1)).any():
        raise ValueError("mask values must be 0 (keep) or 1 (generate)")
    return m


def walk(drv: Driver, x: torch.Tensor, path: Sequence[Level], *,
         known: torch.Tensor | None = None, mask: torch.Tensor | None = None,
         callback: Callback | None = None) -> torch.Tensor:
    """Walk x along ``path`` (levels; see the module doc) and return the last state.

    ``mask`` (1 = generate) with ``known`` (the data to keep): before each reverse step the
    kept part is replaced by ``known`` noised to the step's level; at the end it is pasted.
    ``callback(info)`` gets ``i``, ``t``, ``t_prev``, ``nfe``, ``x``, ``x0_hat`` and ``x_next``
    after every reverse step (``sample()``'s keys).
    """
    i = 0
    with torch.inference_mode():
        for a, b in zip(path[:-1], path[1:], strict=True):
            if b > a:                      # a forward jump: re-noise, forget the history
                x = renoise(drv, x, a, b)
                drv.state.clear()
                continue
            if mask is not None:
                x = mask * x + (1.0 - mask) * known_at(drv, known, a)
            x_next, x0_hat = drv.reverse(x, a, b)
            if callback is not None:
                callback({"i": i, "t": a, "t_prev": b, "nfe": drv.nfe, "x": x,
                          "x0_hat": x0_hat, "x_next": x_next})
            x, i = x_next, i + 1
        if mask is not None:
            x = mask * x + (1.0 - mask) * known
    return x
