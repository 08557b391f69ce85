"""The :class:`Objective` base class and what its members share.

An objective is an object built from plain values (``timesteps`` and the ``diffusion.*`` keys
named in its :attr:`Objective.reads`): no config object, no file. It owns four things:

* :meth:`Objective.schedule`: the :class:`~ddpmlab.schedules.Schedule` the samplers, the forward
  process and the figures of a run walk (DDPM: its named schedule; EDM and flow: their noise-level
  grid, built here by :func:`_from_sigmas`);
* :meth:`Objective.draw_levels`: a training batch's noise levels, drawn from the run's generator
  (what a level means is :attr:`Objective.level_name`);
* :meth:`Objective.losses`: the per-sample training loss at given (x0, level, eps);
* :meth:`Objective.sampler_model` and :attr:`Objective.sampler_prediction`: the network as the
  model a sampler calls, and what that model predicts.

:class:`VEObjective` is the shared part of the objectives whose samplers see the network through
the variance-exploding view x0 + s eps (EDM and flow; see :mod:`ddpmlab.objectives`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ..schedules import Schedule, from_betas, sigma_at


def _expand(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[N]`` -> ``[N, 1, ...]`` against ``x``, in x's dtype and device."""
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))


def _call(net: Callable, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None):
    return net(x, t) if y is None else net(x, t, y)


def with_augment(net: Callable, augment: torch.Tensor | None) -> Callable:
    """``net`` with augmentation labels ``augment`` ``[N, D]`` bound: ``model(x, t, y=None)``
    calls ``net(x, t, y, augment=augment)`` (one image's labels per row of x, so every call an
    objective makes on the batch, EDM's and the consistency loss's included, carries them).
    ``augment`` None gives ``net`` itself: what every sampler calls, which means "no
    transform" (non-leaking augmentation, :mod:`ddpmlab.data.augment`)."""
    if augment is None:
        return net

    def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        if x.shape[0] != augment.shape[0]:
            raise ValueError(f"augmentation labels for {augment.shape[0]} images, but the "
                             f"network was called on {x.shape[0]}")
        return net(x, t, y, augment=augment)

    return model


def _from_sigmas(sigmas: torch.Tensor, name: str) -> Schedule:
    """The Schedule whose VE levels are the increasing ``sigmas`` (abar = 1 / (1 + s^2))."""
    abar = 1.0 / (1.0 + sigmas * sigmas)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return from_betas(1.0 - abar / prev, name=name)


class Objective(ABC):
    """One training objective (a member of ``OBJECTIVES``), built from plain values.

    Class attributes a subclass sets:

    * ``name``: its ``diffusion.objective`` value and registry key;
    * ``reads``: the ``diffusion.*`` keys it reads besides ``timesteps`` (each one a keyword of
      its constructor). ``config.py`` refuses a key that another objective reads but this one
      does not away from its default: one generic rule, no per-objective code there;
    * ``learned_variance``: whether it reads ``model.learn_sigma`` (a ``learn_sigma`` keyword);
    * ``level_name``: what its training level (``StepRandomness.level``) is: ``"t"`` an int64
      index into the schedule, ``"sigma"`` a VE noise level, ``"flow_t"`` a flow time in [0, 1].
    """

    name: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ()
    learned_variance: ClassVar[bool] = False
    level_name: ClassVar[str] = ""

    def __init__(self, timesteps: int = 1000) -> None:
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
            raise ValueError("T (the number of noise levels) must be an integer >= 1, got "
                             f"{timesteps!r}")
        self.timesteps = timesteps

    @classmethod
    def from_settings(cls, settings: Any, learn_sigma: bool = False) -> Objective:
        """Build from any object with a ``timesteps`` attribute and those named in ``reads``
        (a ``DiffusionConfig``, a namespace); ``learn_sigma`` is ``model.learn_sigma``."""
        kw = {key: getattr(settings, key) for key in cls.reads}
        if cls.learned_variance:
            kw["learn_sigma"] = learn_sigma
        elif learn_sigma:
            raise ValueError(f"objective {cls.name!r} has no learned variance (learn_sigma)")
        return cls(settings.timesteps, **kw)

    def __repr__(self) -> str:
        keys = ("timesteps", *self.reads, *(("learn_sigma",) if self.learned_variance else ()))
        args = ", ".join(f"{k}={getattr(self, _attr(k))!r}" for k in keys)
        return f"{type(self).__name__}({args})"

    @abstractmethod
    def schedule(self) -> Schedule:
        """The Schedule of this objective's T levels (what samplers and figures walk)."""

    @abstractmethod
    def draw_levels(self, generator: torch.Generator, batch: int,
                    device: torch.device | None = None, t_probs: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A training batch's levels ``[batch]``, drawn on ``generator.device`` and moved to
        ``device`` (None: left there). ``t_probs``: DDPM's importance distribution over t."""

    @abstractmethod
    def losses(self, net: Callable, schedule: Schedule, x0: torch.Tensor, level: torch.Tensor,
               eps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Each sample's training loss ``[N]`` at ``level`` (this objective's kind of level)
        with noise ``eps``; ``schedule`` is :meth:`schedule` (possibly on another device)."""

    @abstractmethod
    def sampler_model(self, net: Callable, schedule: Schedule) -> Callable:
        """``net`` as the model the samplers call on ``schedule``: ``model(x_vp, index, y=None)``
        returning :attr:`sampler_prediction`."""

    @property
    @abstractmethod
    def sampler_prediction(self) -> str:
        """What :meth:`sampler_model`'s model predicts (``eps`` / ``x0`` / ``v``)."""


def _attr(key: str) -> str:
    """The attribute holding config key ``key`` (``schedule`` is a method: ``schedule_name``)."""
    return "schedule_name" if key == "schedule" else key


class VEObjective(Objective):
    """An objective the samplers see through its noise-level grid and the variance-exploding
    view x / alpha = x0 + s eps (EDM, flow). A subclass gives :meth:`sigmas` (the grid's T
    levels), :meth:`_draw` and :meth:`denoise_ve`; the model the samplers call predicts x0."""

    @abstractmethod
    def sigmas(self) -> torch.Tensor:
        """The grid's T increasing VE levels s_i (float64)."""

    @abstractmethod
    def _draw(self, generator: torch.Generator, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """The training levels, drawn on ``generator.device``."""

    @abstractmethod
    def denoise_ve(self, net: Callable, x_ve: torch.Tensor, s: torch.Tensor,
                   y: torch.Tensor | None) -> torch.Tensor:
        """x0_hat of ``x_ve`` = x0 + s eps (``s`` ``[N]`` float64), through the network."""

    def schedule(self) -> Schedule:
        return _from_sigmas(self.sigmas(), self.name)

    def draw_levels(self, generator: torch.Generator, batch: int,
                    device: torch.device | None = None, t_probs: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if t_probs is not None:
            raise ValueError(f"objective {self.name!r} draws continuous levels: t_probs (the "
                             "vlb loss's importance sampling) is ddpm's")
        level = self._draw(generator, batch, dtype)
        return level if device is None else level.to(device)

    def sampler_model(self, net: Callable, schedule: Schedule) -> Callable:
        def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
            s = sigma_at(schedule, t.to(torch.float64))                 # [N] float64
            x_ve = x * _expand(torch.sqrt(1.0 + s * s), x)              # x0 + s eps
            return self.denoise_ve(net, x_ve, s, y)

        return model

    @property
    def sampler_prediction(self) -> str:
        return "x0"
