r"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", sec. 3 and appendix C): track power-function averages of the weights during
training, keep snapshots of them, and after training reconstruct the average of any length.

**Power-function EMA.** With the parameters theta(s) after optimizer update s = 1, 2, ...
(``t`` below is the number of updates applied, the trainer's step after the update), the tracked
average is ``ema(t) = beta(t) ema(t - 1) + (1 - beta(t)) theta(t)`` with
``beta(t) = (1 - 1/t)^(gamma + 1)``, so ``beta(1) = 0`` (the first average is theta(1); the
starting value never matters). Unrolled, theta(s) has the weight
``(s^(gamma+1) - (s-1)^(gamma+1)) / t^(gamma+1)``, exactly the integral over ``(s - 1, s]`` of the
continuous **profile** ``p_{t,gamma}(tau) = (gamma + 1) tau^gamma / t^(gamma+1)`` on ``[0, t]``:
the discrete average is the continuous one of the piecewise-constant theta(tau) = theta(s),
tau in (s - 1, s]. The weights sum to 1, so an average of a constant stays that constant.

**Length.** sigma_rel is the profile's standard deviation relative to its end t:
``sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3))`` (paper eq. 3), i.e. gamma is the
largest real root of ``gamma^3 + 7 gamma^2 + (16 - k) gamma + (12 - k) = 0`` with
k = sigma_rel^-2 (:func:`sigma_rel_to_gamma`). It is decreasing in gamma for
gamma > (sqrt 5 - 3) / 2, where sigma_rel reaches its largest value ~0.3003 (:data:`MAX_SIGMA_REL`).
Defaults: 0.05 and 0.10 (EDM2).

**Reconstruction.** The inner product of two profiles is, with m = min(t_a, t_b),
``<p_a, p_b> = (g_a + 1)(g_b + 1) m^(g_a + g_b + 1) / ((g_a + g_b + 1) t_a^(g_a+1) t_b^(g_b+1))``
(:func:`profile_dot`). The profile of the target (step, gamma) is approximated in L2 by the
snapshots' profiles: ``A x = b`` with ``A_ij = <p_i, p_j>``, ``b_i = <p_i, p_target>``; the
weights are then **normalized**, ``x / sum(x)``, as in EDM2's ``solve_posthoc_coefficients``
(every profile integrates to 1, so the reconstruction's profile integrates to sum(x): without the
division a constant parameter c would come back as c sum(x), not c). The reconstructed tensors
are ``sum_i x_i snapshot_i``, accumulated in float64 (:func:`reconstruct`).

**In a run** (``train.phema``): :class:`PhemaListener` is one more listener of the Trainer. It
updates its :class:`PowerEMA` at every ``step`` event (the model's parameters after the update),
writes a snapshot every ``every`` steps and at every checkpoint, to
``RUN/phema/step_XXXXXXXX.safetensors`` (:meth:`ddpmlab.layout.RunDir.phema_snapshot`; atomic).
A snapshot holds ``phema.sigma_rels`` (float64 [K]), ``phema.step`` (int64) and, for averages
k = 0..K-1, ``ema{k}.{parameter name}``. On resume it reloads its averages from the snapshot at the
resumed step and deletes snapshots of later steps (a killed run's future, replayed now).
:func:`reconstruct_run` reads a run's snapshots one at a time and returns the parameters of the
average for any sigma_rel (buffers are not averaged: take them from the checkpoint's EMA).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import (
    MAX_SIGMA_REL,  # the largest sigma_rel of a profile (the config checks it)
    TrainConfig,
)
from ..errors import CheckpointError
from ..io import load_tensors, save_tensors
from ..layout import RunDir, remove_tree
from .events import Listener

DEFAULT_SIGMA_RELS = TrainConfig.phema_sigma_rels   # (0.05, 0.10): EDM2's
_META_SIGMAS, _META_STEP = "phema.sigma_rels", "phema.step"


# ----------------------------------------------------------------------------- formulas
def gamma_to_sigma_rel(gamma: float) -> float:
    """sigma_rel of the power-function profile of exponent ``gamma`` (paper eq. 3)."""
    g = float(gamma)
    return math.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma whose profile has relative standard deviation ``sigma_rel``
    (0 < sigma_rel < :data:`MAX_SIGMA_REL`): the largest real root of
    ``g^3 + 7 g^2 + (16 - k) g + (12 - k)``, k = sigma_rel^-2, by Newton's method from above
    (the cubic is convex and increasing right of its largest root, so the iterates decrease
    monotonically onto it)."""
    s = float(sigma_rel)
    if not 0.0 < s < MAX_SIGMA_REL:
        raise ValueError(f"sigma_rel must lie in (0, {MAX_SIGMA_REL:.4f}), got {sigma_rel!r}")
    k = s ** -2
    c = (7.0, 16.0 - k, 12.0 - k)
    g = 1.0 + max(abs(v) for v in c)              # Cauchy's bound: above every real root
    for _ in range(200):
        p = ((g + c[0]) * g + c[1]) * g + c[2]
        dp = (3.0 * g + 2.0 * c[0]) * g + c[1]
        step = p / dp
        if not step > 0.0:                        # at the root (to rounding): done
            break
        g -= step
    return g


def power_beta(step: int, gamma: float) -> float:
    """beta(t) = (1 - 1/t)^(gamma + 1) for update number ``step`` = t >= 1 (beta(1) = 0)."""
    if isinstance(step, bool) or int(step) != step or step < 1:
        raise ValueError(f"the power-function EMA counts updates from 1, got step={step!r}")
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


def profile_dot(t_a: Any, gamma_a: Any, t_b: Any, gamma_b: Any) -> np.ndarray:
    """``<p_{t_a,gamma_a}, p_{t_b,gamma_b}>`` = int_0^inf p_a p_b in closed form (float64,
    numpy broadcasting): ``(g_a + 1)(g_b + 1) / (g_a + g_b + 1) * m^(g_a+g_b+1) /
    (t_a^(g_a+1) t_b^(g_b+1))``, m = min(t_a, t_b), written as ratios <= 1 (no overflow)."""
    ta, ga, tb, gb = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    t_max = np.maximum(ta, tb)
    ratio = np.minimum(ta, tb) / t_max
    exponent = np.where(ta <= tb, gb, ga)         # the later profile's exponent
    return (ga + 1) * (gb + 1) / (ga + gb + 1) * ratio ** exponent / t_max


def solve_weights(steps: Sequence[float], gammas: Sequence[float], target_step: float,
                  target_gamma: float, normalize: bool = True) -> np.ndarray:
    """Weights x (float64 [n]) with ``sum_i x_i p_{steps_i, gammas_i}`` closest in L2 to
    ``p_{target_step, target_gamma}``; ``normalize`` divides by their sum (see the module
    docstring; ``False`` only to show what goes wrong without it)."""
    t = np.asarray(steps, dtype=np.float64)
    g = np.asarray(gammas, dtype=np.float64)
    if t.ndim != 1 or t.shape != g.shape or len(t) == 0:
        raise ValueError("give one gamma per snapshot step, and at least one snapshot")
    if (t <= 0).any() or not target_step > 0:
        raise ValueError("snapshot and target steps must be > 0")
    A = profile_dot(t[:, None], g[:, None], t[None, :], g[None, :])
    b = profile_dot(t, g, target_step, target_gamma)
    try:
        x = np.linalg.solve(A, b)
    except np.linalg.LinAlgError:
        raise ValueError("the snapshots' profiles are linearly dependent (the same step and "
                         "sigma_rel twice?)") from None
    return x / x.sum() if normalize else x


def reconstruct(snapshots: Sequence[tuple[int, float, dict[str, torch.Tensor]]],
                sigma_rel: float, step: int | None = None,
                normalize: bool = True) -> dict[str, torch.Tensor]:
    """The average of length ``sigma_rel`` at ``step`` (default: the last snapshot's) from
    ``snapshots`` = [(step, gamma, tensors)], every ``tensors`` with the same names: the
    least-squares weights of :func:`solve_weights` applied in float64, cast back to each
    tensor's dtype."""
    if not snapshots:
        raise ValueError("no snapshots to reconstruct from")
    target = max(s for s, _, _ in snapshots) if step is None else step
    x = solve_weights([s for s, _, _ in snapshots], [g for _, g, _ in snapshots], target,
                      sigma_rel_to_gamma(sigma_rel), normalize)
    acc: dict[str, torch.Tensor] = {}
    for w, (_, _, tensors) in zip(x.tolist(), snapshots, strict=True):
        _accumulate(acc, tensors, w)
    return {k: v.to(snapshots[0][2][k].dtype) for k, v in acc.items()}


def _accumulate(acc: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
                w: float) -> None:
    if acc and acc.keys() != tensors.keys():
        raise ValueError("snapshots hold different tensors")
    for k, v in tensors.items():
        term = v.detach().to(torch.float64) * w
        acc[k] = term if k not in acc else acc[k].add_(term)


# ----------------------------------------------------------------------------- tracking
class PowerEMA:
    """Power-function averages of ``module``'s parameters, one per sigma_rel (stored in each
    parameter's dtype, on its device). :meth:`update` after every optimizer update, with the
    number of updates so far (1, 2, ...)."""

    def __init__(self, module: nn.Module, sigma_rels: Sequence[float] = DEFAULT_SIGMA_RELS):
        sigma_rels = tuple(float(s) for s in sigma_rels)
        if not sigma_rels or len(set(sigma_rels)) != len(sigma_rels):
            raise ValueError(f"give one or more distinct sigma_rel values, got {sigma_rels}")
        self.sigma_rels = sigma_rels
        self.gammas = tuple(sigma_rel_to_gamma(s) for s in sigma_rels)
        self.names = [n for n, _ in module.named_parameters()]
        self.params = [p for _, p in module.named_parameters()]
        self.averages = [[p.detach().clone() for p in self.params] for _ in sigma_rels]
        self.step = 0

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the current parameters as update number ``step``."""
        live = [p.detach() for p in self.params]
        for avg, gamma in zip(self.averages, self.gammas, strict=True):
            torch._foreach_lerp_(avg, live, 1.0 - power_beta(step, gamma))
        self.step = step

    def average(self, k: int) -> dict[str, torch.Tensor]:
        """Average number ``k`` (of ``sigma_rels[k]``) by parameter name."""
        return dict(zip(self.names, self.averages[k], strict=True))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The snapshot's tensors (see the module docstring)."""
        out = {_META_SIGMAS: torch.tensor(self.sigma_rels, dtype=torch.float64),
               _META_STEP: torch.tensor(self.step, dtype=torch.int64)}
        for k in range(len(self.sigma_rels)):
            out.update({f"ema{k}.{n}": v for n, v in self.average(k).items()})
        return out

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        sigmas, step = read_meta(state)
        if sigmas != self.sigma_rels:
            raise ValueError(f"the snapshot tracks sigma_rel {sigmas}, this run {self.sigma_rels}")
        want = {f"ema{k}.{n}" for k in range(len(sigmas)) for n in self.names}
        if want != set(state) - {_META_SIGMAS, _META_STEP}:
            raise ValueError("the snapshot's parameters do not match the model")
        for k, avg in enumerate(self.averages):
            for n, a in zip(self.names, avg, strict=True):
                a.copy_(state[f"ema{k}.{n}"])
        self.step = step


def read_meta(state: dict[str, torch.Tensor]) -> tuple[tuple[float, ...], int]:
    """(sigma_rels, step) of a snapshot's tensors."""
    if _META_SIGMAS not in state or _META_STEP not in state:
        raise ValueError(f"not a post-hoc EMA snapshot (no {_META_SIGMAS} / {_META_STEP})")
    return tuple(state[_META_SIGMAS].tolist()), int(state[_META_STEP])


def snapshot_bytes(module: nn.Module, n_sigma_rels: int = len(DEFAULT_SIGMA_RELS)) -> int:
    """The size of one snapshot of ``module`` on disk (tensor data; the header aside)."""
    return n_sigma_rels * sum(p.numel() * p.element_size() for p in module.parameters())


# ----------------------------------------------------------------------------- in a run
class PhemaListener(Listener):
    """The Trainer's post-hoc EMA (``train.phema``): see the module docstring. ``model`` is the
    bare module whose parameters the optimizer updates (not a DDP or compiled wrapper; only the
    main process listens, and DDP keeps every rank's parameters equal)."""

    def __init__(self, model: nn.Module, run: RunDir | str | os.PathLike,
                 sigma_rels: Sequence[float] = DEFAULT_SIGMA_RELS, every: int = 100) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"the post-hoc EMA snapshot interval must be an integer >= 1, "
                             f"got {every!r}")
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        self.ema = PowerEMA(model, sigma_rels)
        self.every = every
        self.written: int | None = None

    def start(self, step, max_steps, precision):
        if step > 0:
            path = self.run.phema_snapshot(step)
            if not path.is_file():
                raise CheckpointError(
                    f"{path}: missing, so the post-hoc EMA cannot resume at step {step} (its "
                    "checkpoint was written, its snapshot not); resume from an earlier "
                    f"checkpoint, or move {self.run.phema} away to start the averages afresh")
            try:
                self.ema.load_state_dict(load_tensors(path))
            except ValueError as e:
                raise CheckpointError(f"{path}: {e}") from None
        for s, stale in self.run.phema_snapshots():
            if s > step and (err := remove_tree(stale)):   # a killed run's future
                raise CheckpointError(f"{stale}: cannot delete a stale snapshot ({err})")
        self.ema.step = step

    def step(self, step):
        self.ema.update(step)
        if step % self.every == 0:
            self._write(step)

    def checkpoint(self, step, path):
        if self.written != step:
            self._write(step)

    def _write(self, step: int) -> None:
        self.run.phema.mkdir(parents=True, exist_ok=True)
        save_tensors(self.run.phema_snapshot(step), self.ema.state_dict())
        self.written = step


def run_snapshots(run: RunDir | str | os.PathLike) -> list[tuple[int, tuple[float, ...], Path]]:
    """(step, sigma_rels, path) of a run's snapshots, oldest first (each file read once)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    out = []
    for step, path in run.phema_snapshots():
        try:
            sigmas, stored = read_meta(load_tensors(path))
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
        if stored != step:
            raise CheckpointError(f"{path}: holds step {stored}, its name says {step}")
        out.append((step, sigmas, path))
    return out


def reconstruct_run(run: RunDir | str | os.PathLike, sigma_rel: float,
                    step: int | None = None) -> dict[str, torch.Tensor]:
    """The parameters (by name) of the post-hoc average of length ``sigma_rel`` at ``step``
    (default: the newest snapshot's) from every snapshot of ``run`` up to ``step``; the files
    are read one at a time (memory: two copies of the model in float64)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    snaps = [s for s in run_snapshots(run) if step is None or s[0] <= step]
    if not snaps:
        raise CheckpointError(f"{run.phema}: no post-hoc EMA snapshots"
                              f"{'' if step is None else f' up to step {step}'} (train with "
                              "train.phema: true)")
    basis = [(s, k, sigma_rel_to_gamma(sig)) for s, sigmas, _ in snaps
             for k, sig in enumerate(sigmas)]
    x = solve_weights([b[0] for b in basis], [b[2] for b in basis],
                      snaps[-1][0] if step is None else step, sigma_rel_to_gamma(sigma_rel))
    acc: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    i = 0
    for _, sigmas, path in snaps:
        state = load_tensors(path)
        for k in range(len(sigmas)):
            prefix = f"ema{k}."
            tensors = {n[len(prefix):]: v for n, v in state.items() if n.startswith(prefix)}
            dtypes = dtypes or {n: v.dtype for n, v in tensors.items()}
            _accumulate(acc, tensors, float(x[i]))
            i += 1
    return {n: v.to(dtypes[n]) for n, v in acc.items()}
