r"""Class translation by dual diffusion implicit bridges (DDIB, Su et al. 2023,
https://arxiv.org/abs/2203.08382).

Invert the image with the **source** class's ODE to its latent x_T (:func:`.inversion.invert` with
``y = y_source``), then regenerate from that latent with the **target** class's ODE
(:func:`.inversion.regenerate` with ``y = y_target``). Both maps are deterministic and the
composition is a transport map from the source class's distribution to the target's (through
the shared Gaussian latent). For two Gaussians N(mu_a, sd_a^2) -> N(mu_b, sd_b^2) (per
coordinate) the probability-flow ODE keeps the standardised coordinate, so the composition is
the affine optimal-transport map mu_b + sd_b / sd_a (x - mu_a), up to the solver's
discretization and a term of order sqrt(abar_{T-1}) (x_T is not exactly pure noise);
``tests/test_edit.py`` checks it. Guidance (``guidance`` != 1) is allowed and is applied in both
directions; it makes the inversion inexact (:mod:`.inversion`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..reverse import Model
from ..schedules import Schedule
from .inversion import invert, regenerate


def translate(model: Model, schedule: Schedule, x0: torch.Tensor,
              y_source: torch.Tensor | int, y_target: torch.Tensor | int, *,
              sampler: str = "ddim", steps: int | None = None, spacing: str | None = None,
              **sampling: Any) -> torch.Tensor:
    """``x0`` ``[N, *]`` of class ``y_source`` carried to class ``y_target`` (one label or N
    labels each). ``sampler`` in :data:`.inversion.INVERTERS`; ``sampling``: prediction,
    guidance (and guide, guide_weight, guidance_interval), null_class, options, learn_sigma."""
    x_T = invert(model, schedule, x0, sampler=sampler, steps=steps, spacing=spacing, y=y_source,
                 **sampling)
    return regenerate(model, schedule, x_T, sampler=sampler, steps=steps, spacing=spacing,
                      y=y_target, **sampling)
