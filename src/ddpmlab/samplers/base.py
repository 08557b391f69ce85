"""What every sampler shares: the step signature, its context, and the prediction prologue.

A sampler is one function (a *step*) in :data:`ddpmlab.samplers.SAMPLERS`::

    step(ctx: StepContext, x: Tensor, t: int, t_prev: int, state: dict) -> (x_next, x0_hat)

It moves x_t at original index ``t`` to x at ``t_prev`` (``-1`` = x0; see :mod:`.spacing`) and
returns the x0 estimate it used. ``state`` is a dict that lives for one call of
:func:`ddpmlab.sample` (a multistep solver keeps its history there); ``ctx`` carries the model,
the schedule and the options. :meth:`StepContext.predict` is the one prologue: index tensor,
model call (shape checked), the prediction converted to (x0_hat, eps_hat), and clipping
(``clip_x0``: x0_hat clamped to [-1, 1] and eps_hat recomputed from it, improved-diffusion's
convention, so the two stay consistent). When the context says ``learn_sigma`` the model
returns 2C channels: the prologue splits them (:func:`ddpmlab.reverse.split_output`), every
sampler sees the prediction half, and ``Prediction.var_values`` carries the variance half for
the ancestral step (the only one that uses the model's variance). :meth:`StepContext.noise_like`
is the only source of a step's noise.

Indices are ints, or floats for a fractional spacing (``"karras"``); a fractional index reaches
the model as a float64 tensor, and its abar comes from log sigma interpolated linearly between
the neighbouring indices (:func:`ddpmlab.schedules.sigma_at`). The sigma-space samplers (Euler,
Heun, ...) work on the variance-exploding view ``x / sqrt(abar_t) = x0 + sigma_t eps``
(Karras et al. 2022) and convert back; :meth:`StepContext.sigma` gives sigma_t.

Each step function carries a :class:`SamplerInfo` (``step.info``, set by :func:`describe`): its
order, network evaluations per step, whether it draws noise, its default spacing and eta, and a
one-line description, which ``ddpmlab samplers`` lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from ..parametrization import eps_from_x0, to_x0_eps
from ..reverse import Model, call_model, split_output
from ..schedules import Schedule, index_of_sigma, sigma_at
from .noise import Generators, randn

Index = int | float


class Prediction(NamedTuple):
    """The model's prediction at one step, in both forms, with the index tensor it used."""

    t: torch.Tensor          # int64 [N], the original index
    x0: torch.Tensor         # x0_hat (clipped when the context says so)
    eps: torch.Tensor        # eps_hat, consistent with x0_hat
    var_values: torch.Tensor | None = None  # learn_sigma: the raw variance half, else None


@dataclass(frozen=True)
class StepContext:
    """Everything a step needs besides (x, t, t_prev, state).

    ``model`` is already wrapped for guidance when guidance is on (then ``y`` is None).
    ``noise``, when given, is used instead of drawing from ``generator`` (to compare a step
    with another implementation on the same noise). ``eta`` None means the sampler's default
    (``step.info.eta``). ``steps`` is the number of steps of the call; ``options`` holds
    sampler-specific settings (Heun's ``churn``, ``s_tmin``, ``s_tmax``, ``s_noise``).
    ``learn_sigma``: the model returns the prediction and its variance values, ``[N, 2C, ...]``
    (:meth:`predict` splits them)."""

    model: Model
    schedule: Schedule
    prediction: str = "eps"
    clip_x0: bool = False
    y: torch.Tensor | None = None
    generator: Generators = None
    eta: float | None = None
    variance: str = "small"
    noise: torch.Tensor | None = None
    steps: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    learn_sigma: bool = False

    def index(self, t: Index, x: torch.Tensor) -> torch.Tensor:
        """``t`` as a tensor ``[N]`` on ``x``'s device: int64 for an int, float64 otherwise."""
        dtype = torch.long if isinstance(t, int) else torch.float64
        return torch.full((x.shape[0],), t, dtype=dtype, device=x.device)

    def sigma(self, t: Index) -> float:
        """sigma_t = sqrt((1 - abar_t) / abar_t) at an int or fractional index; 0 at -1."""
        if isinstance(t, int):   # one table entry (not the whole sigmas column every step)
            if t < 0:
                return 0.0
            ab = self.schedule.alpha_bar[t]
            return float(((1.0 - ab) / ab).sqrt())
        return float(sigma_at(self.schedule, torch.tensor(float(t), dtype=torch.float64)))

    def index_of(self, sigma: float) -> float:
        """The fractional index whose sigma is ``sigma`` (:func:`schedules.index_of_sigma`)."""
        return float(index_of_sigma(self.schedule, torch.tensor(float(sigma), dtype=torch.float64)))

    def eta_or(self, default: float) -> float:
        return default if self.eta is None else float(self.eta)

    def predict(self, x: torch.Tensor, t: Index) -> Prediction:
        """Call the model at index ``t`` and return (t, x0_hat, eps_hat); see the module doc."""
        tt = self.index(t, x)
        out = call_model(self.model, x, tt, self.y, self.learn_sigma)
        pred, var_values = split_output(out, self.learn_sigma)
        x0_hat, eps_hat = to_x0_eps(self.schedule, x, tt, pred, self.prediction)
        if self.clip_x0:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
            eps_hat = eps_from_x0(self.schedule, x, tt, x0_hat)
        return Prediction(tt, x0_hat, eps_hat, var_values)

    def noise_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise of ``x``'s shape (``noise`` if given, else from ``generator``)."""
        if self.noise is not None:
            return self.noise
        return randn(x.shape, self.generator, x.device, x.dtype)


def to_ve(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """VP x_t -> the variance-exploding x0 + sigma eps = x_t / sqrt(abar) = x_t sqrt(1 + sigma^2)."""
    return x * math.sqrt(1.0 + sigma * sigma)


def from_ve(x_ve: torch.Tensor, sigma: float) -> torch.Tensor:
    """The inverse of :func:`to_ve`."""
    return x_ve / math.sqrt(1.0 + sigma * sigma)


def sigma_step(ctx: StepContext, t: Index, t_prev: Index) -> tuple[float, float, float]:
    """(sigma, sigma_next, h) of a step, h = lambda_next - lambda = log(sigma / sigma_next) in
    the DPM-Solver++ samplers' half-log-SNR lambda = -log sigma."""
    s, s_next = ctx.sigma(t), ctx.sigma(t_prev)
    return s, s_next, math.log(s) - math.log(s_next)


def sde_noise(ctx: StepContext, x: torch.Tensor, s_next: float, h: float,
              eta: float) -> torch.Tensor:
    """The fresh noise of a DPM-Solver++ SDE step: sigma_next sqrt(1 - e^{-2 eta h}) z."""
    return s_next * math.sqrt(-math.expm1(-2.0 * eta * h)) * ctx.noise_like(x)


Step = Callable[[StepContext, torch.Tensor, Any, Any, dict], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SamplerInfo:
    """What ``ddpmlab samplers`` says of a sampler."""

    order: int              # convergence order of the deterministic solver (1 = Euler-like)
    nfe_per_step: int       # network evaluations per step (before guidance doubles them)
    stochastic: str         # "yes", "no", or when (e.g. "if eta > 0")
    about: str              # one line: what it is, and the paper
    spacing: str = "logsnr"  # the default spacing of its steps
    eta: float | None = None  # its default eta (None: it takes no eta)
    final_nfe: int = 1      # evaluations of the last step (to x0)

    def nfe(self, steps: int) -> int:
        """Network evaluations of a ``steps``-step call (each doubled by guidance's two halves
        unless they run as one batch)."""
        return self.nfe_per_step * (steps - 1) + self.final_nfe if steps > 0 else 0


def describe(order: int, nfe_per_step: int, stochastic: str, about: str, spacing: str = "logsnr",
             eta: float | None = None, final_nfe: int = 1) -> Callable[[Any], Any]:
    """Attach a :class:`SamplerInfo` to a step function (as ``step.info``)."""

    def mark(step: Any) -> Any:
        step.info = SamplerInfo(order, nfe_per_step, stochastic, about, spacing, eta, final_nfe)
        return step

    return mark
