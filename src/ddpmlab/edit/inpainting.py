r"""Inpainting by RePaint (Lugmayr et al. 2022, https://arxiv.org/abs/2201.09865, Alg. 1).

``mask`` is 1 where pixels are to be generated and 0 where ``x_known`` is kept. The sampler
walks down its usual levels; **before each reverse step the kept pixels are replaced by the
known data noised to that step's level**, x_known,t = sqrt(abar_t) x_known + sqrt(1 - abar_t) z
with fresh noise z (drawn apart from the step's own noise; diffusers' RePaint used the wrong
level until diffusers#1581 and shares one draw between the two parts). After the last step the
known pixels are pasted as they are. Any sampler of :data:`ddpmlab.samplers.SAMPLERS` can make
the steps; a multistep solver restarts its history after each jump.

**The jump schedule, in plain words.** Count the sampler's ``steps`` levels from the data end:
0 (the least noisy) to ``steps - 1`` (pure noise). Every ``jump_length``-th level from the data
end (0, j, 2j, ..., below ``steps - j``) is a *jump point*. Going down, whenever the walk
arrives at a jump point that still has jumps left, it re-noises x from that level back up
``jump_length`` levels with the forward process q(x_{t+j} | x_t) (exact for any skipped chain:
sqrt(abar_{t+j} / abar_t) x_t + sqrt(1 - abar_{t+j} / abar_t) z) and walks those ``jump_length``
levels down again. Each jump point does this ``jump_n_sample - 1`` times, so each stretch of
``jump_length`` levels is traversed ``jump_n_sample`` (r) times in all. The extra passes let the
generated part "harmonize" with the known part: a single pass (r = 1, plain replacement, the
baseline) decides the unknown pixels at high noise before the known ones say much, and stays
biased (``tests/test_edit.py`` measures it on a 2-D mixture with an exact score). This is
RePaint's ``get_schedule_jump`` (``t_T`` = steps, ``jump_length``, ``jump_n_sample``), on the
sampler's own levels; the paper uses 250 levels, j = 10, r = 10.

**Cost.** Reverse steps R = steps + (r - 1) j J, with J = len(range(0, steps - j, j)) jump
points; network evaluations = the sampler's cost of R steps (``info.nfe(R)``: one per step for
DDPM/DDIM, two for Heun); :func:`inpaint_nfe` computes it. Forward jumps cost no evaluation.
So r = 10, j = 10 on 250 levels is 250 + 9 * 10 * 24 = 2410 evaluations, about 10x plain
replacement.
"""

from __future__ import annotations

from typing import Any

import torch

from ..reverse import Model
from ..samplers import SAMPLERS
from ..samplers.noise import Generators, randn
from ..schedules import Schedule
from .driver import Callback, Level, build, check_mask, levels, walk


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def jump_schedule(steps: int, jump_length: int = 1, jump_n_sample: int = 1) -> list[int]:
    """RePaint's walk in positions counted from the data end: ``steps - 1`` (pure noise) down
    to ``-1`` (x0), with the jumps back up (module doc). ``jump_n_sample = 1`` is the plain
    descent ``[steps - 1, ..., 0, -1]``."""
    _check_int("steps", steps)
    _check_int("jump_length", jump_length)
    _check_int("jump_n_sample", jump_n_sample)
    jumps = {j: jump_n_sample - 1 for j in range(0, steps - jump_length, jump_length)}
    t, path = steps, []
    while t >= 1:
        t -= 1
        path.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                path.append(t)
    path.append(-1)
    return path


def inpaint_nfe(steps: int, jump_length: int = 1, jump_n_sample: int = 1,
                sampler: str = "ddpm") -> int:
    """The exact number of network evaluations of :func:`inpaint` (without guidance's doubling
    when its two halves run apart): the sampler's cost of the R reverse steps of the walk."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    path = jump_schedule(steps, jump_length, jump_n_sample)
    reverse_steps = sum(1 for a, b in zip(path[:-1], path[1:], strict=True) if b < a)
    return SAMPLERS[sampler].info.nfe(reverse_steps)


def level_path(ts: list[Level], jump_length: int = 1, jump_n_sample: int = 1) -> list[Level]:
    """The jump schedule on the sampler's levels ``ts`` (descending original indices): position
    p from the data end is ``ts[len(ts) - 1 - p]``, position -1 is x0 (level -1); each run of
    upward moves is one jump."""
    n = len(ts)
    out = [-1 if p < 0 else ts[n - 1 - p] for p in jump_schedule(n, jump_length, jump_n_sample)]
    # one jump of j levels, not j jumps of one level (the same law: q composes exactly)
    return [v for k, v in enumerate(out) if not 0 < k < len(out) - 1 or not out[k - 1] < v < out[k + 1]]


def inpaint(model: Model, schedule: Schedule, x_known: torch.Tensor, mask: torch.Tensor, *,
            sampler: str = "ddpm", steps: int | None = None, jump_length: int = 1,
            jump_n_sample: int = 1, generator: Generators = None, spacing: str | None = None,
            callback: Callback | None = None, **sampling: Any) -> torch.Tensor:
    """Fill the pixels where ``mask`` is 1 so that they agree with ``x_known`` elsewhere.

    ``x_known`` ``[N, *]`` (its values under the mask are ignored), ``mask`` 1 = generate,
    0 = keep, broadcastable to ``x_known``. ``sampler``, ``steps`` and ``spacing`` choose the
    levels as in :func:`ddpmlab.sample`; ``jump_length`` (j) and ``jump_n_sample`` (r) the
    RePaint schedule (module doc; r = 1 is plain replacement); ``inpaint_nfe`` its cost.
    ``sampling``: ``sample()``'s other settings (eta, variance, prediction, y, guidance,
    null_class, guide, guide_weight, guidance_interval, clip_x0, options, learn_sigma).
    Starts from pure noise drawn from ``generator``; returns x0 with the known pixels pasted
    exactly.
    """
    m = check_mask(mask, x_known)
    ts = levels(schedule, sampler, steps, spacing)
    path = level_path(ts, jump_length, jump_n_sample)
    drv = build(model, schedule, x_known, sampler=sampler, generator=generator,
                steps_in_call=len(ts), **sampling)
    x = randn(x_known.shape, generator, x_known.device, x_known.dtype)
    return walk(drv, x, path, known=x_known, mask=m, callback=callback)
