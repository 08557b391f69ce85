r"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, sec. 4.3 and
app. D.2, https://arxiv.org/abs/2011.13456; the trace estimator of FFJORD, Grathwohl et al.
2019, https://arxiv.org/abs/1810.01367).

Notation:

=================  =============================================================================
``s``              the ODE's scalar time; for DDPM ``s = rho = log sigma``
``y``              the state; for DDPM the variance-exploding view y = x_t / sqrt(abar_t) = x0 + sigma eps
``f(y, s)``        the drift dy/ds (a :data:`Drift`: ``(y, s) -> dy/ds``, ``y`` of any shape ``[N, *]``)
``div f``          sum_i df_i / dy_i, per sample ``[N]``
``grid``           the times s_0 < ... < s_n, from the data end s_0 to the prior end s_n
=================  =============================================================================

**The ODE of the discrete DDPM model.** With sigma_t = sqrt((1 - abar_t) / abar_t) the DDPM
marginal in the VE view is p_sigma = p_data * N(0, sigma^2 I), whose score is
grad log p_sigma(y) = -E[eps | y] / sigma. The probability-flow ODE of that family (Karras et
al. 2022 eq. 4 with s(t) = 1, sigma(t) = t) is

    dy/dsigma = -sigma grad log p_sigma(y) = eps_hat(y / sqrt(1 + sigma^2), t(sigma)),

and in rho = log sigma (the variable we step in: the noise levels span four decades)
``dy/drho = sigma eps_hat``. ``t(sigma)`` is the fractional index of the log-sigma
interpolation between trained indices (:func:`ddpmlab.schedules.index_of_sigma`, the inverse of
:func:`~ddpmlab.schedules.sigma_at`); the network is called at ``x_t = y sqrt(abar(sigma))``,
its output converted to eps by :func:`ddpmlab.parametrization.to_x0_eps` (any prediction).
The data end is sigma_min = sigma_0 (index 0, the smallest trained level), the prior end
sigma_max = sigma_{T-1}; the prior of y there is the VP prior x_{T-1} ~ N(0, I) pushed through
y = x sqrt(1 + sigma^2): N(0, (1 + sigma_max^2) I). The likelihood is that of the model's
density at sigma_min, a proper density on R^D.

**Change of variables** (Chen et al. 2018, thm. 1): along a solution y(s),
d log p_s(y(s)) / ds = -div f(y(s), s). Integrated from the data end to the prior end,

    log p_{s_0}(x) = log p_prior(y(s_n)) + int_{s_0}^{s_n} div f(y(s), s) ds,   y(s_0) = x.

``edm`` and ``flow`` runs use this same drift: their objective's ``sampler_model`` makes
their networks x0 predictors on their noise-level grids (a Schedule), so ``ddpm_drift(model,
grid, "x0")`` is their probability-flow ODE too (``tests/test_likelihood_ode.py``). Anything
else plugs in through :func:`ode_log_likelihood` with its own drift ``(x, s) -> dx/ds``, grid
and prior log-density (flow matching in its own time: f = v_hat(x, s), s from ~0 to 1,
prior N(0, I)).

**Divergence.** ``noise=None``: the exact trace, one backward pass per dimension (tests, tiny
data). Otherwise Hutchinson's estimator div f ~ (1/K) sum_k v_k^T (df/dy) v_k with probes v_k of
zero mean and identity covariance (Rademacher by default, or Gaussian), one vector-Jacobian
product each; E[v^T J v] = tr J. The probes are drawn once per solve and kept along the
trajectory (FFJORD's choice), so the estimate is a smooth ODE and its expectation over the
probes is the exact-trace result of the same solver (the trajectory y(s) never sees them).
The drift must treat the samples of a batch independently (a network in eval mode does).

**Solver.** The classical Runge-Kutta method (RK4, order 4) on the augmented state
(y, int div f) with a fixed grid: its error falls ~16x when the steps double (measured in
``tests/test_likelihood_ode.py``; ``ddpmlab eval --nll ode`` reports the result at half the
steps beside it). A fixed grid costs the same 4 n evaluations on every image and rank (an
adaptive solver under DDP hangs when ranks take different step counts, k-diffusion#79).

**Bits/dim.** Uniform dequantization inside the ELBO's bins (:mod:`ddpmlab.likelihood`: pixel
k sits at x0 = k / 127.5 - 1 and its discretized-decoder bin has width 1 / 127.5):
x = x0 + (u - 1/2) / 127.5, u ~ U[0, 1)^D, i.e. the continuous value k + u in [0, 256) mapped
by x = (k + u - 1/2) / 127.5 - 1 (Jacobian 1 / 127.5 per dimension). Then
P(k) = int_bin p(x) dx = 127.5^{-D} E_u p(x) >= 127.5^{-D} exp E_u log p(x) (Jensen), so

    bits/dim = -log p(x) / (D ln 2) + log2(127.5)        (an upper bound on -log2 P(k) / D)

with 8 - log2(256 / 127.5) = log2(127.5) = 6.99435 the constant. score_sde maps k + u to
[-1, 1) with (k + u) / 128 - 1 instead and adds 7; its bins are shifted by half a bin and
1/255 wider than the ones this model was trained on, a difference of 0.0056 bits/dim.

**The gap at the data end.** The bound is tight only where the model's density at sigma_min
is flat across a bin. For a pixel level with no used neighbours (a point mass) the density
there is N(x0, sigma_min^2) and the gap is -log2(h / sigma_min) + log2(2 pi) / 2 +
h^2 / (24 sigma_min^2 ln 2), h = 1 / 127.5: 1.71 bits/dim at DDPM's linear sigma_0 = 0.01,
0.28 at EDM's 0.002, 2.06 at 0.001 (tested). The ELBO's discretized decoder has no such gap;
a variational dequantization (the decoder at index 0, or a truncated normal, Zheng et al.
2023) would close it and is not implemented.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .parametrization import to_x0_eps
from .reverse import Model, call_model, split_output
from .schedules import Schedule, index_of_sigma

Drift = Callable[[torch.Tensor, float], torch.Tensor]      # (y [N, *], s) -> dy/ds
PriorLogp = Callable[[torch.Tensor], torch.Tensor]         # y [N, *] -> log density [N]
NLLS = ("elbo", "ode", "both")       # what `ddpmlab eval --nll` computes
TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
BIN_WIDTH = 1.0 / 127.5                     # one uint8 level in the model range [-1, 1]
DEQUANT_BITS = math.log2(127.5)             # bits/dim = -log p / (D ln 2) + DEQUANT_BITS


@dataclass
class ODELikelihood:
    """log p(x) in nats per sample ``[N]`` (float64) = ``prior_logp`` + ``delta`` (the
    integral of the divergence), ``x_prior`` the state at the prior end, ``nfe`` the drift
    evaluations per sample."""

    logp: torch.Tensor
    prior_logp: torch.Tensor
    delta: torch.Tensor
    x_prior: torch.Tensor
    nfe: int


def gaussian_logp(x: torch.Tensor, var: float = 1.0) -> torch.Tensor:
    """log N(x; 0, var I) per sample ``[N]`` in float64."""
    flat = x.reshape(x.shape[0], -1).double()
    d = flat.shape[1]
    return -0.5 * (flat.pow(2).sum(1) / var + d * math.log(2.0 * math.pi * var))


def probes_like(x: torch.Tensor, k: int = 1, kind: str = "rademacher",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``k`` Hutchinson probes per sample, ``[k, *x.shape]`` in ``x``'s dtype and device: zero
    mean, identity covariance (Rademacher +-1, or standard Gaussian). Drawn on the CPU from
    ``generator``, so they do not depend on the device."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"the number of probes must be an integer >= 1, got {k!r}")
    if kind not in PROBES:
        raise ValueError(f"unknown probe kind {kind!r}; choose one of {', '.join(PROBES)}")
    shape = (k, *x.shape)
    if kind == "rademacher":
        v = torch.randint(0, 2, shape, generator=generator).to(x.dtype) * 2 - 1
    else:
        v = torch.randn(shape, generator=generator, dtype=x.dtype)
    return v.to(x.device)


def divergence(drift: Drift, y: torch.Tensor, s: float,
               noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(y, s) detached, div_y f per sample ``[N]`` float64).

    ``noise`` None: the exact trace (one backward pass per dimension). ``noise`` ``[K, *y.shape]``:
    Hutchinson's (1/K) sum_k v_k^T (df/dy) v_k (module docstring)."""
    n = y.shape[0]
    with torch.enable_grad():
        yg = y.detach().requires_grad_(True)
        f = drift(yg, s)
        if f.shape != y.shape:
            raise ValueError(f"the drift must return the state's shape {tuple(y.shape)}, got "
                             f"{tuple(f.shape)}")
        div = torch.zeros(n, dtype=torch.float64, device=y.device)
        if not f.requires_grad:          # a drift that does not depend on y
            return f.detach(), div
        if noise is None:
            flat = f.reshape(n, -1)
            d = flat.shape[1]
            for i in range(d):
                (g,) = torch.autograd.grad(flat[:, i].sum(), yg, retain_graph=i < d - 1,
                                           allow_unused=True)
                if g is not None:
                    div += g.reshape(n, -1)[:, i].double()
        else:
            if noise.shape[1:] != y.shape:
                raise ValueError(f"probes must have shape [K, {', '.join(map(str, y.shape))}], "
                                 f"got {tuple(noise.shape)}")
            k = noise.shape[0]
            for j in range(k):
                (g,) = torch.autograd.grad(f, yg, grad_outputs=noise[j], retain_graph=j < k - 1,
                                           allow_unused=True)
                if g is not None:
                    div += (g * noise[j]).reshape(n, -1).double().sum(1)
            div /= k
    return f.detach(), div


def ode_log_likelihood(drift: Drift, x: torch.Tensor, grid: torch.Tensor, prior_logp: PriorLogp,
                       noise: torch.Tensor | None = None,
                       progress: bool = False) -> ODELikelihood:
    """log p(x) ``[N]`` of the density the ODE dy/ds = ``drift`` carries from ``prior_logp`` at
    ``grid[-1]`` to ``grid[0]`` (the change of variables of the module docstring), by RK4 on
    the fixed ``grid`` (1-D, strictly monotone, >= 2 points). ``noise`` None: the exact trace;
    else the Hutchinson probes ``[K, *x.shape]`` (:func:`probes_like`), kept along the path."""
    grid = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
    if grid.ndim != 1 or grid.numel() < 2 or not torch.isfinite(grid).all():
        raise ValueError(f"the grid must be a finite 1-D tensor of >= 2 times, got shape "
                         f"{tuple(grid.shape)}")
    dif = grid[1:] - grid[:-1]
    if not ((dif > 0).all() or (dif < 0).all()):
        raise ValueError("the grid must be strictly monotone (from the data end to the prior end)")
    s_list = grid.tolist()
    y = x.detach()
    delta = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    pairs = list(zip(s_list[:-1], s_list[1:], strict=True))
    if progress:
        from tqdm.auto import tqdm

        pairs = tqdm(pairs, desc="ODE likelihood", unit="step", leave=False)
    for s, s_next in pairs:
        h = s_next - s
        k1, d1 = divergence(drift, y, s, noise)
        k2, d2 = divergence(drift, y + 0.5 * h * k1, s + 0.5 * h, noise)
        k3, d3 = divergence(drift, y + 0.5 * h * k2, s + 0.5 * h, noise)
        k4, d4 = divergence(drift, y + h * k3, s_next, noise)
        y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        delta = delta + (h / 6.0) * (d1 + 2.0 * d2 + 2.0 * d3 + d4)
    with torch.no_grad():
        prior = prior_logp(y).double().to(delta.device)
    return ODELikelihood(logp=prior + delta, prior_logp=prior, delta=delta, x_prior=y,
                         nfe=4 * len(s_list[:-1]))


# ---------------------------------------------------------------------------- the DDPM ODE
def _check_schedule(schedule: Schedule) -> None:
    if schedule.T < 2:
        raise ValueError(f"the probability-flow ODE needs T >= 2 noise levels, got T={schedule.T}")


def ddpm_drift(model: Model, schedule: Schedule, prediction: str = "eps",
               y: torch.Tensor | None = None, learn_sigma: bool = False) -> Drift:
    """dy/drho = sigma eps_hat(y / sqrt(1 + sigma^2), t(sigma)), rho = log sigma, of a DDPM
    network (module docstring); only the prediction half of a ``learn_sigma`` output is used
    (the ODE depends on the score alone). ``y`` are the class labels (None: unconditional)."""
    _check_schedule(schedule)
    labels = y

    def drift(state: torch.Tensor, rho: float) -> torch.Tensor:
        sched = schedule.to(state.device)
        sigma = math.exp(rho)
        t = float(index_of_sigma(sched, torch.tensor(sigma, dtype=torch.float64)))
        tt = torch.full((state.shape[0],), t, dtype=torch.float64, device=state.device)
        x_t = state / math.sqrt(1.0 + sigma * sigma)
        pred, _ = split_output(call_model(model, x_t, tt, labels, learn_sigma), learn_sigma)
        _, eps = to_x0_eps(sched, x_t, tt, pred, prediction)
        return sigma * eps

    return drift


def ddpm_grid(schedule: Schedule, steps: int) -> torch.Tensor:
    """``steps + 1`` times uniform in rho = log sigma from log sigma_0 to log sigma_{T-1}."""
    _check_schedule(schedule)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    s = schedule.sigmas
    return torch.linspace(math.log(float(s[0])), math.log(float(s[-1])), steps + 1,
                          dtype=torch.float64)


def ddpm_prior(schedule: Schedule) -> PriorLogp:
    """log N(y; 0, (1 + sigma_{T-1}^2) I): the VP prior N(0, I) of x_{T-1} in the VE view."""
    var = 1.0 + float(schedule.sigmas[-1]) ** 2
    return lambda state: gaussian_logp(state, var)


# ---------------------------------------------------------------------------- bits/dim
def dequantize(x0: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """x = x0 + (u - 1/2) / 127.5: uniform ``u`` in [0, 1) spread over pixel x0's bin."""
    return x0 + (u - 0.5) * BIN_WIDTH


def bits_from_logp(logp: torch.Tensor, dims: int) -> torch.Tensor:
    """bits/dim = -log p / (D ln 2) + log2(127.5) of dequantized data (module docstring)."""
    return -logp / (dims * math.log(2.0)) + DEQUANT_BITS


@dataclass
class ODEBitsPerDim:
    """The ODE bits/dim of a batch: ``total`` (mean), ``per_sample`` ``[N]``, the RK4
    ``steps``, ``nfe`` (drift evaluations per image, each one forward pass and, per probe
    or dimension, one backward pass), ``trace`` and ``probes`` (0 for the exact trace)."""

    total: float
    per_sample: torch.Tensor
    steps: int
    nfe: int
    trace: str
    probes: int


def ode_bits_per_dim(model: Model, schedule: Schedule, x0: torch.Tensor, steps: int = 32,
                     prediction: str = "eps", y: torch.Tensor | None = None,
                     learn_sigma: bool = False, trace: str = "hutchinson", probes: int = 1,
                     probe_kind: str = "rademacher", generator: torch.Generator | None = None,
                     batch_size: int | None = None, progress: bool = False) -> ODEBitsPerDim:
    """The probability-flow ODE bits/dim of 8-bit data ``x0`` (``[N, *]`` at the pixel values
    k / 127.5 - 1, as :func:`ddpmlab.likelihood.bits_per_dim` takes it): dequantized
    (:func:`dequantize`), integrated by RK4 in log sigma over ``steps`` steps, converted by
    :func:`bits_from_logp`. The dequantization noise and then the probes are drawn first for
    the whole batch from ``generator``, so the result does not depend on ``batch_size`` and
    the same generator seed gives the same draws for any ``steps``."""
    if trace not in TRACES:
        raise ValueError(f"unknown trace {trace!r}; choose one of {', '.join(TRACES)}")
    n = x0.shape[0]
    u = torch.rand(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    noise = probes_like(x0, probes, probe_kind, generator) if trace == "hutchinson" else None
    x = dequantize(x0, u)
    grid = ddpm_grid(schedule, steps)
    bs = n if batch_size is None else batch_size
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    logp = []
    for i in range(0, n, bs):
        drift = ddpm_drift(model, schedule, prediction, None if y is None else y[i:i + bs],
                           learn_sigma)
        r = ode_log_likelihood(drift, x[i:i + bs], grid, ddpm_prior(schedule),
                               None if noise is None else noise[:, i:i + bs], progress)
        logp.append(r.logp.cpu())
    bpd = bits_from_logp(torch.cat(logp), x0[0].numel())
    return ODEBitsPerDim(total=float(bpd.mean()), per_sample=bpd, steps=steps, nfe=4 * steps,
                         trace=trace, probes=probes if trace == "hutchinson" else 0)
