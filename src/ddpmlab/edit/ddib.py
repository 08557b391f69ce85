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
``tests/test_edit.py`` checks it.

**Guidance.** The inversion runs the source class's own ODE (``invert_guidance`` = 1: no
guidance, the exact inverse, :mod:`.inversion`); ``guidance`` (and autoguidance, a guidance
interval) acts on the regeneration only, where it pulls the result toward the target class the
way guided sampling does. Inverting with guidance too (``invert_guidance`` = w) is allowed; it
makes the inversion inexact and, measured on the main job's model (BENCHMARKS.md §10), does not
follow the target class better.
"""

from __future__ import annotations

from typing import Any

import torch

from ..reverse import Model
from ..schedules import Schedule
from .inversion import invert, regenerate


def inversion_settings(sampling: dict[str, Any], guidance: float = 1.0) -> dict[str, Any]:
    """The sampling settings of DDIB's inversion: the regeneration's, with classifier-free
    weight ``guidance`` and without autoguidance or a guidance interval (module doc)."""
    out = {k: v for k, v in sampling.items()
           if k not in ("guide", "guide_weight", "guidance_interval")}
    return {**out, "guidance": guidance}


def translate(model: Model, schedule: Schedule, x0: torch.Tensor,
              y_source: torch.Tensor | int, y_target: torch.Tensor | int, *,
              sampler: str = "ddim", steps: int | None = None, spacing: str | None = None,
              invert_guidance: float = 1.0, **sampling: Any) -> torch.Tensor:
    """``x0`` ``[N, *]`` of class ``y_source`` carried to class ``y_target`` (one label or N
    labels each). ``sampler`` in :data:`.inversion.INVERTERS`; ``sampling``: prediction,
    guidance (and guide, guide_weight, guidance_interval: the regeneration's), null_class,
    options, learn_sigma; ``invert_guidance`` the inversion's classifier-free weight."""
    x_T = invert(model, schedule, x0, sampler=sampler, steps=steps, spacing=spacing, y=y_source,
                 **inversion_settings(sampling, invert_guidance))
    return regenerate(model, schedule, x_T, sampler=sampler, steps=steps, spacing=spacing,
                      y=y_target, **sampling)
