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

**EDM** (Karras et al. 2022, https://arxiv.org/abs/2206.00364, Table 1 and sec. 5), with
sd = ``sigma_data``::

    c_skip = sd^2 / (s^2 + sd^2)     c_out = s sd / sqrt(s^2 + sd^2)
    c_in   = 1 / sqrt(s^2 + sd^2)    c_noise = ln(s) / 4
    ln s ~ N(P_mean = -1.2, P_std^2 = 1.2^2),  lambda(s) = (s^2 + sd^2) / (s sd)^2

(P_mean and P_std are EDM's CIFAR-10 values and the defaults of ``diffusion.p_mean`` and
``diffusion.p_std``.)

The network sees c_noise through its sinusoidal embedding as EDM's ADM network does. The loss
is the mean over the elements (EDM sums them: a constant factor). With this weighting the
network's effective target (x0 - c_skip x) / c_out has unit variance at every s when the data
have variance sd^2 (EDM sec. 5, checked in closed form by the tests).

**Flow matching / rectified flow** (Lipman et al. 2023, https://arxiv.org/abs/2210.02747; Liu
et al. 2023, https://arxiv.org/abs/2209.03003): x_t = (1 - t) x0 + t eps for t in [0, 1], the
target velocity v = dx_t / dt = eps - x0, and x0 = x_t - t v, eps = x_t + (1 - t) v. t is
``uniform`` on [0, 1] or ``logit_normal`` (t = sigmoid(n), n ~ N(0, 1): Esser et al. 2024, SD3,
sec. 3.1). The network sees 1000 t (:data:`FLOW_TIME_SCALE`: the range of DDPM's indices)
through its sinusoidal embedding. Sampling integrates dx/dt = v from t = 1 to 0.

**How every sampler samples every objective.** The samplers (:mod:`ddpmlab.samplers`) walk
(fractional) indices of a discrete :class:`~ddpmlab.schedules.Schedule` and need a model that
predicts eps, x0 or v of the variance-preserving x_vp = (x0 + s eps) / sqrt(1 + s^2) at the
index's noise level s = sigma_at(index) (log s linear between indices). So an objective is
given to them as two things:

* a **noise-level grid** (:func:`noise_grid`): a Schedule whose T levels s_i are the
  objective's, built through :func:`ddpmlab.schedules.from_betas` (abar_i = 1 / (1 + s_i^2)):
  ``edm``: s_i geometric from ``EDM_SIGMA_MIN`` = 0.002 to ``EDM_SIGMA_MAX`` = 80, so log s is
  linear in the index everywhere and the ``karras`` spacing gives exactly EDM's rho = 7 steps
  (with ``heun``: EDM Algorithm 1); ``flow``: t_i = (i + 1) / (T + 1), s_i = t_i / (1 - t_i)
  (the flow's own times, equally spaced; t = 1, s = infinity, is not a level: the samplers
  start at t_{T-1} = T / (T + 1), where x_vp differs from pure noise by t-1 ~ 1e-3 of x0,
  less than DDPM's own sqrt(abar_{T-1}) ~ 6e-3);
* a **model wrapper** (:func:`sampler_model`) that turns the network into an x0 predictor at
  an index: x_vp -> s -> (x0 + s eps) -> the network's input -> D (EDM) or x_t - t v (flow).
  Guidance (:func:`ddpmlab.samplers.classifier_free_guidance`) then guides that x0, which is
  affine in the network's output for a fixed x: the same as guiding F or v.

Euler on this view is exactly Euler on the flow ODE dx/dt = v: both hold (x0_hat, eps_hat) of
the current point fixed and move along the straight line x(t) = (1 - t) x0_hat + t eps_hat
(x_ve = x0_hat + s eps_hat), so ``euler`` is the flow's Euler sampler (tested to round-off).
The ``heun`` sampler is Heun's method on the same ODE in s; ``flow_heun`` is Heun in the flow's
time t (the rectified-flow samplers'). Both are second order.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .schedules import Schedule, from_betas, get, sigma_at

OBJECTIVES = ("ddpm", "edm", "flow")           # the owner of diffusion.objective's choices
FLOW_TIMES = ("uniform", "logit_normal")       # the owner of diffusion.flow_t's choices

EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0     # EDM's sigma range (Karras et al. 2022, Table 1)
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2              # ln sigma ~ N(P_mean, P_std^2) in training
                                               # (EDM's; diffusion.p_mean / p_std change them)
FLOW_TIME_SCALE = 1000.0                       # the network sees 1000 t


def check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    return objective


def _expand(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[N]`` -> ``[N, 1, ...]`` against ``x``, in x's dtype and device."""
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))


# ============================================================================ noise-level grids
def _from_sigmas(sigmas: torch.Tensor, name: str) -> Schedule:
    """The Schedule whose VE levels are the increasing ``sigmas`` (abar = 1 / (1 + s^2))."""
    abar = 1.0 / (1.0 + sigmas * sigmas)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return from_betas(1.0 - abar / prev, name=name)


def edm_sigmas(T: int) -> torch.Tensor:
    """EDM's grid: T levels geometric from 0.002 to 80 (float64; T = 1: just 80)."""
    if T == 1:
        return torch.tensor([EDM_SIGMA_MAX], dtype=torch.float64)
    i = torch.arange(T, dtype=torch.float64)
    lo, hi = math.log(EDM_SIGMA_MIN), math.log(EDM_SIGMA_MAX)
    return torch.exp(lo + i / (T - 1) * (hi - lo))


def flow_times(T: int) -> torch.Tensor:
    """The flow's grid times t_i = (i + 1) / (T + 1), i = 0..T-1 (float64)."""
    return torch.arange(1, T + 1, dtype=torch.float64) / (T + 1)


def noise_grid(objective: str, T: int) -> Schedule:
    """The Schedule the samplers walk for ``edm`` or ``flow`` (see the module docstring)."""
    check_objective(objective)
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T (the number of noise levels) must be an integer >= 1, got {T!r}")
    if objective == "edm":
        return _from_sigmas(edm_sigmas(T), "edm")
    if objective == "flow":
        t = flow_times(T)
        return _from_sigmas(t / (1.0 - t), "flow")
    raise ValueError("objective 'ddpm' has a named schedule, not a grid (use schedule_for)")


def schedule_for(objective: str, schedule: str, T: int) -> Schedule:
    """What a run's samplers, forward process and figures use: the named schedule for
    ``ddpm``, the objective's :func:`noise_grid` otherwise."""
    if check_objective(objective) == "ddpm":
        return get(schedule, T)
    return noise_grid(objective, T)


# ============================================================================ EDM
def edm_precond(sigma: torch.Tensor, sigma_data: float = 0.5):
    """(c_skip, c_out, c_in, c_noise) at noise levels ``sigma`` (EDM Table 1), elementwise."""
    s2, sd2 = sigma * sigma, sigma_data * sigma_data
    root = torch.sqrt(s2 + sd2)
    return sd2 / (s2 + sd2), sigma * sigma_data / root, 1.0 / root, torch.log(sigma) / 4.0


def edm_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM's loss weight lambda(s) = (s^2 + sd^2) / (s sd)^2 = 1 / c_out^2."""
    return (sigma * sigma + sigma_data * sigma_data) / (sigma * sigma_data) ** 2


def _call(net: Callable, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None):
    return net(x, t) if y is None else net(x, t, y)


def edm_denoise(net: Callable, x: torch.Tensor, sigma: torch.Tensor,
                y: torch.Tensor | None = None, sigma_data: float = 0.5) -> torch.Tensor:
    """D(x, s) = c_skip x + c_out F(c_in x, c_noise) for x = x0 + s eps, ``sigma`` ``[N]``."""
    c_skip, c_out, c_in, c_noise = edm_precond(sigma, sigma_data)
    out = _call(net, _expand(c_in, x) * x, c_noise.to(x.device), y)
    return _expand(c_skip, x) * x + _expand(c_out, x) * out


def edm_loss(net: Callable, x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor,
             y: torch.Tensor | None = None, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM's loss per sample ``[N]``: lambda(s) mean((D(x0 + s eps, s) - x0)^2)."""
    x = x0 + _expand(sigma, x0) * eps
    err = (edm_denoise(net, x, sigma, y, sigma_data) - x0) ** 2
    return edm_weight(sigma, sigma_data).to(err.dtype) * err.reshape(err.shape[0], -1).mean(1)


# ============================================================================ flow matching
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


# ============================================================================ training
def draw_levels(objective: str, generator: torch.Generator, batch: int,
                flow_t: str = "uniform", dtype: torch.dtype = torch.float32,
                p_mean: float = EDM_P_MEAN, p_std: float = EDM_P_STD) -> torch.Tensor:
    """A training batch's noise levels ``[B]`` on ``generator.device``: the flow's t
    (``flow_t``: uniform on [0, 1) or sigmoid of N(0, 1)), or EDM's s = exp(P_mean + P_std n)
    (``p_mean``, ``p_std``: EDM's -1.2 and 1.2 unless the run sets ``diffusion.p_mean/p_std``)."""
    gdev = generator.device
    if objective == "flow":
        if flow_t not in FLOW_TIMES:
            raise ValueError(f"unknown flow_t {flow_t!r}; choose one of {', '.join(FLOW_TIMES)}")
        if flow_t == "uniform":
            return torch.rand(batch, generator=generator, device=gdev, dtype=dtype)
        return torch.sigmoid(torch.randn(batch, generator=generator, device=gdev, dtype=dtype))
    if objective == "edm":
        n = torch.randn(batch, generator=generator, device=gdev, dtype=dtype)
        return torch.exp(p_mean + p_std * n)
    raise ValueError(f"objective {objective!r} draws integer timesteps (ddpmlab.train.step.draw)")


def objective_loss(net: Callable, objective: str, x0: torch.Tensor, level: torch.Tensor,
                   eps: torch.Tensor, y: torch.Tensor | None = None,
                   sigma_data: float = 0.5) -> torch.Tensor:
    """The per-sample loss ``[N]`` of ``edm`` (``level`` = s) or ``flow`` (``level`` = t)."""
    if objective == "edm":
        return edm_loss(net, x0, level, eps, y, sigma_data)
    if objective == "flow":
        return flow_loss(net, x0, level, eps, y)
    raise ValueError(f"objective {objective!r} trains through ddpmlab.losses.diffusion_loss")


# ============================================================================ sampling
def sampler_model(net: Callable, objective: str, schedule: Schedule,
                  sigma_data: float = 0.5) -> Callable:
    """``net`` as a model the samplers call, ``model(x_vp, index, y=None) -> x0_hat`` at the
    noise level s = sigma_at(schedule, index) (use ``prediction="x0"``). ``ddpm``: ``net``
    itself (it already predicts what ``diffusion.prediction`` names)."""
    if check_objective(objective) == "ddpm":
        return net

    def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        s = sigma_at(schedule, t.to(torch.float64))                 # [N] float64
        x_ve = x * _expand(torch.sqrt(1.0 + s * s), x)              # x0 + s eps
        if objective == "edm":
            return edm_denoise(net, x_ve, s, y, sigma_data)
        tf = s / (1.0 + s)                                          # the flow's t
        x_t = x_ve * _expand(1.0 - tf, x)                           # (1 - t) x0 + t eps
        v = _call(net, x_t, FLOW_TIME_SCALE * tf.to(x.device), y)
        return x_t - _expand(tf, x) * v

    return model


def sampler_prediction(objective: str, prediction: str) -> str:
    """The prediction :func:`sampler_model`'s model returns: ``prediction`` for ddpm, x0 else."""
    return prediction if check_objective(objective) == "ddpm" else "x0"
