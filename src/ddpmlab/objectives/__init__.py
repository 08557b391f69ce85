r"""Training objectives as one continuous-time family: DDPM, EDM and flow matching.

Every objective noises data the same way, x = alpha x0 + sigma eps, and differs only in how the
noise level is parametrized, how it is drawn in training, what the network outputs and how the
loss is weighted. Dividing by alpha gives the one view under all of them, the
variance-exploding x / alpha = x0 + s eps with s = sigma / alpha (Karras et al. 2022, sec. 2):

=========  =========================  =====================  ==================================
objective  x = alpha x0 + sigma eps   VE noise level s       network output, loss
=========  =========================  =====================  ==================================
``ddpm``   sqrt(abar_t), sqrt(1-abar) sigma_t of the table   eps | x0 | v; :mod:`ddpmlab.losses`
``edm``    1, s                       s                      F, with the denoiser
                                                             D = c_skip x + c_out F(c_in x, c_noise);
                                                             lambda(s) ||D - x0||^2
``flow``   1 - t, t                   t / (1 - t)            v = eps - x0; ||v_hat - v||^2
=========  =========================  =====================  ==================================

Each objective is one class in its own file (:mod:`.ddpm`, :mod:`.edm`, :mod:`.flow`; the base
class and shared helpers in :mod:`.base`), and :data:`OBJECTIVES` maps ``diffusion.objective``'s
values to them. An :class:`~.base.Objective` is built from plain values (:func:`build` reads
them off any object with the attributes its class's ``reads`` names): it gives the run's
:meth:`~.base.Objective.schedule`, draws training levels (:meth:`~.base.Objective.draw_levels`;
their meaning is its ``level_name``: DDPM's index ``t``, EDM's ``sigma``, the flow's ``flow_t``),
computes the per-sample loss (:meth:`~.base.Objective.losses`) and wraps the network for the
samplers (:meth:`~.base.Objective.sampler_model`, :attr:`~.base.Objective.sampler_prediction`).
Adding one is a file with its class, one line in :data:`OBJECTIVES` and its config fields.

**How every sampler samples every objective.** The samplers (:mod:`ddpmlab.samplers`) walk
(fractional) indices of a discrete :class:`~ddpmlab.schedules.Schedule` and need a model that
predicts eps, x0 or v of the variance-preserving x_vp = (x0 + s eps) / sqrt(1 + s^2) at the
index's noise level s = sigma_at(index) (log s linear between indices). So EDM and flow
(:class:`~.base.VEObjective`) are given to them as two things:

* a **noise-level grid** (their ``schedule()``): a Schedule whose T levels s_i are the
  objective's, built through :func:`ddpmlab.schedules.from_betas` (abar_i = 1 / (1 + s_i^2)):
  EDM's geometric sigmas from 0.002 to 80, the flow's t_i = (i + 1) / (T + 1) (see each file);
* a **model wrapper** (their ``sampler_model``) that turns the network into an x0 predictor at
  an index: x_vp -> s -> (x0 + s eps) -> the network's input -> D (EDM) or x_t - t v (flow).
  Guidance (:func:`ddpmlab.samplers.classifier_free_guidance`) then guides that x0, which is
  affine in the network's output for a fixed x: the same as guiding F or v.

DDPM's schedule is its named ``diffusion.schedule`` and its sampler model is the network itself.

Euler on this view is exactly Euler on the flow ODE dx/dt = v: both hold (x0_hat, eps_hat) of
the current point fixed and move along the straight line x(t) = (1 - t) x0_hat + t eps_hat
(x_ve = x0_hat + s eps_hat), so ``euler`` is the flow's Euler sampler (tested to round-off).
The ``heun`` sampler is Heun's method on the same ODE in s; ``flow_heun`` is Heun in the flow's
time t (the rectified-flow samplers'). Both are second order.
"""

from __future__ import annotations

from typing import Any

from .base import Objective, VEObjective, with_augment
from .consistency import Consistency
from .ddpm import DDPM
from .edm import (
    EDM,
    EDM_P_MEAN,
    EDM_P_STD,
    EDM_SIGMA_MAX,
    EDM_SIGMA_MIN,
    edm_denoise,
    edm_loss,
    edm_precond,
    edm_sigmas,
    edm_weight,
)
from .flow import FLOW, FLOW_TIME_SCALE, FLOW_TIMES, flow_interpolate, flow_loss, flow_times

# the owner of diffusion.objective's choices: name -> class
OBJECTIVES: dict[str, type[Objective]] = {"ddpm": DDPM, "edm": EDM, "flow": FLOW,
                                          "consistency": Consistency}


def get(name: str) -> type[Objective]:
    """The class of objective ``name`` (a key of :data:`OBJECTIVES`)."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def build(settings: Any, learn_sigma: bool = False) -> Objective:
    """The objective named by ``settings.objective``, built from ``settings``' ``timesteps``
    and the attributes its class ``reads`` (any object: a ``DiffusionConfig``, a namespace);
    ``learn_sigma`` is ``model.learn_sigma``."""
    return get(settings.objective).from_settings(settings, learn_sigma)


__all__ = [
    "DDPM", "EDM", "EDM_P_MEAN", "EDM_P_STD", "EDM_SIGMA_MAX", "EDM_SIGMA_MIN", "FLOW",
    "FLOW_TIMES", "FLOW_TIME_SCALE", "OBJECTIVES", "Objective", "VEObjective", "build",
    "edm_denoise", "edm_loss", "edm_precond", "edm_sigmas", "edm_weight", "flow_interpolate",
    "flow_loss", "flow_times", "get", "with_augment",
]
