r"""img2img by SDEdit (Meng et al. 2022, https://arxiv.org/abs/2108.01073), and sampling from a
given x_t.

**How strength maps to t.** A sampler with ``steps`` (n) steps visits the levels
tau_0 > ... > tau_{n-1} (:func:`ddpmlab.samplers.timesteps`, the same as ``sample()``).
``strength`` s in [0, 1] runs the last k = round(s n) of them (half up):

* k = 0 (s < 1 / (2n)): no step; the guide is returned unchanged;
* 0 < k < n: the guide is noised to level tau_{n-k} by q(x_t | x_guide) (fresh noise) and the
  sampler walks tau_{n-k} -> ... -> x0. With all T steps (``steps=None``, any spacing) that is
  index t = k - 1: s = 0.3 starts at t = 299 of T = 1000;
* k = n (s near 1): the walk starts from **pure noise**, exactly as ``sample()`` does from the
  same generator (the guide is ignored). q(x_{T-1} | x_guide) would keep sqrt(abar_{T-1}) of
  the guide (0.006 for the linear schedule), which is what diffusers' ``strength=1`` does
  (diffusers#7651); ``sample()`` treats x_T as pure noise, and so does strength 1 here.

With ``mask`` (1 = edit, 0 = keep) only the masked region is edited: the kept part is replaced
before every step by the guide noised to that step's level, and pasted at the end (inpainting's
replacement, :mod:`.inpainting`, with r = 1 from the start level).

With the exact score and the ancestral sampler, walking from a given x_t draws x0 from the
exact posterior p(x0 | x_t) of the data (up to the sampler's discretization);
``tests/test_edit.py`` checks it against the closed form for a Gaussian mixture.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..reverse import Model
from ..samplers.noise import Generators, randn
from ..schedules import Schedule
from .driver import Callback, Level, build, check_mask, levels, noised, walk


def start_position(n: int, strength: float) -> int:
    """Where img2img starts among the sampler's n levels: n - round(strength n) (module doc);
    n means "no step" and 0 "from pure noise"."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) \
            or not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")
    return n - int(math.floor(strength * n + 0.5))


def img2img(model: Model, schedule: Schedule, x_guide: torch.Tensor, strength: float, *,
            mask: torch.Tensor | None = None, sampler: str = "ddpm", steps: int | None = None,
            generator: Generators = None, noise: torch.Tensor | None = None,
            spacing: str | None = None, callback: Callback | None = None,
            **sampling: Any) -> torch.Tensor:
    """Edit ``x_guide`` ``[N, *]``: noise it to the level ``strength`` names and sample back.

    ``strength`` in [0, 1] (module doc: 0 returns the guide, 1 samples from pure noise like
    ``sample()``); ``mask`` (1 = edit) restricts the edit to a region. ``noise`` (standard
    normal, ``x_guide``'s shape) replaces the draw of the starting noise from ``generator``.
    ``sampler``, ``steps``, ``spacing`` and ``sampling`` (eta, variance, prediction, y,
    guidance, null_class, guide, guide_weight, guidance_interval, clip_x0, options,
    learn_sigma) are ``sample()``'s.
    """
    m = check_mask(mask, x_guide)
    ts = levels(schedule, sampler, steps, spacing)
    p0 = start_position(len(ts), strength)
    if p0 == len(ts):
        return x_guide.clone()
    drv = build(model, schedule, x_guide, sampler=sampler, generator=generator,
                steps_in_call=len(ts) - p0, **sampling)
    if noise is None:
        noise = randn(x_guide.shape, generator, x_guide.device, x_guide.dtype)
    x = noise.to(x_guide) if p0 == 0 else noised(drv.ctx.schedule, x_guide, ts[p0], noise)
    return walk(drv, x, [*ts[p0:], -1], known=x_guide if m is not None else None, mask=m,
                callback=callback)


def path_from(ts: list[Level], t: Level) -> list[Level]:
    """``t``, then the sampler's levels below it, then x0 (-1)."""
    return [t, *[s for s in ts if s < t], -1]


def denoise_from(model: Model, schedule: Schedule, x_t: torch.Tensor, t: Level, *,
                 sampler: str = "ddpm", steps: int | None = None, generator: Generators = None,
                 spacing: str | None = None, callback: Callback | None = None,
                 **sampling: Any) -> torch.Tensor:
    """Sample x0 given x_t at index ``t``: one step from ``t`` to the sampler's next level
    below it, then its usual levels down to x0 (all of t, t-1, ..., 0 with ``steps=None``).
    With the exact score and the ancestral sampler this draws p(x0 | x_t)."""
    ts = levels(schedule, sampler, steps, spacing)
    if not -1 < t <= schedule.T - 1:
        raise ValueError(f"t must be an index in [0, {schedule.T - 1}], got {t!r}")
    path = path_from(ts, t)
    drv = build(model, schedule, x_t, sampler=sampler, generator=generator,
                steps_in_call=len(path) - 1, **sampling)
    return walk(drv, x_t, path, callback=callback)
