r"""Deterministic inversion x0 -> x_T and regeneration x_T -> x0 on the probability-flow ODE.

:func:`invert` runs a deterministic sampler **backwards** over the very levels the same sampler
visits forwards (``-1 -> tau_{n-1} -> ... -> tau_0``), so that :func:`regenerate` (that sampler,
``sample()`` with eta = 0, from x_T) retraces it. Two solvers (:data:`INVERTERS`):

* ``"ddim"``: DDIM with eta = 0 run upwards (Song et al. 2021, sec. 4.3; Dhariwal & Nichol
  2021, App. F), x_b = sqrt(abar_b) x0_hat(x_a, a) + sqrt(1 - abar_b) eps_hat(x_a, a): the
  model is evaluated at the **current** (lower) level a, the explicit Euler step of the ODE
  dy/dsigma = eps_hat in the VE view y = x / sqrt(abar);
* ``"dpm_solver"``: DPM-Solver++(2M) run upwards (Lu et al. 2022): the very step function of
  sampling (:func:`ddpmlab.samplers.dpm_solver_step`) with a negative step h in lambda; second
  order, after one first-order step (its history is empty at the start).

**The first step** (diffusers#5145 changed it): from x0 (level -1, sigma = 0) to tau_{n-1}. x0
is the data itself (x0_hat = x0 exactly) and eps_hat is the model's at the lowest trained index
0 evaluated on x0 (the nearest defined level to sigma = 0; no index -1 is ever passed):
x = sqrt(abar) x0 + sqrt(1 - abar) eps_hat(x0, 0). Both solvers take this step.
**Clipping**: inversion never clips x0_hat (a clipped x0_hat is not the ODE's, and an image
with pixels near +-1 would not come back; diffusers' inverse scheduler clipped by default);
``clip_x0`` is refused.

Reconstruction is exact in exact arithmetic only where the model's field is constant along each
step (a point mass: every state of the inversion is revisited by the regeneration, to float
tolerance); otherwise its error falls with the number of steps at the solver's order
(``tests/test_edit.py``).

**Guidance.** ``y`` with ``guidance`` = 1 inverts the conditional model's ODE, as exactly as
the unconditional one. With guidance w != 1 (or autoguidance, or a guidance interval) both
directions follow the guided field pred_u + w (pred_c - pred_u), which is not the noised score
of any one distribution (Ho & Salimans 2022): each explicit step evaluates it at the other end
of its interval than the step that undoes it, and with w > 1 the field changes faster and
amplifies the mismatch, so reconstruction is **not exact** and degrades as w grows at a fixed
number of steps (what null-text inversion, Mokady et al. 2023, repairs;
``tests/test_edit.py`` measures it). Invert and regenerate with the same labels and guidance.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..reverse import Model
from ..samplers import dpm_solver_step, sample
from ..samplers.base import StepContext
from ..schedules import Schedule
from .driver import Callback, Driver, Level, abar, build, levels


def _ddim_up(ctx: StepContext, x: torch.Tensor, t: Level, t_next: Level,
             state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM eta = 0 from level t up to t_next: sqrt(abar') x0_hat + sqrt(1 - abar') eps_hat."""
    pred = ctx.predict(x, t)
    ab = abar(ctx.schedule, t_next)
    return math.sqrt(ab) * pred.x0 + math.sqrt(1.0 - ab) * pred.eps, pred.x0


# The owner of the inversion choices: sampler name -> its step run upwards.
INVERTERS = {"ddim": _ddim_up, "dpm_solver": dpm_solver_step}


def first_step(drv: Driver, x0: torch.Tensor, t_next: Level) -> torch.Tensor:
    """x0 (level -1) -> level ``t_next``: x0_hat = x0, eps_hat = the model's at index 0 on x0."""
    pred = drv.ctx.predict(x0, 0)
    ab = abar(drv.ctx.schedule, t_next)
    return math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * pred.eps


def _check(sampler: str, sampling: dict) -> None:
    if sampler not in INVERTERS:
        raise ValueError(f"inversion uses a deterministic solver: one of {', '.join(INVERTERS)}; "
                         f"got {sampler!r}")
    if sampling.get("clip_x0"):
        raise ValueError("inversion never clips x0_hat (clip_x0 must be False)")
    if sampling.get("eta"):
        raise ValueError("inversion is deterministic: eta must be 0")


def invert(model: Model, schedule: Schedule, x0: torch.Tensor, *, sampler: str = "ddim",
           steps: int | None = None, spacing: str | None = None,
           callback: Callback | None = None, **sampling: Any) -> torch.Tensor:
    """x_T at index tau_0 (the sampler's top level, T - 1) from data ``x0`` ``[N, *]``.

    ``sampler`` in :data:`INVERTERS`; ``steps`` / ``spacing`` as in ``sample()`` (use the same
    in :func:`regenerate`). ``sampling``: ``sample()``'s prediction, y, guidance, null_class,
    guide, guide_weight, guidance_interval, options, learn_sigma (module doc on guidance).
    ``callback(info)`` gets ``i``, ``t``, ``t_next``,
    ``nfe``, ``x``, ``x0_hat`` and ``x_next`` after each step upwards.
    """
    _check(sampler, sampling)
    sampling = {k: v for k, v in sampling.items() if k not in ("clip_x0", "eta")}
    ts = levels(schedule, sampler, steps, spacing)
    up = INVERTERS[sampler]
    drv = build(model, schedule, x0, sampler=sampler, clip_x0=False, steps_in_call=len(ts),
                **sampling)
    path = [-1, *reversed(ts)]
    x = x0
    with torch.inference_mode():
        for i, (a, b) in enumerate(zip(path[:-1], path[1:], strict=True)):
            if a == -1:
                x_next, x0_hat = first_step(drv, x, b), x
            else:
                x_next, x0_hat = up(drv.ctx, x, a, b, drv.state)
            if callback is not None:
                callback({"i": i, "t": a, "t_next": b, "nfe": drv.nfe, "x": x,
                          "x0_hat": x0_hat, "x_next": x_next})
            x = x_next
    return x


def regenerate(model: Model, schedule: Schedule, x_T: torch.Tensor, *, sampler: str = "ddim",
               steps: int | None = None, spacing: str | None = None, **sampling: Any) -> torch.Tensor:
    """x0 from an inverted x_T: ``sample()`` with the same deterministic solver, eta = 0
    (``sampling``: ``sample()``'s prediction, y, guidance, null_class, guide, guide_weight,
    guidance_interval, options, learn_sigma, callback)."""
    _check(sampler, sampling)
    sampling = {k: v for k, v in sampling.items() if k not in ("clip_x0", "eta")}
    return sample(model, schedule, x_T=x_T, sampler=sampler, steps=steps, spacing=spacing,
                  eta=0.0, **sampling)
