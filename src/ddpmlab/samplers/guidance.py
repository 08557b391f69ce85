r"""Classifier-free guidance (Ho & Salimans 2022) as a model wrapper.

Convention: ``pred = pred_u + w (pred_c - pred_u)``, where ``pred_c = model(x, t, y)`` and
``pred_u`` is the prediction for the null class. ``w = 1`` is purely conditional (one network
call), ``w = 0`` purely unconditional, ``w > 1`` sharpens the class. Because x0 and v are affine
in eps for a fixed x_t, guiding any of eps, x0 or v predictions is the same operation.

The null class is ``null_class`` (an integer label, the UNet's ``num_classes``) when given: both
halves then run as one batch of 2N. Without it, the unconditional half is ``model(x, t)``.

A learn_sigma model (``learn_sigma=True``: outputs ``[N, 2C, ...]``) is guided on its
prediction half only; the variance half is the conditional model's (GLIDE's practice), since
extrapolating a log-variance interpolation weight has no meaning.
"""

from __future__ import annotations

import torch

from ..reverse import Model, split_output


def classifier_free_guidance(model: Model, y: torch.Tensor, w: float,
                             null_class: int | None = None, learn_sigma: bool = False) -> Model:
    """An unconditional-signature model ``f(x, t)`` that guides ``model`` towards labels ``y``."""
    if not w >= 0:
        raise ValueError(f"guidance weight must be >= 0, got {w!r}")
    y = torch.as_tensor(y).long()

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        yy = y.to(x.device).expand(x.shape[0]) if y.ndim == 0 else y.to(x.device)
        if w == 1.0:
            return model(x, t, yy)
        if w == 0.0:
            return model(x, t) if null_class is None else model(x, t, torch.full_like(yy, null_class))
        if null_class is not None:
            null = torch.full_like(yy, null_class)
            both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([yy, null]))
            cond, uncond = both.chunk(2)
        else:
            cond, uncond = model(x, t, yy), model(x, t)
        if learn_sigma:
            (cond, var_values), (uncond, _) = split_output(cond, True), split_output(uncond, True)
            return torch.cat([uncond + w * (cond - uncond), var_values], dim=1)
        return uncond + w * (cond - uncond)

    return guided
