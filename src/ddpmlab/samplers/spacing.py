"""Timestep spacing: the explicit (t, t_prev) pairs a sampler walks.

A sampler with ``steps`` steps visits ``steps`` original indices ``t`` in ``[0, T)``, descending,
and pairs each with the next one; the last pair ends at ``-1`` (x0). The model always receives
the original index: nothing is remapped or rescaled.

* ``"uniform"``: ``round(linspace(T - 1, 0, steps))``: the first step is at T-1 and the last at 0
  (improved-diffusion's "uniform" respacing). ``steps=1`` gives ``[T - 1]``.
* ``"trailing"``: ``round(T - k T / steps) - 1`` for k = 0..steps-1: starts at T-1 and leaves the
  last jump from ``T / steps - 1`` straight to x0 (Lin et al. 2023, "Common diffusion noise
  schedules and sample steps are flawed", table 2).
"""

from __future__ import annotations

import numpy as np

SPACINGS = ("uniform", "trailing")


def timesteps(T: int, steps: int | None = None, spacing: str = "uniform") -> list[int]:
    """The descending original indices visited by a ``steps``-step sampler (``None`` = all T)."""
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T!r}")
    if steps is None:
        steps = T
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise ValueError(f"steps must be an integer, got {steps!r}")
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and T={T}, got {steps}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if steps == T:
        return list(range(T - 1, -1, -1))
    if spacing == "uniform":
        if steps == 1:
            return [T - 1]
        ts = np.round(np.linspace(T - 1, 0, steps)).astype(np.int64)
    else:
        ts = np.round(T - np.arange(steps) * (T / steps)).astype(np.int64) - 1
    out = [int(t) for t in ts]
    assert len(set(out)) == len(out) and out == sorted(out, reverse=True), out
    return out


def timestep_pairs(T: int, steps: int | None = None,
                   spacing: str = "uniform") -> list[tuple[int, int]]:
    """``[(t_0, t_1), (t_1, t_2), ..., (t_last, -1)]`` with t descending; -1 means x0."""
    ts = timesteps(T, steps, spacing)
    return list(zip(ts, ts[1:] + [-1], strict=True))
