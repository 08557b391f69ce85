r"""What is decided when (Ho et al. 2020, sec. 4.3, Fig. 7).

One image x0 is noised to several indices t, each **once** (one x_t per t; by default all with
the same noise eps, so that rows differ only in the level), and from each x_t several samples
x0 ~ p(x0 | x_t) are drawn with the reverse process (:func:`.sdedit.denoise_from`). Samples
from a small t share almost everything with x0; from a large t only the coarse layout, and near
T nothing: the spread of a row shows what the reverse process still had to decide at that t.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..reverse import Model
from ..samplers.noise import Generators, randn
from ..schedules import Schedule
from .driver import noised
from .sdedit import denoise_from


def decided_when(model: Model, schedule: Schedule, x0: torch.Tensor, ts: Sequence[int],
                 n_per: int, generator: Generators = None, *, noise: torch.Tensor | None = None,
                 sampler: str = "ddpm", steps: int | None = None, **sampling: Any) -> torch.Tensor:
    """``[len(ts), n_per, *dims]``: for each index t in ``ts``, ``n_per`` samples drawn from the
    one x_t = q(x_t | x0, noise) shared by the row. ``x0`` is one image ``[1, *dims]``;
    ``noise`` (``x0``'s shape) defaults to one draw from ``generator`` (one torch.Generator),
    used for every t. ``sampler``, ``steps`` and ``sampling`` as in ``sample()``."""
    if x0.ndim < 2 or x0.shape[0] != 1:
        raise ValueError(f"decided_when takes one image [1, *dims], got shape {tuple(x0.shape)}")
    if isinstance(n_per, bool) or not isinstance(n_per, int) or n_per < 1:
        raise ValueError(f"n_per must be an integer >= 1, got {n_per!r}")
    if noise is None:
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
    rows = []
    for t in ts:
        x_t = noised(schedule, x0, int(t), noise).expand(n_per, *x0.shape[1:]).clone()
        rows.append(denoise_from(model, schedule, x_t, int(t), sampler=sampler, steps=steps,
                                 generator=generator, **sampling))
    return torch.stack(rows)
