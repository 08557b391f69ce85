r"""Distillation of a trained model to few steps: progressive (Salimans & Ho 2022) and
consistency distillation (Song et al. 2023). The math and one training routine each; the run
layer (``ddpmlab distill``) loads the teacher, builds the student and keeps checkpoints.

**Models.** A teacher or a student is a :class:`Predictor`: a callable ``model(x_vp, index,
y=None)`` on a :class:`~ddpmlab.schedules.Schedule` and what it predicts (``eps`` / ``x0`` /
``v``). For a ``ddpm`` run it is the network and ``diffusion.prediction``; for ``edm`` / ``flow``
the objective's ``sampler_model`` (an x0 predictor on its noise-level grid) and ``"x0"``.

**Progressive distillation** (https://arxiv.org/abs/2202.00512, Algorithm 2). In VP notation
z_t = alpha_t x0 + sigma_t eps (alpha^2 = abar, sigma^2 = 1 - abar). A student with K steps walks
the indices of :func:`student_grid`; for its step t -> t'' the teacher takes two deterministic
DDIM steps t -> t' -> t'' (its own parametrization, converted to (x0_hat, eps_hat)), landing at
z_t''. The student's x0 target is the x~ for which ONE DDIM step t -> t'' lands there (eq. 8)::

    x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)

(t'' = -1 is x0 itself: alpha = 1, sigma = 0, x~ = z_t''.) The student predicts ``v`` or ``x0``
(never eps: x0 = (z - sigma eps) / alpha blows up as alpha -> 0, the paper's sec. 4), and its
loss is w(t) ||x0_hat - x~||^2 with the paper's "truncated SNR" weight max(SNR_t, 1)
(``truncated_snr``) or SNR_t + 1 (``snr_plus_one``: exactly the v-MSE). A stage starts the
student as a copy of the teacher's weights (the caller's :func:`copy.deepcopy`), runs Adam on
batches of data noised at random student steps, and the student of one halving is the teacher
of the next.

**Guidance** is distilled, not re-applied: the teacher is the classifier-free-guided model at
the run's weight w (:func:`guided`: pred_u + w (pred_c - pred_u), with the label of each training
image), the student is conditional (it sees the same label) and samples with guidance 1: one
network evaluation per step instead of two (Meng et al. 2023's one-stage variant, w fixed).

**Consistency distillation** (https://arxiv.org/abs/2303.01469, Algorithm 2): on the N-level
Karras grid s_0 < ... < s_{N-1} (:func:`ddpmlab.objectives.consistency.karras_levels`),
n uniform in [0, N - 2], x = x0 + s_{n+1} z; the teacher's one ODE step (:func:`teacher_ode_step`:
Heun, or DDIM = DPM-Solver++(1)) gives x^_n; the loss is the pseudo-Huber distance of the whole
sample between the student's f(x, s_{n+1}) and the EMA target network's f(x^_n, s_n); after the
Adam step the target moves by EMA (mu = 0.95 in the paper's CIFAR-10 runs). The teacher is seen
as a VE denoiser D(x0 + s eps, s) (:func:`ve_denoiser`); below its lowest level the score is held
at its value there (x - D(x, s) = (s / s_0)^2 (x - D(x, s_0)), Tweedie's -s^2 grad log p_s with
p_s -> p), so a ddpm teacher (s_0 = 0.01) serves a student whose boundary is at 0.002.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..broadcast import expand_like
from ..forward import alpha_bar_at
from ..objectives.consistency import consistency_fn, karras_levels, pseudo_huber
from ..parametrization import to_x0_eps
from ..reverse import call_model, split_output
from ..samplers import classifier_free_guidance
from ..samplers.spacing import timesteps
from ..schedules import Schedule, index_of_sigma
from .ema import ema_update

STUDENT_PREDICTIONS = ("v", "x0")
DISTILL_WEIGHTINGS = ("truncated_snr", "snr_plus_one")
ODE_SOLVERS = ("heun", "ddim")
DataFn = Callable[[torch.Generator, int], "tuple[torch.Tensor, torch.Tensor | None]"]
Index = int | float | torch.Tensor


@dataclass(frozen=True)
class Predictor:
    """A model ``(x_vp, index, y=None) -> prediction`` and what it predicts; ``learn_sigma``:
    it also returns its variance half (ignored here: only the prediction is distilled)."""

    model: Callable
    prediction: str = "eps"
    learn_sigma: bool = False

    def x0_eps(self, schedule: Schedule, z: torch.Tensor, t: torch.Tensor,
               y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) at index tensor ``t`` ``[N]``."""
        out = split_output(call_model(self.model, z, t, y, self.learn_sigma), self.learn_sigma)[0]
        return to_x0_eps(schedule, z, t, out, self.prediction)


def guided(model: Callable, w: float, null_class: int | None = None) -> Callable:
    """``model`` with classifier-free guidance at weight ``w`` towards the labels it is called
    with: ``(x, t, y) -> pred_u + w (pred_c - pred_u)`` (``y`` None: the model unguided)."""

    def teacher(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        if y is None:
            return model(x, t)
        return classifier_free_guidance(model, y, w, null_class)(x, t)

    return teacher


# --------------------------------------------------------------------------- progressive
def check_student_steps(K: int, T: int) -> int:
    """``K`` if it is a power of two with 2K <= T, else one line of ValueError."""
    if isinstance(K, bool) or not isinstance(K, int) or K < 1 or K & (K - 1):
        raise ValueError(f"progressive distillation halves the steps: K must be a power of two "
                         f"(1, 2, 4, 8, ...), got {K!r}")
    if 2 * K > T:
        raise ValueError(f"K={K} student steps need a teacher walking 2K={2 * K} of T={T} levels")
    return K


def student_grid(T: int, K: int) -> list[tuple[int, int, int]]:
    """The student's K steps as (t, t_mid, t_next) index triples, descending, the last ending at
    -1 (x0): the teacher's 2K ``trailing`` indices (starting at T - 1), the student taking every
    other one. The grids nest: K's indices are 2K's even ones."""
    check_student_steps(K, T)
    ts = [int(t) for t in timesteps(T, 2 * K, "trailing")] + [-1]
    return [(ts[2 * k], ts[2 * k + 1], ts[2 * k + 2]) for k in range(K)]


def halving_plan(start: int, to: int) -> list[int]:
    """The students' step counts from a first student of ``start`` steps down to ``to``:
    ``[start, start / 2, ..., to]`` (both powers of two)."""
    for K in (start, to):
        check_student_steps(K, 2 * K)
    if to > start:
        raise ValueError(f"--to {to} is more steps than the first student's {start}")
    return [start >> i for i in range(int(math.log2(start // to)) + 1)]


def _index(t: Index, z: torch.Tensor) -> torch.Tensor:
    """An int / float / tensor index as a tensor ``[N]`` (int64 or float64) on z's device."""
    if torch.is_tensor(t):
        return t.to(z.device).expand(z.shape[0]) if t.ndim == 0 else t.to(z.device)
    dtype = torch.long if isinstance(t, int) else torch.float64
    return torch.full((z.shape[0],), t, dtype=dtype, device=z.device)


def _alpha_sigma(schedule: Schedule, t: torch.Tensor, z: torch.Tensor):
    """(alpha_t, sigma_t) against z (t = -1: (1, 0)), in z's dtype."""
    abar = alpha_bar_at(schedule, t)
    return expand_like(abar.sqrt(), z), expand_like((1.0 - abar).clamp(min=0).sqrt(), z)


def ddim_move(schedule: Schedule, x0: torch.Tensor, eps: torch.Tensor,
              t_next: torch.Tensor) -> torch.Tensor:
    """The deterministic DDIM step's landing point alpha_next x0_hat + sigma_next eps_hat."""
    a, s = _alpha_sigma(schedule, t_next, x0)
    return a * x0 + s * eps


def progressive_target(teacher: Predictor, schedule: Schedule, z_t: torch.Tensor, t: Index,
                       t_mid: Index, t_next: Index,
                       y: torch.Tensor | None = None) -> torch.Tensor:
    """The student's x0 target x~ (module docstring, eq. 8) for its one step t -> t_next, from
    the teacher's two DDIM steps t -> t_mid -> t_next (ints, floats or ``[N]`` tensors)."""
    t, t_mid, t_next = (_index(i, z_t) for i in (t, t_mid, t_next))
    z_mid = ddim_move(schedule, *teacher.x0_eps(schedule, z_t, t, y), t_mid)
    z_next = ddim_move(schedule, *teacher.x0_eps(schedule, z_mid, t_mid, y), t_next)
    a, s = _alpha_sigma(schedule, t, z_t)
    a2, s2 = _alpha_sigma(schedule, t_next, z_t)
    ratio = s2 / s
    return (z_next - ratio * z_t) / (a2 - ratio * a)


def distill_weight(schedule: Schedule, t: torch.Tensor, weighting: str) -> torch.Tensor:
    """The per-sample weight of ||x0_hat - x~||^2: max(SNR, 1) or SNR + 1 (float64 ``[N]``)."""
    abar = alpha_bar_at(schedule, t)
    snr = abar / (1.0 - abar)
    if weighting == "truncated_snr":
        return snr.clamp(min=1.0)
    if weighting == "snr_plus_one":
        return snr + 1.0
    raise ValueError(f"unknown weighting {weighting!r}; choose one of "
                     f"{', '.join(DISTILL_WEIGHTINGS)}")


def progressive_losses(student: Predictor, teacher: Predictor, schedule: Schedule,
                       x0: torch.Tensor, eps: torch.Tensor, steps: torch.Tensor,
                       grid: list[tuple[int, int, int]], y: torch.Tensor | None = None,
                       weighting: str = "truncated_snr") -> torch.Tensor:
    """Each sample's loss ``[N]`` at its student step ``steps[i]`` (an index into ``grid``)."""
    if student.prediction not in STUDENT_PREDICTIONS:
        raise ValueError(f"the student must predict v or x0, not {student.prediction!r} (eps "
                         "cannot give x0 where alpha -> 0; Salimans & Ho 2022, sec. 4)")
    t, t_mid, t_next = torch.tensor(grid, dtype=torch.long, device=x0.device)[steps].unbind(1)
    a, s = _alpha_sigma(schedule, t, x0)
    z_t = a * x0 + s * eps
    with torch.no_grad():
        target = progressive_target(teacher, schedule, z_t, t, t_mid, t_next, y)
    x0_hat = student.x0_eps(schedule, z_t, t, y)[0]
    err = ((x0_hat - target) ** 2).reshape(x0.shape[0], -1).mean(1)
    return distill_weight(schedule, t, weighting).to(err.dtype) * err


def progressive_stage(student: Predictor, teacher: Predictor, schedule: Schedule, data: DataFn,
                      K: int, optimizer: torch.optim.Optimizer, iterations: int,
                      batch_size: int, generator: torch.Generator,
                      weighting: str = "truncated_snr",
                      callback: Callable[[int, float], bool | None] | None = None) -> list[float]:
    """One halving: ``iterations`` optimizer steps teaching the K-step ``student`` (whose
    parameters ``optimizer`` holds, started from the teacher's weights) the 2K-step
    ``teacher``. ``data(generator, n)`` gives (x0, y or None); each step draws the batch, the
    student steps (uniform over K) and the noise from ``generator``. ``callback(i, loss)``
    returning True stops early (a time budget). Returns the losses."""
    grid = student_grid(schedule.T, K)
    sched, out = None, []
    for i in range(iterations):
        x0, y = data(generator, batch_size)
        if sched is None:
            sched = schedule.to(x0.device)
        steps = torch.randint(0, K, (batch_size,), generator=generator,
                              device=generator.device).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=generator.device,
                          dtype=x0.dtype).to(x0.device)
        loss = progressive_losses(student, teacher, sched, x0, eps, steps, grid, y,
                                  weighting).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        out.append(loss.item())
        if callback is not None and callback(i, out[-1]):
            break
    return out


# --------------------------------------------------------------------------- consistency
def ve_denoiser(teacher: Predictor, schedule: Schedule) -> Callable:
    """The teacher as D(x_ve, s, y) -> x0_hat for x_ve = x0 + s eps, ``s`` ``[N]`` float64 in
    (0, sigma_{T-1}]; below sigma_0 the score is held (module docstring)."""
    s0, s_max = float(schedule.sigmas[0]), float(schedule.sigmas[-1])

    def D(x: torch.Tensor, s: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        s = s.to(device=x.device, dtype=torch.float64)
        if bool((s > s_max * (1 + 1e-9)).any()) or bool((s <= 0).any()):
            raise ValueError(f"the teacher's levels end at sigma {s_max:.4g}: a student level "
                             f"{float(s.max()):.4g} is above them (or a level is <= 0)")
        s_eval = s.clamp(min=s0, max=s_max)
        t = index_of_sigma(schedule, s_eval)
        x_vp = x / expand_like(torch.sqrt(1.0 + s_eval * s_eval), x)
        d0 = teacher.x0_eps(schedule, x_vp, t, y)[0]
        return x - expand_like((s / s_eval) ** 2, x) * (x - d0)

    return D


def teacher_ode_step(D: Callable, x: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor,
                     y: torch.Tensor | None = None, solver: str = "heun") -> torch.Tensor:
    """One step of the probability-flow ODE dx/ds = (x - D(x, s)) / s from s to s_next > 0
    (``[N]``, VE view): ``heun`` (EDM's, 2 evaluations) or ``ddim`` (DPM-Solver++(1):
    x_next = (s_next / s) x + (1 - s_next / s) D(x, s), exact for a constant D)."""
    h = expand_like(s_next - s, x)
    if solver == "ddim":
        r = expand_like(s_next / s, x)
        return r * x + (1.0 - r) * D(x, s, y)
    if solver != "heun":
        raise ValueError(f"unknown ODE solver {solver!r}; choose one of {', '.join(ODE_SOLVERS)}")
    d = (x - D(x, s, y)) / expand_like(s, x)
    x_euler = x + h * d
    d2 = (x_euler - D(x_euler, s_next, y)) / expand_like(s_next, x)
    return x + h * 0.5 * (d + d2)


@dataclass(frozen=True)
class ConsistencySetup:
    """What a consistency distillation fixes: the N student levels (increasing, float64; the
    first is the boundary sigma_min), sigma_data, the teacher's solver, the EMA rate of the
    target network and pseudo-Huber's c (None: 0.00054 sqrt(dim))."""

    levels: torch.Tensor
    sigma_data: float = 0.5
    solver: str = "heun"
    ema_decay: float = 0.95
    huber_c: float | None = None

    @classmethod
    def karras(cls, n: int = 18, **kw) -> ConsistencySetup:
        return cls(karras_levels(n), **kw)


def consistency_distill_losses(student: nn.Module, target_ema: nn.Module, teacher: Callable,
                               x0: torch.Tensor, n: torch.Tensor, z: torch.Tensor,
                               setup: ConsistencySetup,
                               y: torch.Tensor | None = None) -> torch.Tensor:
    """Each sample's loss ``[N]``: d(f_student(x0 + s_{n+1} z, s_{n+1}), f_target(x^_n, s_n))
    with x^_n the teacher's ODE step (``teacher``: a :func:`ve_denoiser`)."""
    lv = setup.levels.to(x0.device)
    lo, hi, s_min = lv[n], lv[n + 1], float(lv[0])
    x_hi = x0 + expand_like(hi, x0) * z
    with torch.no_grad():
        x_lo = teacher_ode_step(teacher, x_hi, hi, lo, y, setup.solver)
        target = consistency_fn(target_ema, x_lo, lo, y, setup.sigma_data, s_min)
    online = consistency_fn(student, x_hi, hi, y, setup.sigma_data, s_min)
    return pseudo_huber(online, target, setup.huber_c)


def consistency_distill_step(student: nn.Module, target_ema: nn.Module, teacher: Callable,
                             x0: torch.Tensor, optimizer: torch.optim.Optimizer,
                             setup: ConsistencySetup, generator: torch.Generator,
                             y: torch.Tensor | None = None) -> float:
    """One step of Algorithm 2: draw n and z from ``generator``, the loss above, Adam on the
    ``student`` (the networks F of f = c_skip x + c_out F), then target <- EMA(student)."""
    N, g = setup.levels.numel(), generator
    n = torch.randint(0, N - 1, (x0.shape[0],), generator=g, device=g.device).to(x0.device)
    z = torch.randn(x0.shape, generator=g, device=g.device, dtype=x0.dtype).to(x0.device)
    loss = consistency_distill_losses(student, target_ema, teacher, x0, n, z, setup, y).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    ema_update(target_ema, student, setup.ema_decay)
    return loss.item()


def consistency_stage(student: nn.Module, target_ema: nn.Module, teacher: Callable,
                      data: DataFn, optimizer: torch.optim.Optimizer, setup: ConsistencySetup,
                      iterations: int, batch_size: int, generator: torch.Generator,
                      callback: Callable[[int, float], bool | None] | None = None) -> list[float]:
    """``iterations`` of :func:`consistency_distill_step` on batches of ``data``."""
    out: list[float] = []
    for i in range(iterations):
        x0, y = data(generator, batch_size)
        out.append(consistency_distill_step(student, target_ema, teacher, x0, optimizer, setup,
                                            generator, y))
        if callback is not None and callback(i, out[-1]):
            break
    return out

