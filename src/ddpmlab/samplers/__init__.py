"""[seed 5] Sampling: from pure noise x_T ~ N(0, I) at t = T down to x0.

One entry point, :func:`sample`, over the samplers of :data:`SAMPLERS`, each a step function
``step(ctx, x, t, t_prev, state) -> (x_next, x0_hat)`` in a file of its own (:mod:`.base`
states the contract):

* ``"ddpm"``: ancestral sampling (Ho et al. Algorithm 2), variance ``"small"`` or ``"large"``;
* ``"ddim"``: DDIM with ``eta`` (0 = deterministic);
* ``"dpm_solver"``: DPM-Solver++(2M), deterministic, good in 10-20 steps;
* ``"euler"``, ``"heun"`` (EDM), ``"euler_ancestral"``, ``"dpmpp_2m_sde"``, ``"dpmpp_3m_sde"``,
  ``"unipc"``: the sigma-space samplers of k-diffusion, EDM and diffusers, on Karras et al.'s
  rho = 7 spacing by default (fractional indices);
* ``"flow_heun"``: Heun on the rectified-flow ODE dx/dt = v in the flow's time t (flow matching's
  sampler; any objective).

Every sampler walks explicit (t, t_prev) pairs (:mod:`.spacing`), passes the original index to
the model, adds no noise at the final step, and works for any shape ``[N, *]`` and any callable.
Adding a sampler is one new file with its step function and one line in :data:`SAMPLERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..parametrization import check_prediction
from ..reverse import Model, check_variance
from ..schedules import Schedule
from .ancestral import ddpm_step
from .base import Prediction, SamplerInfo, Step, StepContext
from .consistency import consistency_step
from .ddim import ddim_step
from .dpm_solver import dpm_solver_step
from .dpmpp_2m_sde import dpmpp_2m_sde_step
from .dpmpp_3m_sde import dpmpp_3m_sde_step
from .euler import euler_step
from .euler_ancestral import euler_ancestral_step
from .flow_heun import flow_heun_step
from .guidance import autoguidance, classifier_free_guidance, guided_model, images_per_evaluation
from .heun import heun_step
from .noise import Generators, per_sample_generators, randn
from .spacing import SPACINGS, timestep_pairs, timesteps
from .unipc import unipc_step

# The owner of the sampler choices: name -> step function (config, CLI and docs read it).
SAMPLERS: dict[str, Step] = {
    "ddpm": ddpm_step,
    "ddim": ddim_step,
    "dpm_solver": dpm_solver_step,
    "euler": euler_step,
    "heun": heun_step,
    "euler_ancestral": euler_ancestral_step,
    "dpmpp_2m_sde": dpmpp_2m_sde_step,
    "dpmpp_3m_sde": dpmpp_3m_sde_step,
    "unipc": unipc_step,
    "flow_heun": flow_heun_step,
    "consistency": consistency_step,
}

__all__ = [
    "SAMPLERS", "SPACINGS", "Prediction", "SamplerInfo", "Step", "StepContext", "sample",
    "ddpm_step", "ddim_step", "dpm_solver_step", "euler_step", "heun_step",
    "euler_ancestral_step", "dpmpp_2m_sde_step", "dpmpp_3m_sde_step", "unipc_step",
    "flow_heun_step",
    "autoguidance", "classifier_free_guidance", "guided_model", "images_per_evaluation",
    "timestep_pairs", "timesteps", "per_sample_generators", "randn", "check_settings", "step_context",
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
    eta: float | None = None,
    variance: str = "small",
    prediction: str = "eps",
    y: torch.Tensor | int | None = None,
    guidance: float = 1.0,
    x_T: torch.Tensor | None = None,
    generator: Generators = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    clip_x0: bool = False,
    spacing: str | None = None,
    null_class: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    options: dict[str, Any] | None = None,
    learn_sigma: bool = False,
    guide: Model | None = None,
    guide_weight: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Draw samples x0 of ``shape`` ``(n, *dims)`` from ``model`` by the named ``sampler``.

    ``model(x_t, t)`` (or ``model(x_t, t, y)`` when ``y`` is given) returns the ``prediction``
    (``"eps"``, ``"x0"`` or ``"v"``); ``t`` is the original index in ``[0, T)``: int64, or
    float64 for a fractional spacing (``"karras"``), where abar comes from log sigma
    interpolated linearly between the neighbouring indices. ``steps=None`` walks all T steps;
    fewer steps use ``spacing`` (``"logsnr"``, ``"trailing"``, ``"uniform"`` or ``"karras"``;
    None: the sampler's default, ``ddpmlab samplers`` lists them; see :mod:`.spacing`).
    ``eta`` is the share of ancestral noise of DDIM (default 0) and of the ancestral and SDE
    samplers (default 1); None: the sampler's default. ``variance`` is DDPM's (``"small"`` =
    posterior, ``"large"`` = beta). ``options`` are sampler-specific settings (Heun:
    ``churn``, ``s_tmin``, ``s_tmax``, ``s_noise``, EDM Algorithm 2). ``y`` (labels ``[n]``
    or one int) with ``guidance`` w applies classifier-free guidance
    ``pred_u + w (pred_c - pred_u)``. ``guide`` (a weaker model of the same task and
    signature) with ``guide_weight`` w_g applies autoguidance ``pred_g + w_g (pred_c - pred_g)``
    (with labels and ``guidance`` != 1 as well, both directions add; :mod:`.guidance`).
    ``guidance_interval=(sigma_lo, sigma_hi)`` guides only where ``sigma_lo < sigma_t <=
    sigma_hi`` (sigma of ``schedule`` at the step's index) and uses the plain conditional
    prediction elsewhere. ``x_T`` is the starting noise; otherwise it is drawn
    from ``generator`` (one ``torch.Generator`` or one per sample). ``callback(info)`` gets
    ``i``, ``t``, ``t_prev``, ``steps`` (how many steps the call walks), ``nfe`` (network
    evaluations so far), ``x`` (x_t), ``x0_hat`` and ``x_next`` at every step. ``dtype``
    defaults to ``x_T``'s, else float32. ``learn_sigma``: the model returns the prediction and
    its variance values stacked on the channel axis (``[N, 2C, ...]``, improved DDPM); the
    ancestral sampler (``"ddpm"``) then uses the model's variance instead of ``variance``, and
    every other sampler the prediction half alone. Runs under ``torch.inference_mode``.
    """
    step = check_settings(sampler, prediction, variance, eta, guidance)
    spacing = spacing or step.info.spacing
    pairs = timestep_pairs(schedule.T, steps, spacing, schedule.log_snr.tolist())
    x = _start(shape, x_T, generator, device, dtype)
    ctx, nfe = step_context(model, schedule.to(x.device), x, y=y, guidance=guidance,
                            null_class=null_class, learn_sigma=learn_sigma, guide=guide,
                            guide_weight=guide_weight, guidance_interval=guidance_interval,
                            prediction=prediction, clip_x0=clip_x0, generator=generator,
                            eta=eta, variance=variance, steps=len(pairs), options=options)
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=step.info.nfe(len(pairs)), desc=f"sampling ({sampler})", unit="NFE",
                   leave=False)
    try:
        return _walk(step, ctx, x, pairs, nfe, callback, bar)
    finally:
        if bar is not None:
            bar.close()


def step_context(model: Model, sched: Schedule, x: torch.Tensor, *,
                 y: torch.Tensor | int | None, guidance: float, null_class: int | None,
                 learn_sigma: bool, guide: Model | None, guide_weight: float,
                 guidance_interval: tuple[float, float] | None, prediction: str, clip_x0: bool,
                 generator: Generators, eta: float | None, variance: str, steps: int,
                 options: dict[str, Any] | None) -> tuple[StepContext, list[int]]:
    """The :class:`StepContext` of a call on a batch like ``x`` (``sched`` on x's device):
    the labels checked, the guidance decided once (:func:`guided_model`), the model wrapped in
    a counter; returns the context and the counter (``[network calls so far]``). ``sample()``
    and the editing driver both build theirs here."""
    yt = _labels(y, x.shape[0], x.device)
    net, cond_y = guided_model(model, yt, float(guidance), null_class=null_class,
                               learn_sigma=learn_sigma, guide=guide, guide_weight=guide_weight,
                               interval=guidance_interval, schedule=sched)
    calls = [0]

    def counted(*args: Any) -> torch.Tensor:
        calls[0] += 1
        return net(*args)

    ctx = StepContext(counted, sched, prediction=prediction, clip_x0=clip_x0, y=cond_y,
                      generator=generator, eta=None if eta is None else float(eta),
                      variance=variance, steps=int(steps), options=dict(options or {}),
                      learn_sigma=bool(learn_sigma))
    return ctx, calls


def _walk(step: Step, ctx: StepContext, x: torch.Tensor, pairs: list, nfe: list[int],
          callback: Callable[[dict[str, Any]], None] | None, bar: Any) -> torch.Tensor:
    """The loop of :func:`sample`: ``x, x0_hat = step(ctx, x, t, t_prev, state)`` over the
    pairs, the callback after each step (``nfe[0]`` counts the network calls so far)."""
    state: dict[str, Any] = {}
    with torch.inference_mode():
        for i, (t, t_prev) in enumerate(pairs):
            before = nfe[0]
            x_next, x0_hat = step(ctx, x, t, t_prev, state)
            if bar is not None:
                bar.update(nfe[0] - before)
            if callback is not None:
                callback({"i": i, "t": t, "t_prev": t_prev, "steps": len(pairs),
                          "nfe": nfe[0], "x": x, "x0_hat": x0_hat, "x_next": x_next})
            x = x_next
    return x


def check_settings(sampler: str, prediction: str, variance: str, eta: Any,
                   guidance: Any) -> Step:
    """:func:`sample`'s checks of the sampling settings (also the editing driver's); returns
    the sampler's step function."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    check_prediction(prediction)
    check_variance(variance)
    if eta is not None and (isinstance(eta, bool) or not isinstance(eta, (int, float))
                            or not eta >= 0 or eta == float("inf")):
        raise ValueError(f"eta must be a number >= 0, got {eta!r}")
    if not isinstance(guidance, (int, float)) or not guidance >= 0:
        raise ValueError(f"guidance must be a number >= 0, got {guidance!r}")
    return SAMPLERS[sampler]


def _start(shape: Sequence[int] | None, x_T: torch.Tensor | None, generator: Generators,
           device: torch.device | str | None, dtype: torch.dtype | None) -> torch.Tensor:
    """The starting noise: ``x_T`` (moved to ``device``/``dtype``) or drawn for ``shape``."""
    if x_T is None:
        if shape is None:
            raise ValueError("give either shape or x_T")
        return randn(_check_shape(shape), generator, device, dtype or torch.float32)
    if shape is not None and tuple(x_T.shape) != _check_shape(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)}")
    return x_T.to(device=device or x_T.device, dtype=dtype or x_T.dtype)


def _labels(y: torch.Tensor | int | None, n: int, device: torch.device) -> torch.Tensor | None:
    """``y`` as ``n`` int64 labels on ``device`` (one int is repeated); None stays None."""
    if y is None:
        return None
    yt = torch.as_tensor(y, dtype=torch.long, device=device)
    if yt.ndim == 0:
        yt = yt.expand(n)
    if yt.shape != (n,):
        raise ValueError(f"y must be one label or {n} labels, got {tuple(yt.shape)}")
    return yt
