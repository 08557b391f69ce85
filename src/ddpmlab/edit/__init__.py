"""Editing with a trained model: inpainting, img2img, inversion, interpolation, translation.

Math layer: every operation is a function of a model callable ``model(x_t, t[, y])`` and a
:class:`~ddpmlab.schedules.Schedule`, on tensors ``[N, *]``, and drives the samplers' own step
functions (:mod:`.driver`), so any sampler of :data:`ddpmlab.samplers.SAMPLERS` works inside
(inversion: the deterministic ones of :data:`.inversion.INVERTERS`). One file per operation:

* :func:`inpaint` (RePaint; :func:`inpaint_nfe` its cost), :mod:`.inpainting`;
* :func:`img2img` (SDEdit) and :func:`denoise_from` (sample p(x0 | x_t)), :mod:`.sdedit`;
* :func:`invert` and :func:`regenerate` (DDIM / DPM-Solver++ on the ODE), :mod:`.inversion`;
* :func:`slerp`, :func:`interpolate_latent` and :func:`interpolate_xt`, :mod:`.interpolation`;
* :func:`translate` (DDIB), :mod:`.ddib`;
* :func:`decided_when` (the DDPM paper's Fig. 7), :mod:`.decided`;
* :func:`infer_class` and :func:`class_scores` (the class of the kept pixels by the model's own
  ELBO, what inpainting without a given class conditions on), :mod:`.classify`.

Each is proven on data with an exact score in ``tests/test_edit.py``, with a broken twin.
Adding an operation is one file and one line in :data:`EDITS`.
"""

from __future__ import annotations

from .classify import class_scores, infer_class, lambda_weights
from .ddib import inversion_settings, translate
from .decided import decided_when
from .inpainting import inpaint, inpaint_nfe, jump_schedule
from .interpolation import interpolate_latent, interpolate_xt, slerp
from .inversion import INVERTERS, invert, regenerate
from .sdedit import denoise_from, img2img, start_position

# The owner of the editing operations: name -> function (the CLI and docs read it).
EDITS = {
    "inpaint": inpaint,
    "img2img": img2img,
    "invert": invert,
    "regenerate": regenerate,
    "interpolate": interpolate_latent,
    "interpolate_xt": interpolate_xt,
    "translate": translate,
    "decided_when": decided_when,
}

__all__ = [
    "EDITS", "INVERTERS", "class_scores", "decided_when", "denoise_from", "img2img",
    "infer_class", "inpaint", "inpaint_nfe", "lambda_weights",
    "interpolate_latent", "interpolate_xt", "inversion_settings", "invert", "jump_schedule",
    "regenerate", "slerp", "start_position", "translate",
]
