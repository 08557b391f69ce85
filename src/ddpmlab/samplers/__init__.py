"""[seed 5] Sampling: from pure noise x_T ~ N(0, I) at t = T down to x0.

One entry point, :func:`sample`, over three samplers that are plain functions of
``(model, schedule, x, t, t_prev)``:

* ``"ddpm"``: ancestral sampling (Ho et al. Algorithm 2), variance ``"small"`` or ``"large"``;
* ``"ddim"``: DDIM with ``eta`` (0 = deterministic);
* ``"dpm_solver"``: DPM-Solver++(2M), deterministic, good in 10-20 steps.

Every sampler walks explicit (t, t_prev) pairs (:mod:`.spacing`), passes the original index to
the model, adds no noise at the final step, and works for any shape ``[N, *]`` and any callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..parametrization import check_prediction
from ..reverse import Model, check_variance
from ..schedules import Schedule
from .ancestral import ddpm_step
from .ddim import ddim_step
from .dpm_solver import DPMSolverState, dpm_solver_step
from .guidance import classifier_free_guidance
from .noise import Generators, per_sample_generators, randn
from .spacing import SPACINGS, timestep_pairs, timesteps

SAMPLERS = ("ddpm", "ddim", "dpm_solver")

__all__ = [
    "SAMPLERS", "SPACINGS", "sample", "ddpm_step", "ddim_step", "dpm_solver_step",
    "DPMSolverState", "classifier_free_guidance", "timestep_pairs", "timesteps",
    "per_sample_generators", "randn",
]


def _check_shape(shape: Any) -> tuple[int, ...]:
    if (not isinstance(shape, (tuple, list, torch.Size)) or len(shape) < 1
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)):
        raise ValueError(f"shape must be a tuple of positive ints like (n, 2), got {shape!r}")
    return tuple(int(d) for d in shape)


def sample(
    model: Model,
    schedule: Schedule,
    shape: Sequence[int] | None = None,
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    variance: str = "small",
    prediction: str = "eps",
    y: torch.Tensor | int | None = None,
    guidance: float = 1.0,
    x_T: torch.Tensor | None = None,
    generator: Generators = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    clip_x0: bool = False,
    spacing: str = "logsnr",
    null_class: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Draw samples x0 of ``shape`` ``(n, *dims)`` from ``model`` by the named ``sampler``.

    ``model(x_t, t)`` (or ``model(x_t, t, y)`` when ``y`` is given) returns the ``prediction``
    (``"eps"``, ``"x0"`` or ``"v"``); ``t`` is the int64 original index in ``[0, T)``.
    ``steps=None`` walks all T steps; fewer steps use ``spacing`` (``"logsnr"``, the default,
    ``"trailing"`` or ``"uniform"``; see :mod:`.spacing`).
    ``eta`` is DDIM's stochasticity; ``variance`` is DDPM's (``"small"`` = posterior,
    ``"large"`` = beta). ``y`` (labels ``[n]`` or one int) with ``guidance`` w applies
    classifier-free guidance ``pred_u + w (pred_c - pred_u)``. ``x_T`` is the starting noise;
    otherwise it is drawn from ``generator`` (one ``torch.Generator`` or one per sample).
    ``callback(info)`` gets ``i``, ``t``, ``t_prev``, ``x`` (x_t), ``x0_hat`` and ``x_next`` at
    every step. ``dtype`` defaults to ``x_T``'s, else float32. Runs under ``torch.inference_mode``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    check_prediction(prediction)
    check_variance(variance)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
        raise ValueError(f"eta must be a number >= 0, got {eta!r}")
    if not isinstance(guidance, (int, float)) or not guidance >= 0:
        raise ValueError(f"guidance must be a number >= 0, got {guidance!r}")
    pairs = timestep_pairs(schedule.T, steps, spacing, schedule.log_snr.tolist())
    if x_T is None:
        if shape is None:
            raise ValueError("give either shape or x_T")
        shape = _check_shape(shape)
        x = randn(shape, generator, device, dtype or torch.float32)
    else:
        if shape is not None and tuple(x_T.shape) != _check_shape(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)}")
        x = x_T.to(device=device or x_T.device, dtype=dtype or x_T.dtype)
    sched = schedule.to(x.device)
    net: Model = model
    cond_y: torch.Tensor | None = None
    if y is not None:
        yt = torch.as_tensor(y, dtype=torch.long, device=x.device)
        if yt.ndim == 0:
            yt = yt.expand(x.shape[0])
        if yt.shape != (x.shape[0],):
            raise ValueError(f"y must be one label or {x.shape[0]} labels, got {tuple(yt.shape)}")
        if guidance == 1.0:
            cond_y = yt
        else:
            net = classifier_free_guidance(model, yt, float(guidance), null_class)
    state = DPMSolverState()
    iterator: Any = pairs
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(pairs, desc=f"sampling ({sampler})", unit="step", leave=False)
    common = dict(prediction=prediction, clip_x0=clip_x0, y=cond_y)
    with torch.inference_mode():
        for i, (t, t_prev) in enumerate(iterator):
            if sampler == "ddpm":
                x_next, x0_hat = ddpm_step(net, sched, x, t, t_prev, variance=variance,
                                           generator=generator, **common)
            elif sampler == "ddim":
                x_next, x0_hat = ddim_step(net, sched, x, t, t_prev, eta=float(eta),
                                           generator=generator, **common)
            else:
                x_next, x0_hat = dpm_solver_step(net, sched, x, t, t_prev, state, **common)
            if callback is not None:
                callback({"i": i, "t": t, "t_prev": t_prev, "x": x, "x0_hat": x0_hat,
                          "x_next": x_next})
            x = x_next
    return x
